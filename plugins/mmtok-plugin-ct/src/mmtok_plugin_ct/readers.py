"""CT readers: NIfTI (nibabel), DICOM series (pydicom), report text. Each returns
``{"data": array in the canonical (d, h, w) layout, "spacing_mm": (3,), "affine": (4, 4),
"axcodes": "SAR"}`` (text: ``{"text": str}``); modalities take it from there.

* NIfTI: the sform (else qform) affine gives orientation and spacing; a file with neither
  (both codes 0) has no trustworthy orientation and is refused. Scaling (scl_slope / scl_inter)
  is applied by nibabel.
* DICOM: the folder's slices of one series are sorted by their position along the slice normal;
  RescaleSlope / RescaleIntercept turn stored values into HU; gaps in the slice positions (a
  missing file) and inconsistent geometry are refused. Compressed transfer syntaxes (e.g. JPEG
  2000 lossless) decode through pylibjpeg.
"""

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from mmtok import MmtokError
from mmtok_plugin_ct.orientation import CANONICAL, OrientationError, lps_to_ras, to_canonical

__all__ = ["read_nifti", "read_dicom_series", "read_report", "NIFTI_SUFFIXES", "DicomError"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class DicomError(MmtokError, ValueError):
    """A DICOM series that cannot be assembled into one volume."""


def _record(data: np.ndarray, affine: np.ndarray) -> dict:
    out, spacing, canonical = to_canonical(data, affine)
    return {"data": out, "spacing_mm": spacing.astype(np.float64), "affine": canonical,
            "axcodes": np.asarray(CANONICAL)}


def read_nifti(path: Path) -> dict:
    """A 3D NIfTI volume (a 4D file with one volume is accepted; more volumes are refused)."""
    img = nib.load(str(path))
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise OrientationError(f"expected a 3D volume, found {len(img.shape)}D shape {img.shape}"
                               + (" (a time series / multi-volume file, not one CT)" if len(img.shape) == 4 else ""))
    header = img.header
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        raise OrientationError("no orientation: sform_code and qform_code are both 0, so the voxel "
                               "axes cannot be mapped to the patient")
    data = np.asanyarray(img.dataobj).reshape(shape)
    return _record(data, img.affine)


def _float(ds, tag: str, default=None):
    value = getattr(ds, tag, default)
    if value is None:
        raise DicomError(f"{getattr(ds, 'filename', '?')}: missing {tag}")
    return value


def read_dicom_series(folder: Path) -> dict:
    """One CT series from a folder of DICOM files (one file per slice)."""
    import pydicom

    folder = Path(folder)
    files = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_symlink():
            raise DicomError(f"{entry.name}: links are not followed inside a series folder")
        if entry.is_file() and not entry.name.startswith("."):
            files.append(Path(entry.path))
    if not files:
        raise DicomError("folder holds no files")
    slices, series = [], set()
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except pydicom.errors.InvalidDicomError:
            raise DicomError(f"{f.name}: not a DICOM file") from None
        if getattr(ds, "Modality", "CT") != "CT":
            raise DicomError(f"{f.name}: Modality is {ds.Modality!r}, expected 'CT'")
        series.add(getattr(ds, "SeriesInstanceUID", None))
        slices.append(ds)
    if len(series) > 1:
        raise DicomError(f"folder mixes {len(series)} series (SeriesInstanceUID); give one series per folder")
    if len(slices) < 2:
        raise DicomError("a series needs at least 2 slices to define the slice spacing")
    iop = np.asarray([float(v) for v in _float(slices[0], "ImageOrientationPatient")])
    row, col = iop[:3], iop[3:]
    if not (abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(col) - 1) < 1e-3
            and abs(row @ col) < 1e-3):
        raise OrientationError(f"ImageOrientationPatient {iop.tolist()} is not two orthonormal direction cosines")
    normal = np.cross(row, col)
    for ds in slices[1:]:
        other = np.asarray([float(v) for v in _float(ds, "ImageOrientationPatient")])
        if not np.allclose(other, iop, atol=1e-4):
            raise OrientationError(f"{Path(ds.filename).name}: ImageOrientationPatient differs within the series")
    pos = np.asarray([[float(v) for v in _float(ds, "ImagePositionPatient")] for ds in slices])
    along = pos @ normal
    order = np.argsort(along)
    slices, pos, along = [slices[i] for i in order], pos[order], along[order]
    steps = np.diff(along)
    if (steps < 1e-4).any():
        raise DicomError("two slices share a position (duplicate slice?)")
    step = float(np.median(steps))
    gaps = np.nonzero(np.abs(steps - step) > 0.1 * step)[0]
    if len(gaps):
        i = int(gaps[0])
        missing = int(round(steps[i] / step)) - 1
        raise DicomError(f"slice positions jump from {along[i]:.2f} to {along[i + 1]:.2f} mm (spacing "
                         f"{step:.2f} mm): {max(missing, 1)} slice(s) missing, or uneven spacing")
    dy, dx = (float(v) for v in _float(slices[0], "PixelSpacing"))
    shape = (slices[0].Rows, slices[0].Columns)
    planes = []
    for ds in slices:
        if (ds.Rows, ds.Columns) != shape:
            raise DicomError(f"{Path(ds.filename).name}: {ds.Rows}x{ds.Columns} pixels, the series has {shape}")
        try:
            pixels = ds.pixel_array
        except Exception as err:  # noqa: BLE001 - missing decoder plugins and corrupt data alike
            raise DicomError(f"{Path(ds.filename).name}: cannot decode pixel data "
                             f"({ds.file_meta.TransferSyntaxUID.name}): {err}") from None
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        planes.append(pixels.astype(np.float32) * slope + intercept)
    volume = np.stack(planes, axis=-1).transpose(1, 0, 2)  # (columns i, rows j, slices k)
    # voxel (i, j, k) -> LPS: origin + i * dx * row + j * dy * col + k * step * normal
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row * dx
    affine_lps[:3, 1] = col * dy
    affine_lps[:3, 2] = normal * step
    affine_lps[:3, 3] = pos[0]
    return _record(volume, lps_to_ras(affine_lps))


def read_report(path: Path) -> dict:
    """A report as UTF-8 text: first line the impression, further lines findings / steps."""
    try:
        return {"text": Path(path).read_text(encoding="utf-8")}
    except UnicodeDecodeError as err:
        raise MmtokError(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
