"""WFDB reader (PhysioNet's ``wfdb`` package): records as ``.hea`` header + ``.dat`` signal files,
annotations as ``.atr`` (or any other annotator extension).

    read_wfdb("100.hea", channels=["MLII"], start=0, stop=3600)
        -> {"values": float32 (1, 3600) in physical units (mV), "sample_rate": 360.0}
    read_wfdb_record("100") -> WfdbRecord(signal (650000, 2) float32 mV, fs 360, names, units)
    read_annotations("100", "atr") -> (samples int64 (2274,), symbols ['+', 'N', ...])

Before wfdb touches the data, the header is checked against the files it names: every data file
exists, its storage format is one this reader decodes, and its size matches the header's sample
count. Each problem is one `WfdbError` line naming the record, what the header says and what was
found (wfdb alone would answer ``KeyError: '999'`` or a numpy broadcast error).

A manifest with one entry per beat reads the same record thousands of times, so the parsed header
and the decoded record (up to `CACHE_BYTES`, the last two records) are kept per process, keyed by
the size, mtime and inode of the header and every data file: a changed file is read again.
"""

import dataclasses
import functools
import math
import os
import warnings
from pathlib import Path

import numpy as np

from mmtok import MmtokError

__all__ = ["WfdbError", "WfdbRecord", "check_header", "read_wfdb", "read_wfdb_record", "read_annotations",
           "STORAGE_BITS", "WFDB_SUFFIXES", "CACHE_BYTES"]

#: records whose decoded signal (float32) is at most this large are decoded once and sliced; larger
#: ones are read segment by segment
CACHE_BYTES = 256 * 2**20

WFDB_SUFFIXES = (".hea",)

#: bits per sample of the uncompressed WFDB storage formats this reader decodes (310 / 311 pack
#: 3 samples in 4 bytes)
STORAGE_BITS = {"8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16, "212": 12,
                "310": 32 / 3, "311": 32 / 3}


class WfdbError(MmtokError, ValueError):
    """A WFDB record whose header and data files do not agree, or that this reader cannot decode."""


@dataclasses.dataclass(frozen=True)
class WfdbRecord:
    """One record: ``signal`` (t, c) float32 in physical units, ``fs`` in Hz, ``names`` and
    ``units`` per channel, ``comments`` the header's comment lines."""

    name: str
    signal: np.ndarray
    fs: float
    names: tuple[str, ...]
    units: tuple[str, ...]
    comments: tuple[str, ...]

    def channel(self, name: str) -> np.ndarray:
        """(t,) float32 of channel ``name``."""
        if name not in self.names:
            raise WfdbError(f"record {self.name}: no channel {name!r}; its channels are {list(self.names)}")
        return self.signal[:, self.names.index(name)]


def _wfdb():
    try:
        with warnings.catch_warnings():  # wfdb's import-time pandas deprecations
            warnings.filterwarnings("ignore", module=r"wfdb(\.|$)")
            import wfdb
    except ImportError:  # pragma: no cover - the extra is missing
        raise WfdbError("reading WFDB records needs the wfdb package: "
                        "pip install 'mmtok-plugin-tabular[ecg]'") from None
    return wfdb


def _base(path: str | Path) -> Path:
    """Record path without suffix: ``100.hea``, ``100.dat`` and ``100`` all name record ``100``."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".hea", ".dat", ".atr") else path


def _file_key(path: Path) -> tuple:
    st = os.stat(path)
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=16)
def _parse_header(hea_key: tuple):
    """The parsed header (a ``wfdb.Record`` without samples) of the header file ``hea_key[0]``."""
    hea = Path(hea_key[0])
    base = hea.with_suffix("")
    try:
        return _wfdb().rdheader(str(base))
    except Exception as err:  # noqa: BLE001 - wfdb raises ValueError, IndexError... on a bad header
        raise WfdbError(f"record {base.name}: cannot parse header {hea.name} "
                        f"({type(err).__name__}: {err})") from None


def check_header(path: str | Path):
    """(header, data-file keys): the parsed header (a ``wfdb.Record`` without samples) after
    checking it against the data files it names; raises `WfdbError` naming the record and the
    mismatch."""
    base = _base(path)
    hea = base.with_suffix(".hea")
    if not hea.is_file():
        raise WfdbError(f"record {base.name}: header {hea.name} not found in {hea.parent}")
    header = _parse_header(_file_key(hea))
    if not header.n_sig:
        raise WfdbError(f"record {base.name}: header {hea.name} declares no signals")
    files: dict[str, list[int]] = {}
    for i, fname in enumerate(header.file_name):
        files.setdefault(fname, []).append(i)
    keys = [_file_key(hea)]
    for fname, signals in files.items():
        fmts = {header.fmt[i] for i in signals}
        for i in signals:
            if header.fmt[i] not in STORAGE_BITS:
                raise WfdbError(f"record {base.name}: signal {i} ({header.sig_name[i]!r}) has storage format "
                                f"{header.fmt[i]!r} in {hea.name}; expected one of "
                                f"{', '.join(STORAGE_BITS)} (uncompressed WFDB formats)")
        if len(fmts) > 1:
            raise WfdbError(f"record {base.name}: signals {signals} of {fname} mix storage formats "
                            f"{sorted(fmts)}; expected one format per data file")
        dat = base.parent / fname
        if not dat.is_file():
            raise WfdbError(f"record {base.name}: data file {fname} named by {hea.name} is missing "
                            f"(expected next to it in {base.parent})")
        keys.append(_file_key(dat))
        if header.sig_len is None:
            continue  # no sample count in the header: wfdb takes the file's length
        per_frame = sum((header.samps_per_frame[i] or 1) for i in signals)
        bits = STORAGE_BITS[fmts.pop()]
        offset = max((header.byte_offset[i] or 0) for i in signals)
        expected = offset + math.ceil(header.sig_len * per_frame * bits / 8)
        found = keys[-1][1]
        frame_bytes = math.ceil(per_frame * bits / 8)
        if not expected <= found < expected + frame_bytes:  # allow one frame of padding, no more
            raise WfdbError(f"record {base.name}: header {hea.name} says {header.sig_len} samples x {per_frame} "
                            f"signal(s) in format {header.fmt[signals[0]]} = {expected} bytes of {fname}, "
                            f"found {found} bytes ({found - offset} bytes hold "
                            f"{int((found - offset) * 8 / bits / per_frame)} samples)")
    return header, tuple(keys)


def _rdrecord(base: Path, **kwargs) -> WfdbRecord:
    try:
        rec = _wfdb().rdrecord(str(base), **kwargs)
    except Exception as err:  # noqa: BLE001 - what the checks cannot foresee
        raise WfdbError(f"record {base.name}: wfdb cannot read it ({type(err).__name__}: {err})") from None
    return WfdbRecord(name=base.name, signal=np.asarray(rec.p_signal, dtype=np.float32), fs=float(rec.fs),
                      names=tuple(rec.sig_name), units=tuple(rec.units), comments=tuple(rec.comments))


@functools.lru_cache(maxsize=2)
def _whole_record(keys: tuple) -> WfdbRecord:
    """The decoded record of header ``keys[0]`` (``keys``: its files' identities, for the cache)."""
    record = _rdrecord(Path(keys[0][0]).with_suffix(""))
    record.signal.setflags(write=False)  # shared by every caller: slices are copied out
    return record


def read_wfdb_record(path: str | Path, channels: list[str] | None = None, start: int = 0,
                     stop: int | None = None) -> WfdbRecord:
    """Samples ``start:stop`` of the record at ``path`` (``100``, ``100.hea``), the ``channels``
    named (default all), in physical units: signal (stop - start, c) float32."""
    base = _base(path)
    header, keys = check_header(base)
    if channels is not None:
        unknown = [c for c in channels if c not in header.sig_name]
        if unknown:
            raise WfdbError(f"record {base.name}: no channel(s) {unknown}; its channels are {header.sig_name}")
    n = header.sig_len
    stop = n if stop is None else stop
    if not (0 <= start < stop and (n is None or stop <= n)):
        raise WfdbError(f"record {base.name}: sample range start={start}, stop={stop} is outside the record "
                        f"(expected 0 <= start < stop <= {n})")
    idx = list(range(header.n_sig)) if channels is None else [header.sig_name.index(c) for c in channels]
    if n is None or n * header.n_sig * 4 > CACHE_BYTES:
        return _rdrecord(base, sampfrom=start, sampto=stop, channels=idx)
    whole = _whole_record(keys)
    return dataclasses.replace(whole, signal=np.ascontiguousarray(whole.signal[start:stop, idx]),
                               names=tuple(whole.names[i] for i in idx), units=tuple(whole.units[i] for i in idx))


def read_wfdb(path: Path, channels: list[str] | None = None, start: int = 0,
              stop: int | None = None) -> dict:
    """The manifest reader (``.hea``): ``{"values": (c, t) float32 physical units, "sample_rate": Hz}``,
    which `mmtok.TimeSeries.from_record` takes as is. Options of a manifest entry: ``channels``
    (names), ``start`` / ``stop`` (sample indices), e.g. one beat:
    ``{"path": "data/100.hea", "options": {"channels": ["MLII"], "start": 1000, "stop": 1252}}``."""
    rec = read_wfdb_record(path, channels, start, stop)
    return {"values": np.ascontiguousarray(rec.signal.T), "sample_rate": rec.fs}


def read_annotations(path: str | Path, extension: str = "atr") -> tuple[np.ndarray, list[str]]:
    """Annotations of the record at ``path`` (file ``<record>.<extension>``): sample positions
    (n,) int64 and their symbols (``N``, ``A``, ``V``, ``+``...)."""
    base = _base(path)
    ann_file = base.with_name(f"{base.name}.{extension}")
    if not ann_file.is_file():
        raise WfdbError(f"record {base.name}: annotation file {ann_file.name} not found in {base.parent}")
    try:
        with warnings.catch_warnings():  # wfdb's own pandas deprecations, not the user's concern
            warnings.filterwarnings("ignore", module=r"wfdb(\.|$)")
            ann = _wfdb().rdann(str(base), extension)
    except Exception as err:  # noqa: BLE001
        raise WfdbError(f"record {base.name}: cannot read annotations {ann_file.name} "
                        f"({type(err).__name__}: {err})") from None
    return np.asarray(ann.sample, dtype=np.int64), list(ann.symbol)
