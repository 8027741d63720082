"""Using a trained run: embeddings of token samples and imputation of a stream.

    features = embed_tokens("runs/clinic/model", "runs/clinic/tokens")           # ids, (n, d)
    ids, values = impute_tokens("runs/clinic/model", "runs/clinic/tokens", "tok_vitals")
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

from mmtok.codec import atomic_write
from mmtok.errors import MmtokError
from mmtok.model.data import TokenDataset
from mmtok.train import load_run

__all__ = ["embed_tokens", "impute_tokens", "save_tensors"]


def embed_tokens(run: str | Path, tokens: str | Path, batch_size: int = 256,
                 samples: list[str] | None = None) -> tuple[list[str], torch.Tensor]:
    """(sample ids, (n, d) pooled encoder features) over every present token of each sample."""
    model = load_run(run)
    data = TokenDataset(tokens, list(model.streams))
    idx = _select(data, samples)
    pooled = [model.embed(data.batch(idx[i:i + batch_size])).pooled for i in range(0, len(idx), batch_size)]
    return [data.sample_ids[i] for i in idx], torch.cat(pooled) if pooled else torch.zeros(0, model.config.d_model)


def impute_tokens(run: str | Path, tokens: str | Path, stream: str, samples: list[str] | None = None,
                  steps: int = 8, batch_size: int = 256, missing_only: bool = True) -> tuple[list[str], torch.Tensor]:
    """(sample ids, predicted tokens) of ``stream`` from each sample's other streams.

    By default for the samples that lack the stream; ``samples`` picks them by id instead.
    """
    model = load_run(run)
    if stream not in model.streams:
        raise MmtokError(f"the run was trained on {list(model.streams)}, not {stream!r}")
    data = TokenDataset(tokens, list(model.streams))
    idx = _select(data, samples)
    if samples is None and missing_only:
        idx = [i for i in idx if stream not in data.samples[i]["streams"]]
    outs = []
    for i in range(0, len(idx), batch_size):
        batch = data.batch(idx[i:i + batch_size])
        others = {k: v for k, v in batch.items() if not k.startswith(f"{stream}/")}
        outs.append(model.predict(others, stream, steps=steps))
    if not outs:
        raise MmtokError(f"no sample to impute {stream!r} for")
    return [data.sample_ids[i] for i in idx], torch.cat(outs)


def _select(data: TokenDataset, samples: list[str] | None) -> list[int]:
    if samples is None:
        return list(range(len(data)))
    where = {s: i for i, s in enumerate(data.sample_ids)}
    missing = [s for s in samples if s not in where]
    if missing:
        raise MmtokError(f"{data.dir}: no sample(s) {missing[:5]} with any of the run's streams")
    return [where[s] for s in samples]


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], sample_ids: list[str]) -> None:
    """safetensors file (atomic) with the sample ids in its metadata, in row order."""
    import json

    atomic_write(Path(path), lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p),
                                                 metadata={"sample_ids": json.dumps(sample_ids)}))
