"""Core file readers: ``.npy``, ``.npz`` and ``.csv``. Each returns ``{field: array}``.

No pickle: ``np.load(..., allow_pickle=False)`` refuses object arrays.
"""

import csv
import io
import os
from pathlib import Path

import numpy as np

from mmtok.errors import MmtokError

__all__ = ["read_npy", "read_npz", "read_csv"]


#: raw .npy header bytes -> (shape, fortran order, dtype, count); manifests hold many files that share
#: one header, and parsing it (numpy evaluates a Python literal) costs more than reading the data
_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype, int]] = {}


def _read_npy_array(path: Path) -> np.ndarray:
    """One ``os.read`` of the whole file into a writable buffer, the header parsed once per
    distinct header, the array a view of the buffer (no second copy). A few µs for a small file,
    where ``np.load`` spends most of its ~30 µs on Python-level file objects and header parsing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return npy_from_fd(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def npy_from_fd(fd: int, size: int) -> np.ndarray:
    """The array of an open ``.npy`` file of ``size`` bytes (see `read_npy`)."""
    buf = bytearray(size)
    got = os.readv(fd, [buf])
    if got < 10 or buf[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy file (bad magic string)")
    major = buf[6]
    size_bytes = 2 if major == 1 else 4
    offset = 8 + size_bytes + int.from_bytes(buf[8:8 + size_bytes], "little")
    key = bytes(buf[:offset])
    if key not in _NPY_HEADERS:
        if len(key) < offset:
            raise ValueError("file is truncated inside its header")
        parsed = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = parsed(io.BytesIO(key[8:]))
        if dtype.hasobject:
            raise ValueError("object arrays need pickle, which mmtok never loads")
        _NPY_HEADERS[key] = (shape, fortran, dtype, int(np.prod(shape, dtype=np.int64)))
    shape, fortran, dtype, count = _NPY_HEADERS[key]
    if got - offset < count * dtype.itemsize:
        found = max(0, got - offset) // max(1, dtype.itemsize)
        raise ValueError(f"file is truncated: expected {count} values of {dtype}, found {found}")
    data = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    return data.reshape(shape, order="F" if fortran else "C")


def read_npy(path: Path) -> dict[str, np.ndarray]:
    """A single array, returned as field ``"data"`` (same result as ``np.load(path,
    allow_pickle=False)``, with parsed headers cached)."""
    try:
        return {"data": _read_npy_array(path)}
    except (ValueError, OSError) as err:
        raise MmtokError(f"{path}: cannot read as .npy ({err})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive, by name."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (ValueError, OSError) as err:
        raise MmtokError(f"{path}: cannot read as .npz ({err})") from None


def _exact_integers(col: list[str]) -> np.ndarray:
    """``col`` as int64 when every value is an integer literal within int64, else as str (a float
    column with huge values stays float: only integer literals are kept exact)."""
    try:
        ints = [int(v) for v in col]
    except ValueError:
        return np.asarray([float(v) for v in col], dtype=np.float64)
    if all(-2 ** 63 <= v < 2 ** 63 for v in ints):
        return np.asarray(ints, dtype=np.int64)
    return np.asarray(col, dtype=str)


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """One array per column: float where every value parses as a number, else str. Integers
    beyond float64's exact range (2**53: 19-digit ids such as Gaia's ``source_id``) would lose
    digits as floats, so such a column is int64 (str if it exceeds int64 too), never rounded."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise MmtokError(f"{path}: empty CSV file")
    header, body = rows[0], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise MmtokError(f"{path}: line {i} has {len(row)} values, the header has {len(header)}")
    out = {}
    for j, name in enumerate(header):
        col = [row[j] for row in body]
        try:
            values = np.asarray([float(v) for v in col], dtype=np.float64)
        except ValueError:
            out[name] = np.asarray(col, dtype=str)
            continue
        out[name] = _exact_integers(col) if np.any(np.abs(values) > 2.0 ** 53) else values
    return out
