"""Token shards: the on-disk output of ``mmtok encode``. This module is the only one that knows
the layout; everything else reads and writes `TokenStream` / `TokenBatch`.

    OUT/
      run.json                      what produced it (manifest hash, streams, codec fingerprints)
      shards/shard-00000.safetensors   per stream: "<key>/ids" (n, T) int32 or "<key>/values"
                                    (n, T, d) float32, and "<key>/present" (n,) bool
      shards/shard-00000.json       the shard's sample ids, skipped samples and per-stream
                                    statistics (written last: its presence marks the shard complete)
      index.json                    all samples (id -> shard, row, streams), skipped samples with
                                    reasons, stream metadata, counts

Rows of a shard are the encoded samples in manifest order; a sample lacking a stream has
``present=False`` and zero tokens there. Everything is written atomically (temporary file,
fsync, rename), so an interrupted run never leaves a half-written shard under its real name.

    shards = TokenShards("runs/clinic/tokens")          # memory-mapped, nothing loaded eagerly
    batch = shards.batch([0, 5, 7])                     # TokenBatch of those samples
    one = shards.stream("patient-12", "tok_labs")       # TokenStream of one sample
"""

import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save

from mmtok.errors import MmtokError
from mmtok.io import DamagedFileError, atomic_write, json_text, open_safetensors, read_json
from mmtok.model.config import StreamSpec
from mmtok.tokens import TokenBatch, TokenStream

__all__ = ["INDEX", "TokenShards", "TokenDataset", "check_shard", "file_sha256", "held_out", "merge_statistics",
           "shard_files", "shard_name", "tensor_names", "write_files", "write_shard"]

INDEX = "index.json"
RESUME_HINT = "re-run the same `mmtok encode` with --resume: it re-verifies every shard and re-encodes damaged ones"
_INDEX_KEYS = {"streams", "shards", "samples"}
_STREAM_KEYS = {"modality", "codec", "fingerprint", "vocab_size", "grid", "num_tokens"}
_SAMPLE_KEYS = {"id", "shard", "row", "streams"}


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def tensor_names(key: str, discrete: bool) -> tuple[str, str]:
    """(tokens, present) tensor names of stream ``key`` in a shard (and in ``mmtok impute`` output)."""
    return (f"{key}/ids" if discrete else f"{key}/values"), f"{key}/present"


def held_out(sample_id: str, fraction: float, group: str | None = None) -> bool:
    r"""Deterministic split by id: the same samples are held out on every machine and run.

    ``group`` is a regular expression whose first group (or whole match) is hashed instead of the
    whole id, so that samples of one patient, record or region go to the same side: with ids like
    ``"p07-beat0123"``, ``group=r"^(p\d+)-"`` holds out whole patients. An id it does not match is
    an error (a silently unsplit group would leak into training)."""
    key = sample_id
    if group is not None:
        m = re.search(group, sample_id)
        if m is None:
            raise MmtokError(f"sample {sample_id!r}: val_group pattern {group!r} does not match its id")
        key = m.group(1) if m.groups() else m.group(0)
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return h / 2**64 < fraction


# ---------------------------------------------------------------------------- writing
def _statistics(stream: TokenStream) -> dict:
    """Samples present and, for discrete streams, the code histogram as sparse [id, count] pairs."""
    stats = {"samples": int(stream.present.sum()), "hist": None}
    if stream.is_discrete and bool(stream.present.any()):
        h = torch.bincount(stream.ids[stream.present].reshape(-1), minlength=stream.vocab_size)
        used = h.nonzero().flatten()
        stats["hist"] = torch.stack([used, h[used]], 1).tolist()
    return stats


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_files(directory: Path, i: int, streams: Mapping[str, TokenStream],
                sidecar: dict) -> tuple[list[tuple[Path, bytes]], dict]:
    """What `write_shard` writes, serialised but not written: ``[(path, bytes)]`` in writing order
    (the safetensors file, then its JSON sidecar, which marks the shard complete) and the sidecar."""
    directory = Path(directory)
    tensors = {}
    for key, s in streams.items():
        tokens_name, present_name = tensor_names(key, s.is_discrete)
        tensors[tokens_name] = (s.ids.to(torch.int32) if s.is_discrete else s.values.float()).contiguous()
        tensors[present_name] = s.present.contiguous()
    data = save(tensors)  # bytes: hashed as written, not read back
    sidecar = {**sidecar, "sha256": hashlib.sha256(data).hexdigest(),
               "statistics": {k: _statistics(s) for k, s in streams.items()}}
    return [(directory / f"{shard_name(i)}.safetensors", data),
            (directory / f"{shard_name(i)}.json", json_text(sidecar).encode())], sidecar


def write_files(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write each ``(path, bytes)`` atomically, in order (see `shard_files`)."""
    for path, data in files:
        atomic_write(path, lambda p, data=data: p.write_bytes(data))


def write_shard(directory: Path, i: int, streams: Mapping[str, TokenStream], sidecar: dict) -> dict:
    """Write shard ``i`` (every stream has one row per sample): the safetensors file first, then
    its JSON sidecar (``sidecar`` + per-stream ``statistics`` + the file's ``sha256``), which marks
    the shard complete. Returns that sidecar (what `read_json` of it gives)."""
    files, sidecar = shard_files(directory, i, streams, sidecar)
    write_files(files)
    return sidecar


def check_shard(directory: Path, i: int) -> str | None:
    """Why finished shard ``i`` of ``directory`` cannot be trusted (None: it can): a sidecar that is
    torn or lacks keys, a safetensors file that is missing, damaged or not the one the sidecar
    was written for (its sha256)."""
    side_path = Path(directory) / f"{shard_name(i)}.json"
    try:
        side = read_json(side_path)
    except MmtokError as err:
        return str(err)
    if not isinstance(side, dict) or not {"samples", "skipped", "statistics", "sha256"} <= set(side):
        return f"{side_path}: incomplete shard sidecar"
    path = Path(directory) / f"{shard_name(i)}.safetensors"
    try:
        open_safetensors(path, "token shard")
    except DamagedFileError as err:
        return str(err)
    if file_sha256(path) != side["sha256"]:
        return f"{path}: token shard is not the file its sidecar describes (sha256 differs)"
    return None


def merge_statistics(sidecars: Sequence[dict], info: Mapping[str, dict]) -> dict[str, dict]:
    """Per stream over all shards: samples, tokens, codes used and usage (share of the vocabulary)."""
    out = {}
    for key, meta in info.items():
        samples, hist = 0, defaultdict(int)
        for side in sidecars:
            if key not in side.get("statistics", {}):
                raise MmtokError(f"shard {side.get('shard')} has no statistics of stream {key!r}: it was "
                                 "written by an older mmtok; encode into a new --out folder")
            stats = side["statistics"][key]
            samples += stats["samples"]
            for code, count in stats["hist"] or ():
                hist[code] += count
        used = len(hist) if meta["vocab_size"] is not None and samples else None
        out[key] = {"samples": samples, "tokens": samples * meta["num_tokens"], "codes_used": used,
                    "usage": None if used is None else used / meta["vocab_size"]}
    return out


# ---------------------------------------------------------------------------- reading
class TokenShards:
    """Read access to an ``mmtok encode`` output folder: memory-mapped, nothing loaded eagerly;
    a batch reads only the rows it needs (the span between its first and last row per shard).

    ``streams`` picks the streams (default: all, sorted by key); `samples` / `sample_ids` are the
    encoded samples that have at least one of them, and ``batch(indices)`` indexes those.
    """

    def __init__(self, directory: str | Path, streams: Sequence[str] | None = None):
        self.dir = Path(directory)
        if not (self.dir / INDEX).is_file():
            raise MmtokError(f"{self.dir}: no {INDEX}; not a finished `mmtok encode` output "
                             "(rerun with --resume to finish it)")
        self.index = read_json(self.dir / INDEX)
        self._check_index()
        self.streams: dict[str, dict] = self.index["streams"]
        keys = list(streams) if streams is not None else sorted(self.streams)
        unknown = [k for k in keys if k not in self.streams]
        if unknown:
            raise MmtokError(f"{self.dir}: no stream(s) {unknown}; it has {sorted(self.streams)}")
        self.keys = keys
        self.files = [self.dir / s for s in self.index["shards"]]
        for f in self.files:
            if not f.is_file():
                raise DamagedFileError(f"{f}: token shard named by {self.dir / INDEX} is missing; {RESUME_HINT}")
        self._rows = [0] * len(self.files)
        for s in self.index["samples"]:
            self._rows[s["shard"]] += 1
        wanted = set(keys)
        self.samples = [s for s in self.index["samples"] if wanted & set(s["streams"])]
        self.sample_ids = [s["id"] for s in self.samples]
        self._where = {s["id"]: (s["shard"], s["row"]) for s in self.index["samples"]}
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.samples)

    def _check_index(self) -> None:
        """Every key reading needs, in the index and each of its streams and samples."""
        where = self.dir / INDEX
        index = self.index
        if not isinstance(index, dict) or _INDEX_KEYS - set(index):
            missing = sorted(_INDEX_KEYS - set(index)) if isinstance(index, dict) else sorted(_INDEX_KEYS)
            raise DamagedFileError(f"{where}: not a complete encode index (lacks {missing}); {RESUME_HINT}")
        for key, info in index["streams"].items():
            if not isinstance(info, dict) or _STREAM_KEYS - set(info):
                raise DamagedFileError(f"{where}: stream {key!r} lacks {sorted(_STREAM_KEYS - set(info or {}))}; "
                                       f"{RESUME_HINT}")
        n = len(index["shards"])
        for s in index["samples"]:
            if not isinstance(s, dict) or _SAMPLE_KEYS - set(s) or not 0 <= s["shard"] < n:
                raise DamagedFileError(f"{where}: damaged sample entry {str(s)[:120]}; {RESUME_HINT}")

    def verify(self) -> None:
        """Open every shard (header, names, dtypes, shapes checked against the index) and check that
        every discrete stream's ids lie in its vocabulary: a damaged folder fails here, when it is
        opened, not at whatever step a batch or a mask first touches the bad rows."""
        for shard in range(len(self.files)):
            f = self._file(shard)
            for key in self.keys:
                vocab = self.streams[key]["vocab_size"]
                if vocab is None or not self._rows[shard]:
                    continue
                ids = f.get_tensor(tensor_names(key, True)[0])
                lo, hi = int(ids.min()), int(ids.max())
                if lo < 0 or hi >= vocab:
                    raise DamagedFileError(f"{self.files[shard]}: stream {key!r} has token ids in [{lo}, {hi}], "
                                           f"outside its vocabulary [0, {vocab}); {RESUME_HINT}")

    def specs(self) -> dict[str, StreamSpec]:
        """The model's view of each selected stream (continuous widths read from the first shard)."""
        out = {}
        for key in self.keys:
            info = self.streams[key]
            if info["vocab_size"] is not None:
                out[key] = StreamSpec(vocab_size=info["vocab_size"], grid=tuple(info["grid"]))
            else:
                dim = self._file(0).get_slice(tensor_names(key, False)[0]).get_shape()[-1]
                out[key] = StreamSpec(dim=dim, grid=tuple(info["grid"]))
        return out

    def make_stream(self, key: str, tokens: torch.Tensor, present: torch.Tensor | None = None) -> TokenStream:
        """A `TokenStream` of stream ``key`` from its tokens (ids (b, n) or values (b, n, d)), with
        the stream's grid, vocabulary and codec; ``present`` defaults to all samples."""
        info = self.streams[key]
        if present is None:
            present = torch.ones(len(tokens), dtype=torch.bool)
        common = {"grid": tuple(info["grid"]), "present": present.bool(), "codec": info["codec"],
                  "fingerprint": info["fingerprint"]}
        if info["vocab_size"] is not None:
            return TokenStream(ids=tokens.long(), vocab_size=info["vocab_size"], **common)
        return TokenStream(values=tokens.float(), **common)

    def _file(self, shard: int):
        if os.getpid() != self._pid:  # forked into a DataLoader worker: open our own handles
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            f = open_safetensors(self.files[shard], "token shard", RESUME_HINT)
            self._check_tensors(shard, f)
            self._handles[shard] = f
        return self._handles[shard]

    def _check_tensors(self, shard: int, f) -> None:
        """The shard's header against the index: every stream's tensors, dtypes and shapes
        (``<key>/ids`` I32 (n, T), ``<key>/values`` F32 (n, T, d), ``<key>/present`` BOOL (n,))."""
        n, names = self._rows[shard], set(f.keys())
        for key, info in self.streams.items():
            tokens, present = tensor_names(key, info["vocab_size"] is not None)
            T = info["num_tokens"]
            wanted = {present: ("BOOL", [n]), tokens: ("I32", [n, T]) if tokens.endswith("/ids") else ("F32", [n, T])}
            for name, (dtype, shape) in wanted.items():
                if name not in names:
                    raise DamagedFileError(f"{self.files[shard]}: token shard has no tensor {name!r}; {RESUME_HINT}")
                sl = f.get_slice(name)
                found = (sl.get_dtype(), list(sl.get_shape()))
                found_shape = found[1][:2] if name.endswith("/values") else found[1]
                if found[0] != dtype or found_shape != shape or (name.endswith("/values") and len(found[1]) != 3):
                    want = shape + (["d"] if name.endswith("/values") else [])
                    raise DamagedFileError(f"{self.files[shard]}: tensor {name!r} is {found[0]} {found[1]}, the "
                                           f"index expects {dtype} {want}; {RESUME_HINT}")

    def batch(self, indices: Sequence[int]) -> TokenBatch:
        """The samples ``indices`` (positions in `samples`), in that order, every selected stream."""
        by_shard = defaultdict(list)  # shard -> [(position in batch, row)]
        for pos, i in enumerate(indices):
            s = self.samples[i]
            by_shard[s["shard"]].append((pos, s["row"]))
        n = len(indices)
        parts: dict[str, list[torch.Tensor | None]] = {k: [None, None] for k in self.keys}
        for shard, members in by_shard.items():
            f = self._file(shard)
            pos = torch.tensor([p for p, _ in members])
            rows = torch.tensor([r for _, r in members])
            lo, hi = int(rows.min()), int(rows.max()) + 1
            for key in self.keys:
                names = tensor_names(key, self.streams[key]["vocab_size"] is not None)
                for j, name in enumerate(names):
                    part = f.get_slice(name)[lo:hi][rows - lo]
                    if parts[key][j] is None:
                        parts[key][j] = torch.zeros((n, *part.shape[1:]), dtype=part.dtype)
                    parts[key][j][pos] = part
        return TokenBatch({k: self.make_stream(k, tokens, present) for k, (tokens, present) in parts.items()})

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
        tokens_name, present_name = tensor_names(key, info["vocab_size"] is not None)
        f = self._file(shard)
        present = f.get_slice(present_name)[row:row + 1]
        tokens = f.get_slice(tokens_name)[row:row + 1]
        if not bool(present[0]):
            raise MmtokError(f"sample {sample_id!r} has no {key!r} (its manifest entry lacks "
                             f"modality {info['modality']!r})")
        return self.make_stream(key, tokens, present)


class TokenDataset(torch.utils.data.Dataset):
    """A token folder as a map-style torch ``Dataset``, for a training loop of one's own.

    Item ``i`` is sample ``i`` of `TokenShards` (``sample_ids[i]``) as a `TokenBatch` of one; a
    ``DataLoader`` fetches a whole batch in one read per shard (``__getitems__``), so use
    `loader` (or pass ``collate_fn=TokenDataset.collate``)::

        data = TokenDataset("runs/clinic/tokens")
        for batch in data.loader(batch_size=64, shuffle=True):   # TokenBatch of 64
            out = model(batch, masks)
    """

    def __init__(self, directory: str | Path, streams: Sequence[str] | None = None):
        self.shards = TokenShards(directory, streams)

    @property
    def sample_ids(self) -> list[str]:
        return self.shards.sample_ids

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> TokenBatch:
        return self.shards.batch([i])

    def __getitems__(self, indices: Sequence[int]) -> TokenBatch:
        return self.shards.batch(list(indices))

    @staticmethod
    def collate(batch):
        return batch  # __getitems__ already made one TokenBatch

    def loader(self, batch_size: int = 64, shuffle: bool = False, **kwargs) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate,
                                           **kwargs)
