"""`mmtok evaluate`: how well a trained run predicts a stream of held-out samples from their
other streams, against baselines computed in the same run.

    report = evaluate_run("runs/clinic/model", "runs/clinic/tokens", ["tok_labs"])
    print(report.markdown())              # one table per stream
    write_json("report.json", report.to_dict())

Held-out samples are the run's own: those its training config (``val_fraction``, ``val_group``)
held out, that have the stream and at least one other stream the run knows. Baselines use the
training samples only.

Discrete streams (every token is a class): accuracy, balanced accuracy (mean per-class recall
over the classes the held-out samples have), log loss, and per-class recall, for

- ``model``: the arg-max of the model's token distribution (`predict_proba`, one pass);
- ``majority``: each token position's most frequent training token;
- ``unigram``: a draw from each position's (add-one smoothed) training token frequencies; its
  numbers are expectations, so they are exact, not a random draw.

Decodable streams (a codec in the registry, a modality of real values, and the manifest the
folder was encoded from): RMSE of the decoded prediction against the true field in data units,
and in units of each channel's training-set standard deviation, for the model's MaskGIT decode
(`predict`), its posterior mean when the codec decodes each token on its own (quantile bins:
the probability-weighted mean of the values the bins decode to, the least-squares estimate) and
the training-set mean.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from mmtok.errors import MmtokError
from mmtok.shards import TokenShards, held_out

__all__ = ["StreamEvaluation", "EvaluationReport", "evaluate_run", "recorded_manifest"]


@dataclasses.dataclass
class StreamEvaluation:
    """The metrics of one stream: ``classification[method][metric]`` (``per_class_recall`` maps
    a token id to its recall) and ``regression[method][metric]`` (None when not decodable)."""

    stream: str
    held_out: int
    train: int
    tokens: int
    classification: dict[str, dict] | None = None
    support: dict[int, int] | None = None
    regression: dict[str, dict] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class EvaluationReport:
    run: str
    tokens: str
    streams: list[StreamEvaluation]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def markdown(self, max_classes: int = 20) -> str:
        """One section per stream: the metrics table, per-class recall (up to ``max_classes``
        classes) and the RMSE table."""
        out = []
        for ev in self.streams:
            out.append(f"### {ev.stream}: {ev.held_out} held-out samples ({ev.tokens} target tokens), "
                       f"baselines from {ev.train} training samples\n")
            if ev.classification:
                out.append("| method | accuracy | balanced accuracy | log loss |\n|---|---:|---:|---:|")
                for method, m in ev.classification.items():
                    loss = "" if m["log_loss"] is None else f"{m['log_loss']:.3f}"
                    out.append(f"| {method} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | {loss} |")
                classes = sorted(ev.support)
                if len(classes) <= max_classes:
                    methods = list(ev.classification)
                    out.append("\n| class (token id) | held-out tokens | "
                               + " | ".join(f"{m} recall" for m in methods) + " |")
                    out.append("|---|---:|" + "---:|" * len(methods))
                    for c in classes:
                        cells = " | ".join(f"{ev.classification[m]['per_class_recall'][c]:.3f}" for m in methods)
                        out.append(f"| {c} | {ev.support[c]} | {cells} |")
                else:
                    out.append(f"\n({len(classes)} classes; per-class recall in the JSON report)")
            if ev.regression:
                out.append("\n| prediction | RMSE (data units) | RMSE (training std units) |\n|---|---:|---:|")
                for method, m in ev.regression.items():
                    out.append(f"| {method} | {m['rmse']:.4g} | {m['rmse_std']:.3f} |")
            out.extend(f"\n{note}" for note in ev.notes)
            out.append("")
        return "\n".join(out)


def recorded_manifest(tokens: str | os.PathLike) -> Path | None:
    """The manifest a token folder's ``index.json`` records (relative to the folder), or None."""
    from mmtok.registry import recorded_path

    found = recorded_path(tokens, "manifest_path")
    return found if found is not None and found.is_file() else None


def evaluate_run(run: str | os.PathLike, tokens: str | os.PathLike, streams: list[str] | None = None, *,
                 registry: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None,
                 batch_size: int = 256, steps: int = 8, progress: bool = False) -> EvaluationReport:
    """Evaluate ``streams`` (default: every stream of the run) of ``run`` on the held-out samples
    of the token folder ``tokens``. ``registry`` / ``manifest`` (default: the ones the folder
    records) are needed only for the RMSE of decodable streams."""
    from mmtok.inference import _open_tokens, load_run
    from mmtok.train import TrainConfig

    model = load_run(run)
    data = _open_tokens(model, tokens)
    keys = list(streams or [k for k in model.streams if k in data.streams])
    for key in keys:
        if key not in model.streams:
            raise MmtokError(f"the run was trained on {list(model.streams)}, not {key!r}")
        if key not in data.streams:
            raise MmtokError(f"{tokens}: has no stream {key!r}; it has {sorted(data.streams)}")
    config = TrainConfig.load(Path(run) / "config.yaml")
    val = [held_out(s, *config.folder(tokens).split(config)) for s in data.sample_ids]  # that folder's split
    if not any(val):
        raise MmtokError(f"{run}: its config holds out no sample (val_fraction {config.val_fraction}); "
                         "nothing to evaluate on")
    decoder = _Decoder(tokens, registry, manifest)
    results = []
    for key in keys:
        has = [i for i, s in enumerate(data.samples) if key in s["streams"]]
        train = [i for i in has if not val[i]]
        test = [i for i in has if val[i] and len(set(data.samples[i]["streams"]) & set(model.streams)) > 1]
        if not test:
            raise MmtokError(f"{key!r}: no held-out sample has it and another stream to predict it from")
        results.append(_evaluate_stream(model, data, key, train, test, decoder, batch_size, steps, progress))
    return EvaluationReport(run=str(run), tokens=str(tokens), streams=results)


def _evaluate_stream(model, data: TokenShards, key: str, train: list[int], test: list[int], decoder: "_Decoder",
                     batch_size: int, steps: int, progress: bool) -> StreamEvaluation:
    from mmtok.inference import _batches
    from mmtok.tokens import TokenBatch

    spec = model.streams[key]
    ev = StreamEvaluation(stream=key, held_out=len(test), train=len(train), tokens=len(test) * spec.num_tokens)
    truth, probs, sampled = [], [], []
    for i in _batches(len(test), batch_size, progress, f"evaluate {key}"):
        batch = data.batch(test[i:i + batch_size])
        others = TokenBatch({k: v for k, v in batch.items() if k != key})
        if spec.is_discrete:
            truth.append(batch[key].ids.long())
            probs.append(model.predict_proba(others, key).double())
        sampled.append(model.predict(others, key, steps=steps))
    sampled = torch.cat(sampled)
    if spec.is_discrete:
        truth, probs = torch.cat(truth), torch.cat(probs)
        ev.classification, ev.support = _classification(truth, probs, _train_ids(data, key, train), spec.vocab_size)
    ev.regression = decoder.regression(data, key, train, test, sampled, probs if spec.is_discrete else None, ev.notes)
    return ev


def _train_ids(data: TokenShards, key: str, train: list[int], chunk: int = 1024) -> torch.Tensor:
    """(n_train, n) token ids of the stream in the training samples."""
    parts = [data.batch(train[i:i + chunk])[key].ids.long() for i in range(0, len(train), chunk)]
    return torch.cat(parts)


def _classification(truth: torch.Tensor, probs: torch.Tensor, train: torch.Tensor,
                    vocab: int) -> tuple[dict[str, dict], dict[int, int]]:
    """truth (b, n), probs (b, n, v) of the model, train (t, n) ids -> metrics per method."""
    n = truth.shape[1]
    counts = torch.stack([torch.bincount(train[:, j], minlength=vocab) for j in range(n)]).double()  # (n, v)
    freq = (counts + 1) / (counts.sum(1, keepdim=True) + vocab)  # add-one smoothed, per position
    y = truth.flatten()
    classes = torch.unique(y).tolist()
    support = {int(c): int((y == c).sum()) for c in classes}

    def summary(p_true: torch.Tensor, recall: dict[int, float], log_loss: float | None) -> dict:
        # p_true: per token, the probability the method gives the true class (1/0 for a hard choice)
        return {"accuracy": float(p_true.mean()), "balanced_accuracy": float(np.mean(list(recall.values()))),
                "log_loss": log_loss, "per_class_recall": recall}

    def hard(pred: torch.Tensor) -> dict[int, float]:
        return {c: float((pred[y == c] == c).double().mean()) for c in classes}

    model_pred = probs.argmax(-1).flatten()
    p_model = probs.gather(-1, truth.unsqueeze(-1)).flatten()
    majority = counts.argmax(1).expand_as(truth).flatten()
    p_unigram = freq.gather(1, truth.T).T.flatten()  # (b * n) probability of the true token
    unigram_recall = {c: float(p_unigram[y == c].mean()) for c in classes}
    return {
        "model": summary((model_pred == y).double(), hard(model_pred),
                         float(-p_model.clamp_min(1e-12).log().mean())),
        "majority": summary((majority == y).double(), hard(majority), None),
        "unigram": summary(p_unigram, unigram_recall, float(-p_unigram.log().mean())),
    }, support


class _Decoder:
    """The codecs and the manifest behind a token folder, for RMSE in data units."""

    def __init__(self, tokens, registry, manifest):
        from mmtok.errors import RegistryError
        from mmtok.registry import find_registry

        self.tokens = Path(tokens)
        try:  # the rule of every command: --registry, else the one the folder was encoded with, ...
            self.registry_path = find_registry(registry, tokens=tokens).path
        except RegistryError:
            if registry is not None:
                raise
            self.registry_path = None
        self.manifest_path = Path(manifest) if manifest is not None else recorded_manifest(tokens)
        self._registry = self._manifest = None

    def _codec(self, data: TokenShards, key: str, notes: list[str]):
        if self.registry_path is None:
            notes.append("No RMSE: no registry (the token folder records none; pass --registry).")
            return None
        from mmtok.codecs import CategoricalCodec
        from mmtok.registry import Registry

        if self._registry is None:
            self._registry = Registry.load(self.registry_path)
        codec = self._registry.codec(key)
        if codec.fingerprint() != data.streams[key]["fingerprint"]:
            raise MmtokError(f"the codec {self.registry_path} gives for {key!r} is not the one that encoded "
                             f"{self.tokens} (fingerprint {codec.fingerprint()} vs {data.streams[key]['fingerprint']})")
        if isinstance(codec, CategoricalCodec):
            return None  # class labels: the classification metrics are the measure
        if self.manifest_path is None:
            notes.append("No RMSE: the token folder records no manifest; pass --manifest.")
            return None
        return codec

    def regression(self, data: TokenShards, key: str, train: list[int], test: list[int], sampled: torch.Tensor,
                   probs: torch.Tensor | None, notes: list[str]) -> dict[str, dict] | None:
        codec = self._codec(data, key, notes)
        if codec is None:
            return None
        from mmtok.manifest import Manifest
        from mmtok.plugins import get_plugin_manager

        if self._manifest is None:
            self._manifest = Manifest.load(self.manifest_path)
        manager = get_plugin_manager()
        by_id = {s.id: s for s in self._manifest.samples}
        modality = data.streams[key]["modality"]

        def load(i: int):
            sid = data.sample_ids[i]
            if sid not in by_id:
                raise MmtokError(f"{self.manifest_path}: no sample {sid!r} of {self.tokens}; is it the manifest "
                                 "the folder was encoded from?")
            return self._manifest.load_modality(by_id[sid], modality, manager)

        test_m = [load(i) for i in test]
        targets = [codec.reconstruction_target(m).double()[0] for m in test_m]
        if not targets[0].is_floating_point() or any(t.shape != targets[0].shape for t in targets):
            notes.append("No RMSE: the decoded fields differ in shape between samples.")
            return None
        truth = torch.stack(targets)  # (b, ...)
        reference = torch.stack([codec.reconstruction_target(load(i)).double()[0] for i in train])
        mean = reference.mean(0)  # per element: the training-set mean
        if truth.dim() > 2:  # images, series: one spread per channel (axis 0 of the field), not per pixel
            std = reference.transpose(0, 1).flatten(1).std(1, unbiased=False).view(-1, *[1] * (truth.dim() - 2))
        else:  # columns: one spread each
            std = reference.std(0, unbiased=False) + 1e-12

        def decode(tokens: torch.Tensor, i: int) -> torch.Tensor:
            m = test_m[i]
            stream = data.make_stream(key, tokens[i:i + 1])
            return getattr(codec.decode_like(stream, m), codec.field).double()[0]

        preds = {"model (MaskGIT decode)": torch.stack([decode(sampled, i) for i in range(len(test))])}
        if probs is not None and getattr(codec, "tokenwise", False):
            bins = torch.arange(probs.shape[-1]).unsqueeze(1).expand(-1, probs.shape[1])  # (v, n)
            value = getattr(codec.decode(data.make_stream(key, bins)), codec.field).double()  # (v, n)
            preds = {"model (posterior mean)": torch.einsum("bnv,vn->bn", probs, value), **preds}
        preds["training mean"] = mean.expand_as(truth)
        return {name: {"rmse": float(((p - truth) ** 2).mean().sqrt()),
                       "rmse_std": float((((p - truth) / std) ** 2).mean().sqrt())} for name, p in preds.items()}

