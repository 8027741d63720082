"""Voxel orientation: every reader hands out arrays in one canonical layout.

Arrays are ``(d, h, w)`` = (inferior→superior, posterior→anterior, left→right): the RAS+ voxel
grid of nibabel's ``as_closest_canonical`` with its axes reversed, so that ``d`` runs along the
slices. Its axis codes (world direction of increasing index along d, h, w) are ``"SAR"``.

Affines must be finite, non-singular and axis-aligned (oblique acquisitions are refused rather
than silently resampled on a tilted grid); the checks raise `OrientationError` saying why.
"""

import nibabel as nib
import numpy as np
from nibabel import orientations

from mmtok import MmtokError

__all__ = ["CANONICAL", "OrientationError", "check_affine", "to_canonical", "spacing_from_affine",
           "lps_to_ras"]

CANONICAL = "SAR"  # axis codes of (d, h, w)
_OBLIQUE_TOL = 1e-3  # largest off-axis direction-cosine component accepted


class OrientationError(MmtokError, ValueError):
    """Orientation / spacing metadata that cannot be trusted."""


def check_affine(affine: np.ndarray) -> None:
    """Raise unless ``affine`` (4, 4) maps voxels to world by an axis-aligned, non-degenerate map."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise OrientationError(f"affine must be 4x4, found shape {a.shape}")
    if not np.isfinite(a).all():
        raise OrientationError("affine has NaN/inf entries")
    m = a[:3, :3]
    zooms = np.linalg.norm(m, axis=0)
    if (zooms <= 1e-6).any():
        raise OrientationError(f"affine gives a zero voxel size along axis {int(np.argmin(zooms))} "
                               f"(column norms {np.round(zooms, 6).tolist()})")
    cosines = m / zooms
    if abs(abs(np.linalg.det(cosines)) - 1) > 1e-3:
        raise OrientationError(f"affine direction cosines are not orthonormal (|det| = "
                               f"{abs(np.linalg.det(cosines)):.4f}); sheared grid")
    off = np.sort(np.abs(cosines), axis=0)[:-1]  # everything but the dominant entry per column
    if off.max() > _OBLIQUE_TOL:
        angle = np.degrees(np.arcsin(min(1.0, float(off.max()))))
        raise OrientationError(f"oblique acquisition ({angle:.2f} degrees off the scanner axes); "
                               "resample it to an axis-aligned grid first")
    if len(set(np.argmax(np.abs(cosines), axis=0).tolist())) != 3:
        raise OrientationError("two voxel axes point along the same world axis")


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis, as stored."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient a 3D array with its affine to the canonical (d, h, w) = "SAR" layout.

    Returns (array, spacing_mm (3,) along d, h, w, canonical affine (4, 4) of the new array).
    """
    check_affine(affine)
    if data.ndim != 3:
        raise OrientationError(f"expected a 3D volume, found {data.ndim}D shape {data.shape}")
    ornt = orientations.io_orientation(affine)
    target = orientations.axcodes2ornt(tuple(CANONICAL))
    transform = orientations.ornt_transform(ornt, target)
    out = orientations.apply_orientation(data, transform)
    new_affine = affine @ orientations.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out), spacing_from_affine(new_affine), new_affine


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """DICOM patient coordinates (LPS) -> NIfTI world (RAS)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps


def axcodes(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))
