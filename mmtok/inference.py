"""Using a trained run: load it, embed token samples, impute a stream.

    model = load_run("runs/clinic/model")                                         # eval mode
    ids, features = embed_tokens("runs/clinic/model", "runs/clinic/tokens")       # (n, d)
    ids, tokens = impute_tokens("runs/clinic/model", "runs/clinic/tokens", "tok_vitals")
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmtok.errors import MmtokError, warn
from mmtok.io import DamagedFileError, atomic_write, checkpoint_folders, load_weights_into, read_json, read_safetensors
from mmtok.model import ModelConfig, MultimodalMaskedTransformer, StreamSpec
from mmtok.shards import TokenShards
from mmtok.tokens import TokenBatch

__all__ = ["embed_tokens", "impute_tokens", "load_run", "save_tensors"]


def load_run(run: str | Path, checkpoint: str | None = None,
             map_location: str | torch.device = "cpu") -> MultimodalMaskedTransformer:
    """The trained transformer of an ``mmtok train`` run folder (latest checkpoint unless
    ``checkpoint`` names one), in eval mode."""
    run = Path(run)
    meta_path = run / "model.json"
    if not meta_path.is_file():
        raise MmtokError(f"{run}: no model.json; not an `mmtok train` run folder")
    meta = read_json(meta_path)
    streams = {k: StreamSpec.model_validate(v) for k, v in meta["streams"].items()}
    model = MultimodalMaskedTransformer(streams, ModelConfig.model_validate(meta["model"]))
    ckdir = run / "checkpoints"
    folders = [ckdir / checkpoint] if checkpoint else checkpoint_folders(ckdir)
    if not folders:
        raise MmtokError(f"{run}: no checkpoint yet")
    damaged = []
    for folder in folders:  # the newest intact one
        path = folder / "model.safetensors"
        try:
            weights = read_safetensors(path, f"checkpoint {folder.name} weights", device=map_location)
            own = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
            load_weights_into(model, own, path, f"checkpoint {folder.name} weights")
        except DamagedFileError as err:
            damaged.append(str(err))
            continue
        if damaged:
            warn(f"{'; '.join(damaged)}; using the newest intact checkpoint, {folder.name}")
        return model.eval()
    raise DamagedFileError(f"{run}: no usable checkpoint ({'; '.join(damaged)})")


def _open_tokens(model: MultimodalMaskedTransformer, tokens: str | Path) -> TokenShards:
    """The token folder's streams the run knows; a run stream the folder lacks is absent for every
    sample (as a modality missing from a sample is), not an error. A folder with none is."""
    index = TokenShards(tokens)
    keys = [k for k in model.streams if k in index.streams]
    if not keys:
        raise MmtokError(f"{tokens}: has none of the streams the run was trained on ({list(model.streams)}; "
                         f"it has {sorted(index.streams)})")
    data = TokenShards(tokens, keys)
    data.verify()
    return data


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) < 2, leave=False)


def embed_tokens(run: str | Path, tokens: str | Path, batch_size: int = 256, samples: list[str] | None = None,
                 exclude: list[str] | None = None, progress: bool = False) -> tuple[list[str], torch.Tensor]:
    """(sample ids, (n, d) pooled encoder features) over every present token of each sample,
    leaving out the streams in ``exclude`` (e.g. the label a linear probe will predict)."""
    model = load_run(run)
    data = _open_tokens(model, tokens)
    unknown = sorted(set(exclude or ()) - set(model.streams))  # checked before any batch is read
    if unknown:
        raise MmtokError(f"cannot exclude {unknown}: the run was trained on {list(model.streams)}")
    idx = _select(data, samples)
    skip = set(exclude or ())
    pooled = []
    for i in _batches(len(idx), batch_size, progress, "embed"):
        batch = data.batch(idx[i:i + batch_size])
        pooled.append(model.embed(TokenBatch({k: v for k, v in batch.items() if k not in skip})).pooled)
    return [data.sample_ids[i] for i in idx], torch.cat(pooled) if pooled else torch.zeros(0, model.config.d_model)


def impute_tokens(run: str | Path, tokens: str | Path, stream: str, samples: list[str] | None = None,
                  steps: int = 8, batch_size: int = 256, missing_only: bool = True,
                  progress: bool = False) -> tuple[list[str], torch.Tensor]:
    """(sample ids, predicted tokens) of ``stream`` from each sample's other streams.

    By default for the samples that lack the stream; ``samples`` picks them by id instead.
    """
    model = load_run(run)
    if stream not in model.streams:
        raise MmtokError(f"the run was trained on {list(model.streams)}, not {stream!r}")
    data = _open_tokens(model, tokens)
    idx = _select(data, samples)
    if samples is None and missing_only:
        idx = [i for i in idx if stream not in data.samples[i]["streams"]]
    outs = []
    for i in _batches(len(idx), batch_size, progress, "impute"):
        batch = data.batch(idx[i:i + batch_size])
        others = {k: v for k, v in batch.items() if k != stream}
        outs.append(model.predict(TokenBatch(others), stream, steps=steps))
    if not outs:
        raise MmtokError(f"no sample to impute {stream!r} for")
    return [data.sample_ids[i] for i in idx], torch.cat(outs)


def _select(data: TokenShards, samples: list[str] | None) -> list[int]:
    if samples is None:
        return list(range(len(data)))
    where = {s: i for i, s in enumerate(data.sample_ids)}
    missing = [s for s in samples if s not in where]
    if missing:
        raise MmtokError(f"{data.dir}: no sample(s) {missing[:5]} with any of the run's streams")
    return [where[s] for s in samples]


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], sample_ids: list[str]) -> None:
    """safetensors file (atomic) with the sample ids in its metadata, in row order."""
    atomic_write(Path(path), lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p),
                                                 metadata={"sample_ids": json.dumps(sample_ids)}))
