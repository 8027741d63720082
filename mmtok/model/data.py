"""Batches of token samples read lazily from an ``mmtok encode`` output folder.

Shards are memory-mapped safetensors files; a batch reads only the rows it needs (the span
between its first and last row in each shard), so nothing is loaded into RAM up front.
"""

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from mmtok.errors import MmtokError
from mmtok.model.config import StreamSpec
from mmtok.shards import INDEX, read_json

__all__ = ["TokenDataset", "held_out"]


def held_out(sample_id: str, fraction: float) -> bool:
    """Deterministic split by id: the same samples are held out on every machine and run."""
    h = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "little")
    return h / 2**64 < fraction


class TokenDataset:
    """The samples of a token folder (those with at least one of ``streams`` present).

    ``batch(indices)`` returns the shard layout ``{"<key>/ids" | "<key>/values", "<key>/present"}``
    for those samples.
    """

    def __init__(self, directory: str | Path, streams: Sequence[str] | None = None):
        self.dir = Path(directory)
        if not (self.dir / INDEX).is_file():
            raise MmtokError(f"{self.dir}: no {INDEX}; not a finished `mmtok encode` output")
        index = read_json(self.dir / INDEX)
        self.info: dict[str, dict] = index["streams"]
        keys = list(streams) if streams is not None else sorted(self.info)
        unknown = [k for k in keys if k not in self.info]
        if unknown:
            raise MmtokError(f"{self.dir}: no stream(s) {unknown}; it has {sorted(self.info)}")
        self.keys = keys
        self.shards = [self.dir / s for s in index["shards"]]
        wanted = set(keys)
        self.samples = [s for s in index["samples"] if wanted & set(s["streams"])]
        self.sample_ids = [s["id"] for s in self.samples]
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.samples)

    def specs(self) -> dict[str, StreamSpec]:
        """The model's view of each stream (continuous widths read from the first shard)."""
        out = {}
        for key in self.keys:
            info = self.info[key]
            if info["vocab_size"] is not None:
                out[key] = StreamSpec(vocab_size=info["vocab_size"], grid=tuple(info["grid"]))
            else:
                dim = self._file(0).get_slice(f"{key}/values").get_shape()[-1]
                out[key] = StreamSpec(dim=dim, grid=tuple(info["grid"]))
        return out

    def _file(self, shard: int):
        if os.getpid() != self._pid:  # forked into a DataLoader worker: open our own handles
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.shards[shard]), "pt")
        return self._handles[shard]

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The samples ``indices`` (positions in this dataset), in that order."""
        by_shard = defaultdict(list)  # shard -> [(position in batch, row)]
        for pos, i in enumerate(indices):
            s = self.samples[i]
            by_shard[s["shard"]].append((pos, s["row"]))
        n = len(indices)
        out: dict[str, Tensor] = {}
        for shard, members in by_shard.items():
            f = self._file(shard)
            pos = torch.tensor([p for p, _ in members])
            rows = torch.tensor([r for _, r in members])
            lo, hi = int(rows.min()), int(rows.max()) + 1
            for key in self.keys:
                name = f"{key}/ids" if self.info[key]["vocab_size"] is not None else f"{key}/values"
                for field in (name, f"{key}/present"):
                    part = f.get_slice(field)[lo:hi][rows - lo]
                    if field not in out:
                        out[field] = torch.zeros((n, *part.shape[1:]), dtype=part.dtype)
                    out[field][pos] = part
        return out
