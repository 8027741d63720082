"""Core file readers: ``.npy``, ``.npz`` and ``.csv``. Each returns ``{field: array}``.

No pickle: ``np.load(..., allow_pickle=False)`` refuses object arrays.
"""

import csv
from pathlib import Path

import numpy as np

from mmtok.errors import MmtokError

__all__ = ["read_npy", "read_npz", "read_csv"]


def read_npy(path: Path) -> dict[str, np.ndarray]:
    """A single array, returned as field ``"data"``."""
    try:
        return {"data": np.load(path, allow_pickle=False)}
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
