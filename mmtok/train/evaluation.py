"""Held-out evaluation of the shared transformer: masked-token loss / accuracy per stream,
against the unigram baseline (each stream's training-set token frequencies).

`UnigramBaseline` is an evaluator: it counts the training tokens the first time it scores a
batch (at the first evaluation), not when the trainer is built, so a run that never evaluates
never pays for a pass over its training set.
"""

from collections.abc import Callable, Sequence

import torch

from mmtok.model import Masks, StreamLayout, StreamSpec

__all__ = ["UnigramBaseline"]


class UnigramBaseline:
    """Per discrete stream: add-one smoothed log-frequencies of the training tokens.

    ``batches(indices) -> batch`` reads token batches; ``train_idx`` are the training samples.
    ``scores(batch, masks) -> (nll, hits)``, each (s,) float64 per stream: the baseline's summed
    negative log-likelihood of the valid target tokens, and how many of them its arg-max hits.
    """

    def __init__(self, layout: StreamLayout, specs: dict[str, StreamSpec],
                 batches: Callable[[Sequence[int]], object], train_idx: Sequence[int], chunk: int = 512):
        self.layout, self.specs, self.batches = layout, specs, batches
        self.train_idx, self.chunk = list(train_idx), chunk
        self._logp: dict[str, torch.Tensor] | None = None
        self._counts: dict[str, torch.Tensor] | None = None

    @property
    def log_probs(self) -> dict[str, torch.Tensor]:
        """Per discrete stream, (vocab,) add-one smoothed log-frequencies of the training tokens."""
        if self._logp is None:
            self._logp = {k: torch.log((h + 1) / (h.sum() + len(h))) for k, h in self.counts.items()}
        return self._logp

    @property
    def counts(self) -> dict[str, torch.Tensor]:
        """Per discrete stream, (vocab,) float64 counts of its present training tokens."""
        if self._counts is None:
            counts: dict[str, torch.Tensor] = {}
            for start in range(0, len(self.train_idx), self.chunk):
                batch = self.batches(self.train_idx[start:start + self.chunk])
                for key, spec in self.specs.items():
                    if not spec.is_discrete:
                        continue
                    stream = batch[key]
                    ids = stream.ids[stream.present].long().flatten()
                    h = torch.bincount(ids, minlength=spec.vocab_size).double()
                    counts[key] = counts.get(key, 0) + h
            self._counts = counts
        return self._counts

    def scores(self, batch, masks: Masks) -> tuple[torch.Tensor, torch.Tensor]:
        lay = self.layout
        nll = torch.zeros(len(lay), dtype=torch.float64)
        hits = torch.zeros(len(lay), dtype=torch.float64)
        tgt = masks.target_idx.cpu()
        valid = masks.target_valid.cpu()
        stream_of = lay.stream_of[tgt]
        for s, key in enumerate(lay.keys):
            logp = self.log_probs.get(key)
            if logp is None:
                continue
            here = valid & (stream_of == s)
            if not here.any():
                continue
            ids = lay.gather(key, batch[key].ids.cpu().long(), tgt)[0][here]
            nll[s] = float(-logp[ids].sum())
            hits[s] = float((ids == logp.argmax()).sum())
        return nll, hits
