"""``mmtok encode``: manifest -> token shards, batched per stream, resumable, multi-process.

Samples are split, in manifest order, into shards of ``shard_size``. Each shard is loaded
lazily, 64 consecutive samples at a time (by DataLoader workers when there are any): the plain
``.npy`` files of one modality among them are read straight into one array (`Manifest.npy_rows`),
anything else by its reader. Its modalities are bucketed per stream by shape and dtype, encoded
in batches of ``batch_size`` under ``torch.inference_mode()``, and written atomically (see
`mmtok.shards`) on a background thread while the next shard is read. Every sample-level problem (unreadable file, failed
modality check, a codec refusing the sample) stops the run (``on_error="fail"``) or skips the
sample with its reason (``"skip"``); a run that encodes nothing is an `EncodeError`. A shard is a
pure function of its samples and the codecs, so:

* ``--resume`` skips finished shards and the result is byte-identical to an uninterrupted run;
* under ``torchrun`` rank r encodes shards r, r + W, ...; rank 0 merges the index, and the
  output equals the single-process one.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mmtok.distributed import init_distributed
from mmtok.errors import MmtokError, warn
from mmtok.io import OutputLock, read_json, write_json
from mmtok.manifest import Manifest, ManifestProblem, SampleEntry, SampleError, summarize
from mmtok.modality import Modality, deferred_checks
from mmtok.plugins import PluginManager, get_plugin_manager
from mmtok.registry import Registry, find_registry
from mmtok.shards import INDEX, check_shard, merge_statistics, shard_files, shard_name, write_files, write_shard
from mmtok.tokens import TokenStream

__all__ = ["EncodeError", "encode_manifest", "EncodeSummary"]


class EncodeError(MmtokError, RuntimeError):
    """Encoding stopped (``--on-error fail``) or cannot start."""


@dataclasses.dataclass
class EncodeSummary:
    out: Path
    samples: int
    skipped: list[dict]
    streams: dict[str, dict]  # key -> samples, tokens, codes_used, usage
    seconds: float

    def table(self) -> str:
        lines = ["| stream | samples | tokens | codebook used |", "|---|---:|---:|---:|"]
        for key, s in self.streams.items():
            used = ("empty" if not s["samples"] else "continuous" if s["usage"] is None else
                    f"{s['codes_used']} ({100 * s['usage']:.1f}%)")
            lines.append(f"| {key} | {s['samples']} | {s['tokens']} | {used} |")
        return "\n".join(lines)


class _SampleReader(Dataset):
    """Item i -> its `_Pending` (reader records, problems; for a sample whose every modality is a
    plain ``.npy`` file read by `chunk`, the block rows its records are).

    Only file I/O happens here (in DataLoader workers when there are any); records are plain
    numpy, which crosses process boundaries cheaply, and become modalities in the main process.
    """

    def __init__(self, manifest: Manifest, items: list[tuple[int, int, SampleEntry]], modalities: set[str],
                 manager: PluginManager):
        self.manifest, self.items, self.modalities, self.manager = manifest, items, modalities, manager

    def __getstate__(self) -> dict:
        # a worker started by spawn / forkserver (not fork) loads the installed plugins itself
        return {**self.__dict__, "manager": None}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self._item(self.items[i], {}, 0)

    def chunk(self, start: int, stop: int) -> list["_Pending"]:
        """Items ``start`` to ``stop - 1``, as ``__getitem__`` gives each; the plain ``.npy`` files
        of each modality among them are read in one pass into one array (`Manifest.npy_rows`)."""
        items = self.items[start:stop]
        fast = collections.defaultdict(list)  # modality -> [(position, path as written)]
        plain = []  # per position: True when every modality is such a file, encoded here, not renamed
        for pos, (_, _, sample) in enumerate(items):
            every = True
            for key, entry in sample.modalities.items():
                if key in self.modalities and entry.path is not None and entry.reader is None and not entry.options:
                    fast[key].append((pos, entry.path))
                    every = every and not entry.fields
                else:
                    every = False
            plain.append(every)
        read, rows = {}, {}  # (position, modality) -> array; -> (block, row, record signature)
        manager = self.manager or get_plugin_manager()
        for key, members in fast.items():
            block, ok = self.manifest.npy_rows([rel for _, rel in members], manager)
            signature = None if block is None else (("data", (block.shape[1:], block.dtype.str)),)
            for j, (pos, _) in enumerate(members):
                if ok[j]:
                    read[pos, key] = block[j]
                    rows[pos, key] = (block, j, signature)
                else:
                    plain[pos] = False
        return [_Pending(item[2].id, item[0], item[2], {key: {"data": read[pos, key]} for key in item[2].modalities},
                         None, [], {key: rows[pos, key] for key in item[2].modalities})
                if plain[pos] else self._item(item, read, pos) for pos, item in enumerate(items)]

    def _item(self, item: tuple, read: dict, pos: int) -> "_Pending":
        shard, row, sample = item
        records, problems = {}, []
        manager = self.manager or get_plugin_manager()
        for key in sample.modalities:
            if key not in self.modalities:  # known but not encoded here: fine; unknown: a problem
                if not manager.has_modality(key):
                    problems.append((key, f"no modality named {key!r} is installed"))
                continue
            try:
                records[key] = self.manifest.record(sample, key, manager, npy=read.get((pos, key)))
            except SampleError as err:
                problems.append((err.key or key, err.reason))
        return _Pending(sample.id, shard, sample, records, None, problems)


class _Chunks(Dataset):
    """Item j: chunk j (``size`` consecutive items) of a `_SampleReader`."""

    def __init__(self, reader: _SampleReader, size: int):
        self.reader, self.size = reader, size

    def __len__(self) -> int:
        return -(-len(self.reader) // self.size)

    def __getitem__(self, j: int) -> list["_Pending"]:
        return self.reader.chunk(j * self.size, min((j + 1) * self.size, len(self.reader)))


def _read_in_order(reader: _SampleReader, workers: int, chunk: int = 64):
    """Yield the reader's items in order, as lists of ``chunk`` consecutive items (read by
    DataLoader workers when there are any)."""
    chunks = _Chunks(reader, chunk)
    if workers == 0:
        yield from (chunks[j] for j in range(len(chunks)))
        return
    # as it comes (the default would convert arrays to tensors and tuples to lists)
    for j, items in enumerate(DataLoader(chunks, batch_size=None, num_workers=workers, collate_fn=_as_read)):
        for p, (_, _, sample) in zip(items, reader.items[j * chunk:(j + 1) * chunk]):
            p.sample = sample
        yield items


def _as_read(chunk):
    return chunk


def _signature(m: Modality) -> tuple:
    """Samples with the same signature can be collated into one batch: same per-sample shapes
    and dtypes (an int or bool sample where floats are expected is then checked on its own, as
    `mmtok validate` checks it, instead of being promoted to float by concatenation)."""
    parts = []
    for f in dataclasses.fields(m):
        v = getattr(m, f.name)
        parts.append((f.name, (tuple(v.shape[1:]), v.dtype) if isinstance(v, torch.Tensor) else repr(v)))
    return tuple(parts)


def _stream_info(key: str, registry: Registry, codec) -> dict:
    entry = registry.streams[key]
    return {"modality": entry.modality, "codec": codec.name, "fingerprint": codec.fingerprint(),
            "checkpoint": entry.checkpoint, "vocab_size": codec.vocab_size, "grid": list(codec.grid),
            "num_tokens": codec.num_tokens}


def encode_manifest(manifest_path: str | Path, out: str | Path, *, registry_path: str | Path | None = None,
                    batch_size: int = 64, workers: int = 0, on_error: str = "fail",
                    resume: bool = False, overwrite: bool = False, shard_size: int = 1024,
                    streams: list[str] | None = None, allow_absolute: bool = False, progress: bool = True,
                    manager: PluginManager | None = None, device: str | torch.device | None = None) -> EncodeSummary:
    """Encode every sample of the manifest into token shards under ``out``, with the modalities,
    codecs and readers of ``manager`` (default: the installed plugins).

    ``out`` is locked for the run (`OutputLock`: a second writer gets an error naming the
    first). A folder that already holds a run is refused unless ``resume`` (finish it: every
    finished shard is re-verified, damaged ones are re-encoded) or ``overwrite`` (start afresh).
    ``registry_path`` None: `mmtok.registry.find_registry` (next to the manifest, else ./registry.yaml).
    """
    with contextlib.ExitStack() as held:  # rank 0 holds the output lock in it until the end
        return _encode_manifest(manifest_path, out, registry_path=registry_path, batch_size=batch_size,
                                workers=workers, on_error=on_error, resume=resume, overwrite=overwrite,
                                shard_size=shard_size, streams=streams, allow_absolute=allow_absolute,
                                progress=progress, manager=manager, device=device, held=held)


def _encode_manifest(manifest_path, out, *, registry_path, batch_size, workers, on_error, resume,
                     overwrite, shard_size, streams, allow_absolute, progress, manager, device,
                     held: contextlib.ExitStack) -> EncodeSummary:
    if on_error not in ("fail", "skip"):
        raise EncodeError(f"--on-error must be 'fail' or 'skip', found {on_error!r}")
    if batch_size < 1 or shard_size < 1:
        raise EncodeError("--batch-size and --shard-size must be >= 1")
    # Encoding allocates many small objects per sample, which triggers full garbage collections;
    # each traverses the whole heap (~0.25 s with torch and the plugins loaded: 0.5 s of a 3.2 s
    # run over 8,000 samples). `gc.freeze` keeps what exists before encoding (torch, the plugins,
    # then the manifest's entries and the codecs) out of them; unfrozen at the end, unless the
    # caller had frozen the heap itself.
    freeze = not gc.get_freeze_count()
    if freeze:
        gc.freeze()
        held.callback(gc.unfreeze)
    # What encoding allocates is freed by reference counting (no cycles per sample), so automatic
    # collections only cost time: ~20 us per sample while the manifest's entries are parsed and
    # the shards filled. They are off for the run; each shard ends with a young-generation
    # collection, so whatever cycles a shard does leave are reclaimed.
    if gc.isenabled():
        gc.disable()
        held.callback(gc.enable)
    manager = manager or get_plugin_manager()
    dist = init_distributed()
    rank, world = dist.rank, dist.world
    device = torch.device(device or "cpu")
    if device.type == "cuda" and device.index is None:  # under torchrun: this rank's GPU
        device = torch.device("cuda", dist.local_rank)
    out = Path(out)
    manifest = Manifest.load(manifest_path, allow_absolute=allow_absolute)
    if registry_path is None:
        registry_path = find_registry(manifest=manifest_path).path
    registry = Registry.load(registry_path)
    keys = streams or list(registry.streams)
    unknown = [k for k in keys if k not in registry.streams]
    if unknown:
        raise EncodeError(f"unknown stream(s) {unknown}; {registry_path} declares {sorted(registry.streams)}")
    problems = [p for p in registry.check(manager)
                if p.where.startswith("streams.") and p.where.split(".")[1] in keys]
    if problems:
        raise EncodeError("\n".join(f"{registry_path}: {p}" for p in problems))
    codecs = {}
    for key in keys:
        if not registry.streams[key].checkpoint:
            raise EncodeError(f"{registry_path}: stream {key!r} has no checkpoint; an unfitted codec "
                              f"would emit meaningless tokens. Run `mmtok fit-codec {manifest_path} "
                              f"--stream {key} --out DIR` and set `checkpoint: DIR`")
        codecs[key] = registry.codec(key, manager).eval().to(device)
    info = {k: _stream_info(k, registry, c) for k, c in codecs.items()}
    if freeze:
        gc.freeze()  # the manifest's entries and the codecs too
    by_modality = collections.defaultdict(list)
    for key in keys:
        by_modality[info[key]["modality"]].append(key)

    # samples that fail the schema or repeat an id are problems before any loading
    upfront: dict[str, list[ManifestProblem]] = collections.defaultdict(list)
    for p in manifest.problems:
        upfront[p.sample].append(p)
    repeats = collections.Counter(s.id for s in manifest.samples)
    rows = []
    for sample in manifest.samples:  # a repeated id is ambiguous: none of its samples is encoded
        if repeats[sample.id] > 1:
            if not upfront[sample.id]:
                upfront[sample.id].append(ManifestProblem(
                    sample.id, "id", f"duplicate id ({repeats[sample.id]} samples share it)"))
            continue
        rows.append(sample)
    if upfront and on_error == "fail":
        raise EncodeError(str(next(iter(upfront.values()))[0]))

    run = {"manifest_sha256": hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest(),
           "streams": info, "shard_size": shard_size, "batch_size": batch_size, "on_error": on_error}
    shard_dir = out / "shards"
    refused = None
    if rank == 0:  # lock and prepare ``out``; under torchrun every rank learns whether that worked
        try:
            held.enter_context(OutputLock(out, "encode"))
            _prepare_out(out, run, resume=resume, overwrite=overwrite)
        except MmtokError as err:
            refused = err
    if not dist.all_ok(refused is None):
        raise refused or EncodeError(f"rank 0 could not prepare {out} (its message says why); nothing was written")

    shards = [list(enumerate(rows[i:i + shard_size], start=i)) for i in range(0, len(rows), shard_size)]
    mine = [i for i in range(len(shards)) if i % world == rank]
    todo = [i for i in mine if not _finished(shard_dir, i)]
    start = time.perf_counter()  # encoding itself: after imports, registry checks, codec loading
    bar = tqdm(total=sum(len(shards[i]) for i in todo), unit="sample", disable=not progress or rank != 0,
               desc="encode")
    # one loader over all of this rank's unfinished shards (workers start once); samples arrive
    # in order, so a shard is complete when the next one begins
    items = [(i, row, sample) for i in todo for row, sample in shards[i]]
    reader = _SampleReader(manifest, items, set(by_modality), manager)
    # cross-sample checks need each sample's modalities built one by one; everything else is
    # built a batch at a time from the reader records (`Modality.from_records`)
    checked = {m for spec in manager.sample_checks() for m in spec.modalities}
    build = _Builder(manifest, manager)
    writer = held.enter_context(_ShardWriter(shard_dir, background=_ShardWriter.spare_core(device)))
    current, pending = None, []
    for chunk in _read_in_order(reader, workers):
        bar.update(len(chunk))
        if chunk[0].shard == chunk[-1].shard == current and all(
                not p.problems and checked.isdisjoint(p.records) for p in chunk):
            pending.extend(chunk)  # the usual case: nothing to check or report one by one
            continue
        for p in chunk:
            if not p.problems and not checked.isdisjoint(p.records):
                p.loaded = build.one(p.sample, p.records, p.problems)
                if not p.problems:
                    p.problems.extend(manifest.check_sample(p.id, p.loaded, manager))
            if p.problems and on_error == "fail":
                key, reason = p.problems[0]
                raise EncodeError(str(ManifestProblem(p.id, key, reason)))
            if current is not None and p.shard != current:
                _encode_shard(current, pending, codecs, by_modality, writer, batch_size, on_error, build, device)
                pending = []
            current = p.shard
            pending.append(p)
    if current is not None:
        _encode_shard(current, pending, codecs, by_modality, writer, batch_size, on_error, build, device)
    writer.close()  # every shard of this rank is on disk (or its write failed: raised here)
    bar.close()
    dist.barrier()
    summary = None
    if rank == 0:
        summary = _merge(out, manifest_path, registry_path, len(shards), info, upfront, start, writer.sidecars)
    dist.barrier()
    if summary is not None and not any(s["samples"] for s in summary.streams.values()):
        raise EncodeError(_nothing_encoded(summary, by_modality))
    return summary


def _nothing_encoded(summary: EncodeSummary, by_modality: dict[str, list[str]]) -> str:
    """Why a finished run holds no tokens at all, in one line."""
    problems = [ManifestProblem(s["id"], p["key"], p["reason"]) for s in summary.skipped for p in s["problems"]]
    if not problems:
        return (f"nothing was encoded: none of the {summary.samples} sample(s) has a modality of the "
                f"stream(s) {sorted(summary.streams)} ({', '.join(sorted(by_modality))})")
    lines = summarize(problems)
    others = f" (and {len(lines) - 1} other problem(s))" if len(lines) > 1 else ""
    what = (f"all {len(summary.skipped)} sample(s) were skipped" if not summary.samples else
            f"{len(summary.skipped)} sample(s) were skipped and the other {summary.samples} have none of the streams")
    return f"nothing was encoded: {what}: {lines[0]}{others}; {summary.out / INDEX} lists every skipped sample"


def _prepare_out(out: Path, run: dict, *, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready for ``run`` (its output lock is held): new, resumed or overwritten."""
    if resume and overwrite:
        raise EncodeError("--resume and --overwrite exclude each other")
    ours = [out / "run.json", out / INDEX, out / "shards"]
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            if not any(p.exists() for p in ours):
                raise EncodeError(f"{out} is not an `mmtok encode` output (no run.json, index.json or shards/); "
                                  "--overwrite only replaces encode runs. Choose another --out")
            for p in ours:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        elif (out / "run.json").exists():
            if not resume:
                raise EncodeError(f"{out} already holds an encode run; pass --resume to finish it, "
                                  "--overwrite to replace it, or choose another --out")
            if read_json(out / "run.json") != run:
                raise EncodeError(f"{out} holds a run with another manifest, registry or settings; cannot "
                                  "resume it (--overwrite replaces it)")
        elif any(p.exists() for p in ours):
            raise EncodeError(f"{out} holds shards or an index but no run.json; pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    for stale in [*out.glob(".*.tmp"), *(out / "shards").glob(".*.tmp")]:  # left by a killed run
        stale.unlink()
    write_json(out / "run.json", run)


def _finished(shard_dir: Path, i: int) -> bool:
    """Whether shard ``i`` is done and intact. A sidecar marks it done; before trusting it the
    shard is re-verified (sidecar complete, header valid, sha256 of the file); a damaged one is
    removed, reported and re-encoded."""
    if not (shard_dir / f"{shard_name(i)}.json").exists():
        return False
    problem = check_shard(shard_dir, i)
    if problem is None:
        return True
    warn(f"{problem}; re-encoding shard {i}")
    for suffix in (".json", ".safetensors"):
        (shard_dir / f"{shard_name(i)}{suffix}").unlink(missing_ok=True)
    return False


@dataclasses.dataclass(slots=True)
class _Pending:
    """One sample of a shard being encoded: its reader records, its modalities when they had to be
    built one by one (a cross-sample check uses them), and its problems so far."""

    id: str
    shard: int
    sample: SampleEntry
    records: dict
    loaded: dict | None
    problems: list
    rows: dict | None = None  # {modality: (block, row, record signature)}: see `_SampleReader`

    def __reduce__(self):
        # sent from a DataLoader worker without its manifest entry (pickling pydantic models costs
        # more than the read: `_read_in_order` puts the main process's entry back), and a sample
        # read into a block without its records, which are rows of that block (the block is then
        # sent once per chunk, not once more row by row)
        return _unpickled, (self.id, self.shard, None if self.rows else self.records, self.loaded, self.problems,
                            self.rows)


def _unpickled(sid, shard, records, loaded, problems, rows) -> _Pending:
    if records is None:
        records = {key: {"data": block[j]} for key, (block, j, _) in rows.items()}
    return _Pending(sid, shard, None, records, loaded, problems, rows)


class _Builder:
    """Modalities from reader records, one sample at a time (errors name the sample and, for a
    table row, the table) or a batch at a time."""

    def __init__(self, manifest: Manifest, manager: PluginManager):
        self.manifest, self.manager = manifest, manager

    def one(self, sample: SampleEntry, records: dict, problems: list) -> dict[str, Modality]:
        """``{modality: batch of one}``, checks deferred to the batch; failures go to ``problems``."""
        loaded = {}
        with deferred_checks():
            for key, record in records.items():
                try:
                    loaded[key] = self.manifest.build(sample.id, key, record, self.manager, sample=sample)
                except SampleError as err:
                    problems.append((err.key or key, err.reason))
        return loaded

    def batch(self, modality: str, members: list[tuple[int, _Pending]]) -> tuple[Modality | None, dict]:
        """(batch, {position: (modality, reason)}): one `Modality.from_records` call (or, for
        consecutive rows of one block, the block's slice: what that call gives, without stacking
        the rows again); when it fails, each sample is built and checked alone to name the culprits."""
        try:
            cls = self.manager.modality(modality)
            first, last = members[0][1].rows, members[-1][1].rows
            if first and last and cls._batches_records():
                block, start, _ = first[modality]
                if last[modality][0] is block and last[modality][1] - start == len(members) - 1 and all(
                        p.rows and p.rows[modality][0] is block for _, p in members):
                    batch = cls._from_stacked({"data": block[start:start + len(members)]})
                    if batch is not None:
                        return batch, {}
            return cls.from_records([p.records[modality] for _, p in members],
                                    sample_ids=[p.id for _, p in members]), {}
        except MmtokError:
            pass
        bad, built = {}, []
        for pos, p in members:
            problems: list = []
            m = self.one(p.sample, {modality: p.records[modality]}, problems)
            if problems:
                bad[pos] = problems[0]
            else:
                built.append((pos, m[modality]))
        return _collate(modality, built, bad)


def _collate(modality: str, members: list[tuple[int, Modality]], bad: dict) -> tuple[Modality | None, dict]:
    """Collate built samples (which runs their deferred checks once); when that fails, check each
    to name the culprits. Returns (batch or None, bad)."""
    if members and not bad:
        try:
            return type(members[0][1]).collate([m for _, m in members]), bad
        except MmtokError:
            pass
    for pos, m in members:
        try:
            m.check()
        except MmtokError as err:
            bad.setdefault(pos, (modality, str(err)))
    return None, bad


def _record_signature(record: dict) -> tuple:
    """Records with the same signature can make one batch: same keys, shapes and dtypes."""
    return tuple([(k, (v.shape, v.dtype.str) if isinstance(v, np.ndarray) else repr(v)) for k, v in record.items()])


def _check_batches(pending: list[_Pending], by_modality: dict[str, list[str]], batch_size: int,
                   build: _Builder) -> tuple[dict[str, list[tuple[list[int], Modality]]], dict[int, tuple]]:
    """Bucket each modality by shape and build batches of ``batch_size``: from the reader records
    in one call (`Modality.from_records`), or by collating the samples that had to be built one by
    one. Either way the modality checks run once per batch; a batch that fails is checked sample
    by sample to name the culprits.

    Returns ({modality: [(positions, batch)]}, {position: (modality, reason)} of failed samples).
    """
    batches: dict[str, list[tuple[list[int], Modality]]] = {}
    bad: dict[int, tuple[str, str]] = {}
    for modality in by_modality:
        buckets = collections.defaultdict(list)  # signature -> [(position in shard, pending)]
        for pos, p in enumerate(pending):
            if p.loaded is not None:
                if modality in p.loaded:
                    buckets[("built", _signature(p.loaded[modality]))].append((pos, p))
            elif modality in p.records:
                signature = p.rows[modality][2] if p.rows else _record_signature(p.records[modality])
                buckets[("records", signature)].append((pos, p))
        batches[modality] = []
        for (kind, _), members in buckets.items():
            for b in range(0, len(members), batch_size):
                chunk = members[b:b + batch_size]
                if kind == "records":
                    batch, failed = build.batch(modality, chunk)
                else:
                    batch, failed = _collate(modality, [(pos, p.loaded[modality]) for pos, p in chunk], {})
                for pos, reason in failed.items():
                    bad.setdefault(pos, reason)
                batches[modality].append(([pos for pos, _ in chunk], batch))
    return batches, bad


class _ShardWriter:
    """Writes finished shards on one background thread, so that the next shard's reading and
    encoding overlap them. Where a core is free for it (the codec on a GPU, or more cores than
    torch's threads) the thread serialises and hashes too; where torch's threads already take
    every core, serialising there only preempts them (measured on 2 cores: 295 vs 226 us per
    sample), so shards are serialised in line and the thread only writes the bytes, fsyncs and
    renames (`atomic_write`), which waits on the disk rather than a core. At most one shard waits
    (memory stays bounded); a failed write is raised at the next `submit` or at `close`."""

    def __init__(self, directory: Path, background: bool):
        self.directory, self.background = directory, background
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmtok-shards")
        self._pending: tuple[int, concurrent.futures.Future] | None = None
        self.sidecars: dict[int, dict] = {}  # shard -> its sidecar as written (the merge needs no re-read)

    @staticmethod
    def spare_core(device: torch.device) -> bool:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return device.type != "cpu" or cores > torch.get_num_threads()

    def submit(self, index: int, streams: dict, sidecar: dict) -> None:
        self._wait()
        if self.background:
            self._pending = (index, self._pool.submit(write_shard, self.directory, index, streams, sidecar))
            return
        files, sidecar = shard_files(self.directory, index, streams, sidecar)
        self._pending = (index, self._pool.submit(_written, files, sidecar))

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.sidecars[pending[0]] = pending[1].result()

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self.__exit__()

    def __enter__(self) -> "_ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)  # an error elsewhere: let a started write finish, raise that error


def _written(files: list, sidecar: dict) -> dict:
    write_files(files)
    return sidecar


def _encode_shard(index: int, items: list[_Pending], codecs: dict, by_modality: dict[str, list[str]],
                  writer: _ShardWriter, batch_size: int, on_error: str, build: _Builder, device: torch.device) -> None:
    """Check and encode the loaded samples of one shard, stream by stream, and write it. With
    ``on_error="skip"`` a sample that fails its modality checks or that a codec refuses is
    skipped with the reason and the others are encoded without it."""
    candidates = [p for p in items if not p.problems]
    failed: dict[str, list[tuple[str, str]]] = {}
    while True:  # each round drops at least one failed sample, or ends
        batches, bad = _check_batches(candidates, by_modality, batch_size, build)
        if not bad:
            try:
                streams, present_streams = _encode_streams(candidates, batches, codecs, by_modality, device)
                break
            except _Refused as err:
                bad = err.bad
        if on_error == "fail":
            pos = min(bad)
            raise EncodeError(str(ManifestProblem(candidates[pos].id, *bad[pos])))
        failed.update({candidates[pos].id: [problem] for pos, problem in bad.items()})
        candidates = [c for pos, c in enumerate(candidates) if pos not in bad]
    skipped = [{"id": p.id, "problems": [{"key": k, "reason": r} for k, r in p.problems or failed.get(p.id, [])]}
               for p in items if p.problems or p.id in failed]
    sidecar = {"shard": index, "samples": [{"id": p.id, "row": r, "streams": sorted(s)}
                                           for r, (p, s) in enumerate(zip(candidates, present_streams))],
               "skipped": skipped}
    writer.submit(index, streams, sidecar)
    gc.collect(1)  # automatic collection is off during encode (see `_encode_manifest`)


class _Refused(Exception):
    """A codec refused samples: ``bad`` is {position: (modality, reason)}."""

    def __init__(self, bad: dict[int, tuple[str, str]]):
        super().__init__(bad)
        self.bad = bad


def _encode_streams(candidates: list[_Pending], batches: dict, codecs: dict,
                    by_modality: dict[str, list[str]], device: torch.device) -> tuple[dict[str, TokenStream], list[list[str]]]:
    """Encode checked batches with every stream's codec: ({key: TokenStream}, streams per
    sample). Raises `_Refused` naming the samples a codec refuses."""
    n = len(candidates)
    streams: dict[str, TokenStream] = {}
    present_streams: list[list[str]] = [[] for _ in range(n)]
    for modality, keys in by_modality.items():
        for key in keys:
            codec = codecs[key]
            present = torch.zeros(n, dtype=torch.bool)
            tokens = None
            for positions, batch in batches[modality]:
                try:
                    with torch.inference_mode():
                        stream = codec.encode(_on(batch, device))
                except MmtokError as err:
                    raise _Refused(_culprits(key, codec, modality, positions, batch, candidates, err, device)) from None
                if tokens is None:
                    tokens = torch.zeros((n, *stream.tokens.shape[1:]), dtype=stream.tokens.dtype)
                first, last = positions[0], positions[-1]
                # a bucket's positions are ascending: usually one run of rows (a slice: 8x cheaper)
                pos = slice(first, last + 1) if last - first + 1 == len(positions) else torch.tensor(positions)
                tokens[pos] = stream.tokens.cpu()
                present[pos] = True
                for p in positions:
                    present_streams[p].append(key)
            if tokens is None:  # nobody in this shard has the stream
                shape = (n, codec.num_tokens) if codec.is_discrete else (n, codec.num_tokens, codec.token_dim)
                tokens = torch.zeros(shape, dtype=torch.long if codec.is_discrete else torch.float32)
            streams[key] = (TokenStream(grid=codec.grid, present=present, ids=tokens, vocab_size=codec.vocab_size)
                            if codec.is_discrete else
                            TokenStream(grid=codec.grid, present=present, values=tokens.float()))
    return streams, present_streams


def _on(batch: Modality, device: torch.device) -> Modality:
    """``batch`` on ``device``; as it is on the CPU (`Modality.to` would check it once more)."""
    return batch if device.type == "cpu" else batch.to(device)


def _culprits(key: str, codec, modality: str, positions: list[int], batch: Modality,
              candidates: list[_Pending], err: MmtokError, device: torch.device) -> dict[int, tuple[str, str]]:
    """The samples of a batch that ``codec`` refused, found by encoding them one at a time:
    {position: (modality, reason)}. A batch refused as a whole but no sample alone is an error
    of the codec, not of a sample: `EncodeError`."""
    bad = {}
    for i, pos in enumerate(positions):
        try:
            with torch.inference_mode():
                codec.encode(_on(batch[i], device))
        except MmtokError as alone:
            bad[pos] = (modality, f"stream {key!r}: {alone}")
    if not bad:
        ids = [candidates[p].id for p in positions]
        raise EncodeError(f"stream {key!r}: codec {codec.name!r} refused the batch of samples {ids[:5]}"
                          f"{' ...' if len(ids) > 5 else ''} but accepts each of them alone: {err}")
    return bad


def _merge(out: Path, manifest_path, registry_path, n_shards: int, info: dict, upfront: dict,
           start: float, written: dict[int, dict]) -> EncodeSummary:
    """Write index.json from the shards' sidecars (their statistics: no shard is reopened): those
    this process ``written`` as they were written, the others (resumed, other ranks') read back."""
    samples, skipped = [], [
        {"id": sid, "problems": [{"key": p.key, "reason": p.reason} for p in ps]}
        for sid, ps in upfront.items()]
    sidecars = [written.pop(i, None) or read_json(out / "shards" / f"{shard_name(i)}.json") for i in range(n_shards)]
    for i, side in enumerate(sidecars):
        skipped += side["skipped"]
        for s in side["samples"]:  # {id, row, streams} + shard (the index is written key-sorted)
            s["shard"] = i
        samples += side["samples"]
    stream_stats = merge_statistics(sidecars, info)
    index = {"version": 1, "manifest": str(Path(manifest_path).name),
             "manifest_path": os.path.relpath(Path(manifest_path).resolve(), out.resolve()),  # for evaluate
             "registry": os.path.relpath(Path(registry_path).resolve(), out.resolve()),  # moves with the folder
             "streams": info,
             "shards": [f"shards/{shard_name(i)}.safetensors" for i in range(n_shards)],
             "samples": samples, "skipped": skipped, "counts": stream_stats}
    write_json(out / INDEX, index)
    return EncodeSummary(out=out, samples=len(samples), skipped=skipped, streams=stream_stats,
                         seconds=time.perf_counter() - start)
