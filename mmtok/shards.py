"""Token shards: the on-disk output of ``mmtok encode``.

    OUT/
      run.json                      what produced it (manifest hash, streams, codec fingerprints)
      shards/shard-00000.safetensors   per stream: "<key>/ids" (n, T) int32 or "<key>/values"
                                    (n, T, d) float32, and "<key>/present" (n,) bool
      shards/shard-00000.json       the shard's sample ids and skipped samples (written last:
                                    its presence marks the shard complete)
      index.json                    all samples (id -> shard, row, streams), skipped samples with
                                    reasons, stream metadata, counts

Rows of a shard are the encoded samples in manifest order; a sample lacking a stream has
``present=False`` and zero tokens there. Everything is written atomically (temporary file,
fsync, rename), so an interrupted run never leaves a half-written shard under its real name.
"""

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmtok.codec import atomic_write
from mmtok.errors import MmtokError
from mmtok.tokens import TokenStream

__all__ = ["TokenShards", "read_json", "shard_name", "stream_from_info", "write_json", "write_shard"]

INDEX = "index.json"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def write_json(path: Path, data: Any) -> None:
    """Compact, key-sorted JSON (deterministic; no indent, so json's C encoder does the work —
    an indented index of many samples costs tens of microseconds per sample)."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MmtokError(f"{path}: cannot read ({err})") from None


def write_shard(directory: Path, i: int, tensors: dict[str, torch.Tensor], sidecar: dict) -> None:
    """Write shard ``i``: the safetensors file first, then its JSON sidecar (completion mark)."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / f"{shard_name(i)}.safetensors",
                 lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p)))
    write_json(directory / f"{shard_name(i)}.json", sidecar)


def stream_from_info(info: dict, tokens: torch.Tensor, present: torch.Tensor | None = None) -> TokenStream:
    """A `TokenStream` from a stream's ``index.json`` entry and its tokens: ids ``(b, n)`` for a
    discrete stream, values ``(b, n, d)`` for a continuous one; ``present`` defaults to all."""
    if present is None:
        present = torch.ones(len(tokens), dtype=torch.bool)
    common = {"grid": tuple(info["grid"]), "present": present, "codec": info["codec"],
              "fingerprint": info["fingerprint"]}
    if info["vocab_size"] is not None:
        return TokenStream(ids=tokens.long(), vocab_size=info["vocab_size"], **common)
    return TokenStream(values=tokens.float(), **common)


class TokenShards:
    """Read access to an ``mmtok encode`` output folder (memory-mapped, nothing loaded eagerly)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not (self.dir / INDEX).is_file():
            raise MmtokError(f"{self.dir}: no {INDEX}; not a finished `mmtok encode` output "
                             "(rerun with --resume to finish it)")
        self.index = read_json(self.dir / INDEX)
        self.streams: dict[str, dict] = self.index["streams"]
        self._where = {s["id"]: (s["shard"], s["row"]) for s in self.index["samples"]}

    @property
    def sample_ids(self) -> list[str]:
        return [s["id"] for s in self.index["samples"]]

    def __len__(self) -> int:
        return len(self._where)

    def stream(self, sample_id: str, key: str) -> TokenStream:
        """The tokens of one sample for one stream, as a batch of one."""
        if key not in self.streams:
            raise MmtokError(f"{self.dir}: no stream {key!r}; streams are {sorted(self.streams)}")
        if sample_id not in self._where:
            skipped = {s["id"]: s for s in self.index.get("skipped", [])}
            if sample_id in skipped:
                reasons = "; ".join(f"{p['key']}: {p['reason']}" for p in skipped[sample_id]["problems"])
                raise MmtokError(f"sample {sample_id!r} was skipped when encoding: {reasons}")
            raise MmtokError(f"{self.dir}: no sample {sample_id!r}")
        shard, row = self._where[sample_id]
        info = self.streams[key]
        path = self.dir / "shards" / f"{shard_name(shard)}.safetensors"
        with safe_open(str(path), "pt") as f:
            present = f.get_slice(f"{key}/present")[row:row + 1]
            name = f"{key}/ids" if info["vocab_size"] is not None else f"{key}/values"
            tokens = f.get_slice(name)[row:row + 1]
        if not bool(present[0]):
            raise MmtokError(f"sample {sample_id!r} has no {key!r} (its manifest entry lacks "
                             f"modality {info['modality']!r})")
        return stream_from_info(info, tokens, present)
