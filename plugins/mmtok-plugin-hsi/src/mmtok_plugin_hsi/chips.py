"""Chips of a scene cube: pixel-centred chips for per-pixel classification, tiles for codecs.

`extract_chips` cuts a ``size x size`` chip around each requested pixel (the pixel at the centre,
borders padded by reflection); `tile` cuts the scene into non-overlapping ``size x size`` tiles.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mmtok import MmtokError

__all__ = ["extract_chips", "tile"]


def _check_cube(cube: np.ndarray) -> None:
    if cube.ndim != 3:
        raise MmtokError(f"cube: expected a (bands, h, w) array, found shape {cube.shape}")


def extract_chips(cube: np.ndarray, rows, cols, size: int, mode: str = "reflect") -> np.ndarray:
    """Chips centred on pixels ``(rows[i], cols[i])``: (n, bands, size, size), same dtype as cube.

    cube: (bands, h, w). size: odd; chip ``[:, size // 2, size // 2]`` is the pixel itself.
    Pixels closer than ``size // 2`` to a border get ``np.pad`` padding with ``mode``
    ("reflect": mirror without repeating the edge pixel; "edge", "symmetric", "constant", ...).
    """
    _check_cube(cube)
    if size < 1 or size % 2 != 1:
        raise MmtokError(f"chip size: expected an odd positive integer, found {size}")
    rows, cols = np.asarray(rows, dtype=np.int64).ravel(), np.asarray(cols, dtype=np.int64).ravel()
    if rows.shape != cols.shape:
        raise MmtokError(f"chip centres: rows and cols must have the same length, found {len(rows)} and {len(cols)}")
    h, w = cube.shape[1:]
    if rows.size and (rows.min() < 0 or rows.max() >= h or cols.min() < 0 or cols.max() >= w):
        raise MmtokError(f"chip centres: expected rows in [0, {h}) and cols in [0, {w}), found rows "
                         f"{rows.min()}..{rows.max()}, cols {cols.min()}..{cols.max()}")
    r = size // 2
    padded = np.pad(cube, ((0, 0), (r, r), (r, r)), mode=mode)
    windows = sliding_window_view(padded, (size, size), axis=(1, 2))  # (bands, h, w, size, size) view
    return np.ascontiguousarray(np.moveaxis(windows[:, rows, cols], 0, 1))


def tile(cube: np.ndarray, size: int, remainder: str = "drop", mode: str = "reflect"
         ) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping tiles: (chips (n, bands, size, size), origins (n, 2) top-left (row, col)).

    Tiles run row-major from (0, 0). ``remainder="drop"`` leaves out the last ``h % size`` rows
    and ``w % size`` columns; ``"pad"`` pads the cube at the bottom/right with ``mode`` first,
    so the last tiles reach past the scene (their origins are still inside it).
    """
    _check_cube(cube)
    if size < 1:
        raise MmtokError(f"tile size: expected a positive integer, found {size}")
    h, w = cube.shape[1:]
    if remainder == "pad":
        ph, pw = -h % size, -w % size
        cube = np.pad(cube, ((0, 0), (0, ph), (0, pw)), mode=mode) if ph or pw else cube
    elif remainder != "drop":
        raise MmtokError(f"tile remainder: expected 'drop' or 'pad', found {remainder!r}")
    nh, nw = cube.shape[1] // size, cube.shape[2] // size
    if nh == 0 or nw == 0:
        raise MmtokError(f"tile size: {size} is larger than the scene ({h} x {w}) with remainder='drop'")
    c = cube[:, :nh * size, :nw * size].reshape(cube.shape[0], nh, size, nw, size)
    chips = np.ascontiguousarray(c.transpose(1, 3, 0, 2, 4).reshape(nh * nw, cube.shape[0], size, size))
    gr, gc = np.meshgrid(np.arange(nh) * size, np.arange(nw) * size, indexing="ij")
    return chips, np.stack([gr.ravel(), gc.ravel()], axis=1).astype(np.int64)
