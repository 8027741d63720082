"""Core file readers: ``.npy``, ``.npz`` and ``.csv``. Each returns ``{field: array}``.

No pickle: ``np.load(..., allow_pickle=False)`` refuses object arrays.
"""

import csv
import io
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmtok.errors import MmtokError

__all__ = ["read_npy", "read_npy_rows", "read_npz", "read_csv"]


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


def _npy_header(buf, got: int) -> tuple[int, bytes, tuple[tuple[int, ...], bool, np.dtype, int]]:
    """(data offset, raw header bytes, (shape, fortran order, dtype, count)) of a ``.npy`` file whose
    first ``got`` bytes are in ``buf``. Raises ValueError."""
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
    return offset, key, _NPY_HEADERS[key]


def npy_from_fd(fd: int, size: int) -> np.ndarray:
    """The array of an open ``.npy`` file of ``size`` bytes (see `read_npy`)."""
    buf = bytearray(size)
    got = os.readv(fd, [buf])
    offset, _, (shape, fortran, dtype, count) = _npy_header(buf, got)
    if got - offset < count * dtype.itemsize:
        found = max(0, got - offset) // max(1, dtype.itemsize)
        raise ValueError(f"file is truncated: expected {count} values of {dtype}, found {found}")
    data = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    return data.reshape(shape, order="F" if fortran else "C")


#: uint8 buffers `read_npy_rows` reads into, reused once nothing refers to them any more; only
#: small ones (where a page fault per 4 KiB costs as much as the read) and few of them, so the pool
#: holds at most 32 MiB: `mmtok encode` keeps one shard's chunks (16 of 64 samples) alive at a time
_ROW_BUFFERS: list[np.ndarray] = []
_POOLED_BYTES, _POOLED_BUFFERS = 1 << 20, 32


def _rows_buffer(n: int, width: int) -> np.ndarray:
    """An ``(n, width)`` uint8 array: a pooled one that no array, view or tensor refers to any more
    (its reference count says so), else a new one, pooled when small. Fresh memory costs a page
    fault per 4 KiB on first touch, ~1 us per small file read; a pooled buffer is already mapped."""
    if n * width > _POOLED_BYTES:
        return np.empty((n, width), dtype=np.uint8)
    for buf in _ROW_BUFFERS:
        if buf.shape == (n, width) and sys.getrefcount(buf) == 3:  # the pool, `buf`, getrefcount's argument
            return buf
    buf = np.empty((n, width), dtype=np.uint8)
    if len(_ROW_BUFFERS) < _POOLED_BUFFERS:
        _ROW_BUFFERS.append(buf)
    return buf


def read_npy_rows(paths: Sequence[str | None], flags: int = os.O_RDONLY) -> tuple[np.ndarray | None, list[bool]]:
    """Many small ``.npy`` files of one header (shape, dtype, C order) read into one ``(n, *shape)``
    array: per file one open (with ``flags``), fstat, ``readv`` of the header and the data straight
    into its row, close. The first file that reads gives the header.

    Returns (array or None, ok): ``ok[j]`` is False where file j was not read into row j (``None``
    path, cannot be opened, not a regular file, another header or size, not a .npy file); that row
    is undefined, and the caller reads such a file alone (`read_npy`), which reads it or says what
    is wrong. Per-file Python work is what caps a light codec's speed in `mmtok encode`."""
    n = len(paths)
    ok = [False] * n
    block = key = flat = None
    size = width = 0
    head = bytearray()
    parts = [head, None]  # readv's buffers: the header, then the file's row
    readv, fstat, close, regular = os.readv, os.fstat, os.close, stat.S_IFREG
    for j, path in enumerate(paths):
        if path is None:
            continue
        try:
            fd = os.open(path, flags)
        except OSError:
            continue
        try:
            st = fstat(fd)
            if st.st_mode & 0o170000 != regular:
                continue
            if flat is not None:
                if st.st_size == size:
                    parts[1] = flat[j * width:(j + 1) * width]
                    ok[j] = readv(fd, parts) == size and head == key
                continue
            buf = bytearray(st.st_size)
            got = readv(fd, [buf])
            offset, key, (shape, fortran, dtype, count) = _npy_header(buf, got)
            if fortran or got != st.st_size or got != offset + count * dtype.itemsize:
                continue
            size, width = got, got - offset
            rows = _rows_buffer(n, width)
            rows[j] = np.frombuffer(buf, dtype=np.uint8, offset=offset)
            block = rows.view(dtype).reshape(n, *shape)
            flat = memoryview(rows).cast("B")
            head[:] = key
            ok[j] = True
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
    return block, ok


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
