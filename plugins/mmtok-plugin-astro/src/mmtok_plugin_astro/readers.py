"""FITS reader (astropy): the image of a FITS file and its pixel scale.

    read_fits("Cut_HSC.fits") -> {"flux": float32 (5, 50, 50), "pixel_scale_arcsec": array(0.168)}
"""

import warnings
from pathlib import Path

import numpy as np

from mmtok import MmtokError

__all__ = ["read_fits", "FITS_SUFFIXES"]

FITS_SUFFIXES = (".fits", ".fits.gz", ".fit")


def read_fits(path: Path) -> dict[str, np.ndarray]:
    """``flux``: the first HDU with image data (the primary HDU when it has data) as native
    float32, all of its axes kept (e.g. (bands, h, w)); ``pixel_scale_arcsec``: a 0-d float64
    array, the geometric mean of the two celestial pixel scales, present only when the header
    has a celestial WCS. Raises `MmtokError` naming the file when it cannot be read."""
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)  # non-standard headers: not our call
            with fits.open(path, memmap=False) as hdus:
                hdu = next((h for h in hdus if h.is_image and h.data is not None and h.data.ndim >= 2),
                           None)
                if hdu is None:
                    raise MmtokError(f"{path}: no image HDU with data "
                                     f"({len(hdus)} HDU(s): {[h.name for h in hdus]})")
                data = np.asarray(hdu.data)
                header = hdu.header.copy()
    except MmtokError:
        raise
    except Exception as err:  # noqa: BLE001 - astropy raises OSError, ValueError, TypeError...
        raise MmtokError(f"{path}: cannot read as FITS; truncated or corrupt file? "
                         f"({type(err).__name__}: {err})") from None
    if data.dtype.kind not in "biuf":
        raise MmtokError(f"{path}: image HDU has non-numeric dtype {data.dtype}")
    out = {"flux": data.astype(np.float32)}  # also converts FITS big-endian to native order
    scale = _pixel_scale_arcsec(header, path)
    if scale is not None:
        out["pixel_scale_arcsec"] = np.asarray(scale, dtype=np.float64)
    return out


def _pixel_scale_arcsec(header, path: Path) -> float | None:
    """Geometric mean of the celestial pixel scales in arcsec, or None without a celestial WCS."""
    import astropy.units as u
    from astropy.utils.exceptions import AstropyWarning
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            cel = wcs.celestial
            scales = proj_plane_pixel_scales(cel)
            units = [u.Unit(c) if str(c) else u.deg for c in cel.wcs.cunit]
    except Exception as err:  # noqa: BLE001 - a broken WCS makes the file unusable as an image
        raise MmtokError(f"{path}: invalid WCS in the header ({type(err).__name__}: {err})") from None
    arcsec = [float((s * unit).to(u.arcsec).value) for s, unit in zip(scales, units)]
    return float(np.sqrt(arcsec[0] * arcsec[1]))
