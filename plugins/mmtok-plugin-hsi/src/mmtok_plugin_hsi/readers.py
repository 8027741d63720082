"""Readers of hyperspectral files -> records ``{field: array}`` for `HSICube.from_record`.

* MATLAB ``.mat``: v4–v7 through ``scipy.io.loadmat``, v7.3 (HDF5) through ``h5py``; every
  numeric variable by name, in MATLAB's axis order (h5py's reversed axes are transposed back).
* ENVI ``.hdr`` (+ its binary ``.img`` / ``.raw`` / no extension) through the ``spectral``
  package: ``reflectance`` (bands, h, w), ``wavelength_nm`` from the header's ``wavelength``
  (micrometres converted), ``band_mask`` from its ``bbl`` (bad band list).
* ``.npy`` / ``.npz`` are mmtok's own readers; `HSICube.from_record` maps their keys.
"""

from pathlib import Path

import numpy as np

from mmtok import MmtokError

__all__ = ["read_mat", "read_envi", "write_envi"]

_UNIT_TO_NM = {"nm": 1.0, "nanometers": 1.0, "nanometer": 1.0, "um": 1000.0, "micrometers": 1000.0,
               "micrometer": 1000.0, "microns": 1000.0, "micron": 1000.0, "µm": 1000.0, "mm": 1e6}


def _numeric(name: str, value) -> np.ndarray | None:
    a = np.asarray(value)
    if a.dtype.kind not in "biuf" or a.size == 0:
        return None  # strings, cells, structs, HDF5 references: not data a cube needs
    return a.reshape(-1) if a.ndim == 2 and 1 in a.shape else a


def read_mat(path: Path) -> dict[str, np.ndarray]:
    """Every numeric variable of a MATLAB file (v5 via scipy, v7.3 via h5py), by name."""
    import scipy.io

    path = Path(path)
    try:
        raw = scipy.io.loadmat(str(path))
        items = {k: v for k, v in raw.items() if not k.startswith("__")}
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        items = _read_mat73(path)
    except (ValueError, TypeError, OSError) as err:
        raise MmtokError(f"{path}: cannot read as a MATLAB .mat file ({err})") from None
    out = {k: a for k, v in items.items() if (a := _numeric(k, v)) is not None}
    if not out:
        raise MmtokError(f"{path}: the MATLAB file holds no numeric variable (found {sorted(items)})")
    return out


def _read_mat73(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            # MATLAB writes column-major: h5py sees the axes reversed
            return {k: np.asarray(v[()]).T for k, v in f.items() if isinstance(v, h5py.Dataset)}
    except OSError as err:
        raise MmtokError(f"{path}: cannot read as a MATLAB v7.3 (HDF5) file ({err})") from None


def _wavelengths_nm(meta: dict, path: Path) -> np.ndarray | None:
    if "wavelength" not in meta:
        return None
    try:
        wl = np.asarray([float(v) for v in meta["wavelength"]], dtype=np.float64)
    except (TypeError, ValueError):
        raise MmtokError(f"{path}: ENVI header 'wavelength' is not a list of numbers") from None
    unit = str(meta.get("wavelength units", "nm")).strip().lower()
    if unit in ("", "unknown"):  # guess: AVIRIS-like headers in micrometres have values < 100
        unit = "um" if wl.max() < 100 else "nm"
    if unit not in _UNIT_TO_NM:
        raise MmtokError(f"{path}: ENVI header 'wavelength units' {meta['wavelength units']!r} is not one of "
                         f"{sorted(_UNIT_TO_NM)}")
    return wl * _UNIT_TO_NM[unit]


def read_envi(path: Path) -> dict[str, np.ndarray]:
    """An ENVI image (``path`` is its ``.hdr``) -> reflectance (bands, h, w), wavelength_nm,
    band_mask (from ``bbl``) when the header has them."""
    import spectral.io.envi as envi

    path = Path(path)
    try:
        img = envi.open(str(path))
        cube = np.asarray(img.load())  # (rows, cols, bands)
    except (envi.EnviException, OSError, ValueError, KeyError) as err:
        raise MmtokError(f"{path}: cannot read as an ENVI header + image ({type(err).__name__}: {err})") from None
    record = {"reflectance": np.array(np.moveaxis(cube, -1, 0), order="C")}
    meta = img.metadata
    wl = _wavelengths_nm(meta, path)
    if wl is not None:
        record["wavelength_nm"] = wl
    if "bbl" in meta:
        record["band_mask"] = np.asarray([float(v) for v in meta["bbl"]]) > 0.5
    scale = meta.get("reflectance scale factor")
    if scale is not None and float(scale) not in (0.0, 1.0):
        record["reflectance"] = record["reflectance"].astype(np.float32) / float(scale)
    return record


def write_envi(path: Path, reflectance: np.ndarray, wavelength_nm: np.ndarray,
               band_mask: np.ndarray | None = None, interleave: str = "bil") -> Path:
    """Write a cube (bands, h, w) as ENVI ``path`` (.hdr) + its ``.img`` through ``spectral``."""
    import spectral.io.envi as envi

    meta = {"wavelength": [f"{v:.4f}" for v in np.asarray(wavelength_nm).reshape(-1)], "wavelength units": "nm",
            "interleave": interleave}
    if band_mask is not None:
        meta["bbl"] = [int(v) for v in np.asarray(band_mask).reshape(-1)]
    envi.save_image(str(path), np.moveaxis(np.asarray(reflectance), 0, -1), metadata=meta, ext=".img",
                    force=True, interleave=interleave)
    return Path(path)
