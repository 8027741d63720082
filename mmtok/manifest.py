"""`manifest.json`: which samples exist and where each of their modalities lives.

```json
{
  "version": 1,
  "tables": {"patients": {"path": "tables/patients.csv", "key": "patient_id"}},
  "samples": [
    {"id": "p001",
     "modalities": {
       "patient_demographics": {"table": "patients", "row": "p001"},
       "hsc_image": "cutouts/p001.fits",
       "time_series": {"path": "series/p001.npz", "fields": {"values": "ecg"}},
       "ct_volume": {"path": "dicom/p001", "reader": "dicom"}},
     "metadata": {"site": "A"}}
  ]
}
```

A sample has an ``id`` and any subset of modality entries, keyed by modality name. An entry is
a file path (string shorthand or ``{"path": ...}``, read by the plugin reader for its suffix,
with an optional ``fields`` map from modality field to reader key; ``reader`` names the reader
instead, which folder readers such as a DICOM series need; ``options`` are keyword arguments
of the reader, e.g. ``{"frame": 7}`` of a cine DICOM or ``{"slice": 12}`` of a volume read as 2D
images; a reader refuses options it does not take), or a row of a table declared
once under ``tables`` (``row`` is the value of the table's ``key`` column, or a 0-based index
when the table has no key). Paths are relative to the manifest's folder and may not leave it;
absolute paths are refused unless explicitly allowed.

Problems are collected, never raised one by one: `Manifest.validate` returns every problem as a
`ManifestProblem` naming the sample, the key and the reason; `summarize` words them for people,
one line per distinct problem (one that many samples share is one line with their count).
Data files must be regular files (a FIFO or a device is refused, never read: `mmtok encode`
opens plain `.npy` files non-blocking and checks the open file's kind); arrays of
every reader arrive in the machine's byte order.
"""

import contextlib
import dataclasses
import gc
import inspect
import json
import os
import stat
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from mmtok.config import StrictModel
from mmtok.errors import MmtokError
from mmtok.modality import Modality
from mmtok.plugins import PluginManager, get_plugin_manager
from mmtok.readers import npy_from_fd, read_npy, read_npy_rows

__all__ = ["Manifest", "ManifestError", "ManifestProblem", "SampleError", "ModalityEntry",
           "SampleEntry", "TableEntry", "summarize"]


class ManifestError(MmtokError, ValueError):
    """The manifest as a whole cannot be used (unreadable, invalid JSON, broken top level)."""


class SampleError(MmtokError, ValueError):
    """One modality of one sample cannot be loaded."""

    def __init__(self, sample: str | None, key: str | None, reason: str):
        self.sample, self.key, self.reason = sample, key, reason
        super().__init__(str(ManifestProblem(sample, key, reason)))


@dataclasses.dataclass(frozen=True)
class ManifestProblem:
    sample: str | None  # sample id (or "#index" when it has none)
    key: str | None  # modality key, "id", "tables.<name>" ...
    reason: str

    def __str__(self) -> str:
        where = ", ".join(p for p in (f"sample {self.sample!r}" if self.sample else None,
                                      self.key) if p)
        return f"{where}: {self.reason}" if where else self.reason


def summarize(problems: Iterable[ManifestProblem]) -> list[str]:
    """One line per distinct problem, in first-seen order. A problem that several samples share
    word for word (a column missing from a table, a modality two plugins provide, one wrong shape
    throughout) is one line with their count and the first few ids, not one line per sample."""
    groups: dict[tuple, list] = {}
    for p in problems:
        samples = groups.setdefault((p.key, p.reason), [])
        if p.sample not in samples:
            samples.append(p.sample)
    lines = []
    for (key, reason), samples in groups.items():
        named = [s for s in samples if s is not None]
        if len(named) <= 1:
            lines.append(str(ManifestProblem(named[0] if named else None, key, reason)))
            continue
        shown = ", ".join(repr(s) for s in named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        lines.append(", ".join(p for p in (f"{len(named)} samples ({shown})", key) if p) + f": {reason}")
    return lines


@contextlib.contextmanager
def _gc_paused():
    """No automatic garbage collection inside (parsing allocates only acyclic objects)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_NPY_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _not_regular(st: os.stat_result) -> str | None:
    """What a file that is not a regular file is ("a FIFO", ...), None for a regular file."""
    mode = st.st_mode
    for test, what in ((stat.S_ISREG, None), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "a special file"


def _native(record: dict) -> dict:
    """The record with arrays in the machine's byte order: big-endian data (a ``>f4`` .npy, FITS)
    is valid, but torch cannot take it. Every reader's output passes here, so no reader has to."""
    for name, value in record.items():
        if isinstance(value, np.ndarray) and not value.dtype.isnative:
            record = {**record, name: value.astype(value.dtype.newbyteorder("="))}
    return record


def _reader_options(read) -> list[str]:
    """Keyword options a reader function accepts (its parameters after the path)."""
    params = list(inspect.signature(read).parameters.values())[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _unknown_options(read, options: dict) -> list[str] | None:
    params = list(inspect.signature(read).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    unknown = sorted(set(options) - set(_reader_options(read)))
    return unknown or None


class TableEntry(StrictModel):
    path: str
    key: str | None = Field(None, description="column whose values identify rows")


class ModalityEntry(StrictModel):
    path: str | None = None
    fields: dict[str, str] = Field(default_factory=dict, description="modality field -> reader key")
    table: str | None = None
    row: int | str | None = None
    reader: str | None = Field(None, description="reader name; default: the reader for the suffix")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the reader "
                                    "(a frame of a cine DICOM, a slice of a volume, a slide region)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.table is None):
            raise ValueError("give exactly one of 'path' or 'table'")
        if self.table is not None and self.row is None:
            raise ValueError("a table entry needs 'row'")
        if self.table is None and self.row is not None:
            raise ValueError("'row' only applies to table entries")
        if self.table is not None and self.reader is not None:
            raise ValueError("'reader' only applies to path entries")
        if self.table is not None and self.options:
            raise ValueError("'options' only applies to path entries")
        return self


class SampleEntry(StrictModel):
    id: str = Field(min_length=1)
    modalities: dict[str, ModalityEntry] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


_SAMPLES = TypeAdapter(list[SampleEntry])


class _TopLevel(StrictModel):
    version: int = 1
    tables: dict[str, TableEntry] = Field(default_factory=dict)
    samples: list[Any] = Field(min_length=1)


def _pydantic_reason(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        out.append((loc, e["msg"]))
    return out


class Manifest:
    """A parsed manifest. ``samples`` holds the entries that passed the schema; the others are in
    ``problems``. Load modalities with `load_modality`, check everything with `validate`."""

    def __init__(self, path: Path, top: _TopLevel, samples: list[SampleEntry],
                 problems: list[ManifestProblem], *, allow_absolute: bool = False):
        self.path = path
        self.root = path.parent.resolve()
        self.tables = top.tables
        self.samples = samples
        self.problems = problems
        self.allow_absolute = allow_absolute
        self._table_cache: dict[str, tuple[dict, dict | None]] = {}
        self._dirs: dict[str, tuple[str, bool]] = {}  # folder as written -> (resolved, inside root)
        self._npy_tails: dict[tuple, bool] = {}  # (manager, ".npy") -> read by read_npy

    # ------------------------------------------------------------------ parsing
    @classmethod
    def load(cls, path: str | os.PathLike, *, allow_absolute: bool = False) -> "Manifest":
        path = Path(path)
        try:
            kind = _not_regular(os.stat(path))
            text = None if kind else path.read_text(encoding="utf-8")
        except OSError as err:
            raise ManifestError(f"{path}: cannot read manifest ({err.strerror})") from None
        except ValueError as err:  # a NUL byte in the path, or bytes that are not UTF-8
            raise ManifestError(f"{str(path)!r}: cannot read manifest ({err})") from None
        if kind:  # reading a FIFO or a device could block forever
            raise ManifestError(f"{path}: not a regular file ({kind}); give the manifest's JSON file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: "
                                f"{err.msg}") from None
        except RecursionError:
            raise ManifestError(f"{path}: JSON nested too deeply to parse (over {sys.getrecursionlimit()} "
                                "levels); a manifest needs only a few") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: expected a JSON object with 'samples', found {type(data).__name__}")
        try:
            top = _TopLevel.model_validate(data)
        except ValidationError as err:
            lines = [f"{path}: {loc}: {msg}" for loc, msg in _pydantic_reason(err)]
            raise ManifestError("\n".join(lines)) from None
        except RecursionError:
            raise ManifestError(f"{path}: JSON nested too deeply to check; a manifest needs only a few "
                                "levels") from None
        with _gc_paused():  # a collection mid-parse re-walks every entry parsed so far (3-4x slower)
            samples, problems = cls._entries(top.samples)
        return cls(path, top, samples, problems, allow_absolute=allow_absolute)

    @staticmethod
    def _entries(raws: list) -> tuple[list["SampleEntry"], list[ManifestProblem]]:
        try:  # every sample valid (the usual case): one call, a fifth faster than one per sample
            return _SAMPLES.validate_python(raws), []
        except ValidationError:
            pass  # name each problem: sample by sample
        samples, problems = [], []
        for i, raw in enumerate(raws):
            sid = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
            label = sid or f"#{i}"
            if isinstance(raw, dict) and raw.get("modalities") in ({}, [], None) and "modalities" in raw:
                problems.append(ManifestProblem(label, "modalities", "the sample has no modalities; give at "
                                                "least one entry {\"<modality name>\": <file or table row>}, "
                                                "or leave the sample out"))
                continue
            try:
                samples.append(SampleEntry.model_validate(raw))
            except ValidationError as err:
                for loc, msg in _pydantic_reason(err):
                    key = loc.removeprefix("modalities.") if loc else None
                    problems.append(ManifestProblem(label, key or None, msg))
        return samples, problems

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    # ------------------------------------------------------------------ paths and tables
    def resolve(self, rel: str, *, sample: str | None, key: str | None, directory: bool = False) -> Path:
        """Path of ``rel`` under the manifest's folder; never outside it. A regular file, or a
        folder when ``directory`` (for readers of multi-file formats such as a DICOM series)."""
        if "\x00" in rel:
            raise SampleError(sample, key, f"path {rel!r} contains a NUL byte")
        absolute = os.path.isabs(rel)
        if absolute and not self.allow_absolute:
            raise SampleError(sample, key, f"absolute path {rel!r} not allowed (paths are relative "
                              "to the manifest's folder; pass --allow-absolute to permit them)")
        # folders are resolved (symlinks, "..") and checked once, then cached; the file itself is
        # resolved only when it is a symlink, so the containment check stays exact at a fraction
        # of the cost (plain string operations: pathlib costs more than the read on small files)
        head, name = os.path.split(rel)
        parent, inside = self._folder(head, absolute)
        full = os.path.join(parent, name)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode) or name in ("..", ".", ""):
                full = os.path.realpath(full)
                inside = absolute or self._inside(full)
                st = os.stat(full)
        except OSError:
            st = None
        if not inside:
            raise SampleError(sample, key, f"path {rel!r} escapes the manifest's folder {self.root}")
        if directory:
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise SampleError(sample, key, f"folder not found: {rel}")
        elif st is None or not stat.S_ISREG(st.st_mode):
            if st is None:
                raise SampleError(sample, key, f"file not found: {rel}")
            if stat.S_ISDIR(st.st_mode):
                raise SampleError(sample, key, f"file is a folder; name its reader (\"reader\": ...): {rel}")
            raise SampleError(sample, key, f"not a regular file ({_not_regular(st)}): {rel}; mmtok reads "
                              "only regular files (reading a FIFO or a device could block forever)")
        return Path(full)

    def _folder(self, head: str, absolute: bool) -> tuple[str, bool]:
        """(resolved folder, inside the root) of a path's folder as written, resolved once."""
        cached = self._dirs.get(head)
        if cached is None:
            parent = os.path.realpath(head if absolute else os.path.join(self.root, head))
            cached = self._dirs[head] = (parent, absolute or self._inside(parent))
        return cached

    def _inside(self, path: str) -> bool:
        root = str(self.root)
        return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

    def _reader(self, rel: str, name: str | None, *, sample: str | None, key: str | None, manager):
        try:
            if name is None:
                return manager.reader_for(rel)
            if name not in manager.names("readers"):
                raise MmtokError(f"no reader named {name!r}; installed readers are {manager.names('readers')}")
            return manager.reader(name)
        except MmtokError as err:
            hint = ""
            if name is None and os.path.isdir(os.path.join(self.root, rel)):
                hint = "; it is a folder: name its reader (\"reader\": ...)"
            raise SampleError(sample, key, f"{err}{hint}") from None

    def _read(self, full: Path, rel: str, *, sample: str | None, key: str | None, manager,
              reader=None, options: dict | None = None) -> dict:
        reader = reader or self._reader(rel, None, sample=sample, key=key, manager=manager)
        if options:
            unknown = _unknown_options(reader.read, options)
            if unknown is not None:
                raise SampleError(sample, key, f"the {reader.name!r} reader takes no option(s) {unknown}"
                                  + (f"; its options are {_reader_options(reader.read)}"
                                     if _reader_options(reader.read) else "; it takes no options"))
        try:
            record = reader.read(full, **(options or {}))
        except Exception as err:  # noqa: BLE001 - any reader failure is this sample's problem
            msg = str(err).replace(str(full), rel)
            raise SampleError(sample, key, f"cannot read {rel} with the {reader.name!r} reader: "
                              f"{type(err).__name__}: {msg}") from None
        if not isinstance(record, dict):
            raise SampleError(sample, key, f"reader {reader.name!r} returned {type(record).__name__}")
        return _native(record)

    def table(self, name: str, manager) -> tuple[dict, dict | None]:
        """(columns, key value -> row index or None) of a declared table, read once."""
        if name not in self._table_cache:
            decl = self.tables[name]
            where = f"tables.{name}"
            full = self.resolve(decl.path, sample=None, key=where)
            columns = self._read(full, decl.path, sample=None, key=where, manager=manager)
            lookup = None
            if decl.key is not None:
                if decl.key not in columns:
                    raise SampleError(None, where, f"key column {decl.key!r} not in {decl.path}; "
                                      f"columns are {sorted(columns)}")
                keys = [str(v) for v in columns[decl.key]]
                dupes = sorted(k for k, n in Counter(keys).items() if n > 1)
                if dupes:
                    raise SampleError(None, where, f"key column {decl.key!r} repeats {dupes[:5]}")
                lookup = {k: i for i, k in enumerate(keys)}
                columns = {c: v for c, v in columns.items() if c != decl.key}
            self._table_cache[name] = (columns, lookup)
        return self._table_cache[name]

    # ------------------------------------------------------------------ loading
    def record(self, sample: SampleEntry, key: str, manager, *, npy: np.ndarray | None = None) -> dict:
        """What the reader gives for one entry, after the ``fields`` mapping. ``npy``: the entry's
        array when `npy_rows` has read it already."""
        entry = sample.modalities[key]
        if npy is not None:
            return self._mapped(sample, key, entry, {"data": npy})
        if entry.table is not None:
            if entry.table not in self.tables:
                raise SampleError(sample.id, key, f"unknown table {entry.table!r}; declared: "
                                  f"{sorted(self.tables) or 'none'}")
            columns, lookup = self.table(entry.table, manager)
            n = len(next(iter(columns.values()))) if columns else 0
            if lookup is not None:
                if str(entry.row) not in lookup:
                    raise SampleError(sample.id, key, f"row {entry.row!r} not found in table "
                                      f"{entry.table!r} (key column {self.tables[entry.table].key!r})")
                index = lookup[str(entry.row)]
            else:
                if not isinstance(entry.row, int) or not 0 <= entry.row < n:
                    raise SampleError(sample.id, key, f"row {entry.row!r} out of range for table "
                                      f"{entry.table!r} with {n} rows (0-based)")
                index = entry.row
            record = {c: v[index] for c, v in columns.items()}
        else:
            if entry.reader is None and not entry.options:
                data = self._npy_fast(entry.path, manager)
                if data is not None:
                    return self._mapped(sample, key, entry, {"data": data})
            reader = self._reader(entry.path, entry.reader, sample=sample.id, key=key, manager=manager)
            full = self.resolve(entry.path, sample=sample.id, key=key, directory=reader.directory)
            record = self._read(full, entry.path, sample=sample.id, key=key, manager=manager, reader=reader,
                                options=entry.options)
        return self._mapped(sample, key, entry, record)

    def _mapped(self, sample: SampleEntry, key: str, entry: "ModalityEntry", record: dict) -> dict:
        if entry.fields:
            missing = sorted(src for src in entry.fields.values() if src not in record)
            if missing:
                raise SampleError(sample.id, key, f"{entry.path or entry.table} has no {missing}; "
                                  f"it has {sorted(record)}")
            record = {field: record[src] for field, src in entry.fields.items()}
        return record

    def _npy_path(self, rel: str, manager) -> str | None:
        """The full path of a plain ``.npy`` entry that the fast readers may open directly: in a
        folder `resolve` has checked (inside the root), read by ``read_npy``, no NUL, ``..`` or
        absolute path. None: the general path reads it or says what is wrong. Plain string
        operations: per-sample work is what caps a light codec's speed in `mmtok encode`."""
        cut = rel.rfind(os.sep)
        cached = self._dirs.get(rel[:cut] if cut > 0 else ("" if cut < 0 else rel[:1]))
        if cached is None or not cached[1]:
            return None
        name = rel[cut + 1:]
        tail = name[name.find("."):].lower() if "." in name else ""
        npy = self._npy_tails.get((manager, tail))
        if npy is None:  # the reader for this suffix, looked up once (errors: the general path)
            try:
                npy = self._npy_tails[(manager, tail)] = manager.reader_for(name).read is read_npy
            except MmtokError:
                return None
        if not npy or name in ("..", ".") or rel[:1] == os.sep or "\x00" in rel:
            return None
        return f"{cached[0]}{os.sep}{name}"

    def _npy_fast(self, rel: str, manager) -> np.ndarray | None:
        """A plain ``.npy`` file (`_npy_path`) read with one open (no symlink followed), fstat
        (a regular file) and read, as ``read_npy`` gives it; None when anything is unusual."""
        full = self._npy_path(rel, manager)
        if full is None:
            return None
        try:
            fd = os.open(full, _NPY_FLAGS)
        except OSError:  # missing, a symlink (ELOOP), ...: the general path says which
            return None
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o170000 != stat.S_IFREG:
                return None
            data = npy_from_fd(fd, st.st_size)
        except ValueError:
            return None  # the general path reports it with the file's name
        finally:
            os.close(fd)
        return data if data.dtype.isnative else data.astype(data.dtype.newbyteorder("="))

    def npy_rows(self, rels: Sequence[str], manager) -> tuple[np.ndarray | None, list[bool]]:
        """Plain ``.npy`` entries (paths as written) of one shape and dtype read into one
        ``(n, ...)`` array, in the machine's byte order (`mmtok.readers.read_npy_rows`; same checks
        as `_npy_fast`). ``ok[j]`` False: entry j needs `record`, which reads it or says why not."""
        paths = [self._npy_path(rel, manager) for rel in rels]
        if None in paths:  # folders not seen yet are resolved and checked once, then tried again
            unseen = {os.path.dirname(rel) for rel, path in zip(rels, paths) if path is None} - self._dirs.keys()
            for folder in unseen:
                if "\x00" not in folder and not os.path.isabs(folder):
                    self._folder(folder, False)
            if unseen:
                paths = [path or self._npy_path(rel, manager) for rel, path in zip(rels, paths)]
        block, ok = read_npy_rows(paths, _NPY_FLAGS)
        if block is not None and not block.dtype.isnative:
            block = block.astype(block.dtype.newbyteorder("="))
        return block, ok

    def load_modality(self, sample: SampleEntry, key: str, manager) -> Modality:
        """One modality of one sample, as a batch of one. Raises `SampleError`."""
        if not manager.has_modality(key):  # say so before reading any file
            self.build(sample.id, key, {}, manager)
        return self.build(sample.id, key, self.record(sample, key, manager), manager, sample=sample)

    def source(self, sample: SampleEntry, key: str) -> str | None:
        """Where a table entry's row comes from, ``"table 'patients' (data/patients.csv)"``
        (a problem with the table's columns is then the same words for every row); None for files."""
        entry = sample.modalities[key]
        if entry.table is None or entry.table not in self.tables:
            return None
        return f"table {entry.table!r} ({self.tables[entry.table].path})"

    def build(self, sample_id: str, key: str, record: dict, manager, *,
              sample: SampleEntry | None = None) -> Modality:
        """The modality ``key`` of sample ``sample_id`` from its reader record. Raises `SampleError`
        (naming the table the record came from, see `source`, when ``sample`` is given)."""
        try:
            cls = manager.modality(key)
        except MmtokError as err:
            raise SampleError(sample_id, key, str(err)) from None
        try:
            return cls.from_record(record, sample_id=sample_id)
        except MmtokError as err:
            reason = str(err).removeprefix(f"sample {sample_id!r}: ")
            source = self.source(sample, key) if sample is not None else None
            raise SampleError(sample_id, key, f"{source}: {reason}" if source else reason) from None

    @staticmethod
    def check_sample(sample_id: str, modalities: dict[str, Modality], manager) -> list[tuple[str, str]]:
        """Run the plugins' cross-modality checks (`SampleCheckSpec`) on one sample's modalities.
        Returns [(key, reason)] of the checks that fail."""
        problems = []
        for spec in manager.sample_checks():
            if all(k in modalities for k in spec.modalities):
                try:
                    spec.check({k: modalities[k] for k in spec.modalities})
                except MmtokError as err:
                    problems.append((spec.modalities[-1], str(err)))
                except Exception as err:  # noqa: BLE001 - a malformed modality the check did not expect
                    problems.append((spec.modalities[-1], f"check {spec.name!r} failed: "
                                     f"{type(err).__name__}: {err}"))
        return problems

    # ------------------------------------------------------------------ validation
    def validate(self, manager: PluginManager | None = None, *, check_shape=None,
                 progress: bool = False) -> list[ManifestProblem]:
        """Every problem that can be found without running a codec, with the plugins of
        ``manager`` (default: the installed ones). ``check_shape(key, m)`` may add codec-level
        shape checks (it raises an MmtokError on a mismatch). ``progress``: a progress bar."""
        manager = manager or get_plugin_manager()
        problems = list(self.problems)
        for sid, n in Counter(s.id for s in self.samples).items():
            if n > 1:
                problems.append(ManifestProblem(sid, "id", f"duplicate id ({n} samples share it)"))
        from tqdm.auto import tqdm

        for sample in tqdm(self.samples, desc="validate", unit="sample", disable=not progress, leave=False):
            loaded = {}
            for key in sample.modalities:
                try:
                    loaded[key] = m = self.load_modality(sample, key, manager)
                    if check_shape is not None:
                        check_shape(key, m)
                except SampleError as err:
                    problems.append(ManifestProblem(err.sample, err.key, err.reason))
                except MmtokError as err:
                    problems.append(ManifestProblem(sample.id, key, str(err)))
            for key, reason in self.check_sample(sample.id, loaded, manager):
                problems.append(ManifestProblem(sample.id, key, reason))
        return list(dict.fromkeys(problems))  # a broken table is reported once
