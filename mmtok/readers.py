"""Core file readers: ``.npy``, ``.npz`` and ``.csv``. Each returns ``{field: array}``.

No pickle: ``np.load(..., allow_pickle=False)`` refuses object arrays.
"""

import csv
import io
from pathlib import Path

import numpy as np

from mmtok.errors import MmtokError

__all__ = ["read_npy", "read_npz", "read_csv"]


#: raw .npy header bytes -> (shape, fortran order, dtype); manifests hold many files that share
#: one header, and parsing it (numpy evaluates a Python literal) costs more than reading the data
_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def _read_npy_array(path: Path) -> np.ndarray:
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8 or prefix[:6] != b"\x93NUMPY":
            raise ValueError("not a .npy file (bad magic string)")
        major = prefix[6]
        size_bytes = 2 if major == 1 else 4
        raw_len = fh.read(size_bytes)
        header = fh.read(int.from_bytes(raw_len, "little"))
        key = prefix + raw_len + header
        if key not in _NPY_HEADERS:
            parsed = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = parsed(io.BytesIO(raw_len + header))
            if dtype.hasobject:
                raise ValueError("object arrays need pickle, which mmtok never loads")
            _NPY_HEADERS[key] = (shape, fortran, dtype)
        shape, fortran, dtype = _NPY_HEADERS[key]
        count = int(np.prod(shape, dtype=np.int64))
        data = np.fromfile(fh, dtype=dtype, count=count)
    if data.size != count:
        raise ValueError(f"file is truncated: expected {count} values of {dtype}, found {data.size}")
    return data.reshape(shape, order="F" if fortran else "C")


def read_npy(path: Path) -> dict[str, np.ndarray]:
    """A single array, returned as field ``"data"`` (same result as ``np.load(path,
    allow_pickle=False)``, with parsed headers cached)."""
    try:
        return {"data": _read_npy_array(Path(path))}
    except (ValueError, OSError) as err:
        raise MmtokError(f"{path}: cannot read as .npy ({err})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive, by name."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (ValueError, OSError) as err:
        raise MmtokError(f"{path}: cannot read as .npz ({err})") from None


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """One array per column (float where every value parses as a number, else str)."""
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
            out[name] = np.asarray([float(v) for v in col], dtype=np.float64)
        except ValueError:
            out[name] = np.asarray(col, dtype=str)
    return out
