"""The real HSC cutouts shipped in ``data/`` (origin and licence: data/DATA.md).

Three HSC COSMOS grizy cutouts from the scarlet deblender's test data, of different sizes:

- ``hsc_cosmos_35`` (hsc_cosmos_35.npz): flux (5, 58, 48), variance, mask (HSC mask bits)
- ``hsc_cosmos`` (hsc_cosmos.npz): flux (5, 69, 57), no variance / mask
- ``cut_hsc`` (Cut_HSC.fits): flux (5, 50, 50), WCS 0.168"/px, no variance / mask

Pixel units are not documented in the files: the npz cutouts are taken to be HSC coadd units
(zero point 27.0, assumed); Cut_HSC.fits is normalised (each band sums to 1999.0).
``Cut_HST.fits`` is one HST band (250, 250) at 0.03"/px over the same area as ``Cut_HSC.fits``.
"""

from pathlib import Path

import numpy as np

from mmtok import Modality, ModalityError, read_npz

from mmtok_plugin_astro.modalities import HSCImage, SourceCatalog
from mmtok_plugin_astro.readers import read_fits

__all__ = ["DATA_DIR", "HSC_CUTOUTS", "HST_FITS", "read_cutout", "center_crop", "load_hsc_cutouts",
           "load_hsc_batch", "load_hsc_catalog"]

DATA_DIR = Path(__file__).parent / "data"
#: cutout name -> shipped file
HSC_CUTOUTS = {"hsc_cosmos_35": DATA_DIR / "hsc_cosmos_35.npz",
               "hsc_cosmos": DATA_DIR / "hsc_cosmos.npz",
               "cut_hsc": DATA_DIR / "Cut_HSC.fits"}
HST_FITS = DATA_DIR / "Cut_HST.fits"


def read_cutout(name: str) -> dict[str, np.ndarray]:
    """The raw reader record of one shipped cutout (mmtok's npz reader or `read_fits`)."""
    if name not in HSC_CUTOUTS:
        raise ModalityError(f"no shipped HSC cutout {name!r}; cutouts are {sorted(HSC_CUTOUTS)}")
    path = HSC_CUTOUTS[name]
    return read_fits(path) if path.suffix == ".fits" else read_npz(path)


def center_crop(m: Modality, size: int | tuple[int, int]) -> Modality:
    """Central (h, w) window of every image field (..., H, W) of ``m``; no padding."""
    h, w = (size, size) if isinstance(size, int) else size
    out = {}
    for field in m.tensor_fields():
        x = getattr(m, field)
        if x is None:
            continue
        H, W = x.shape[-2:]
        if h > H or w > W:
            raise ModalityError(f"{type(m).__name__}.{field}: cannot crop {H}x{W} pixels to {h}x{w} "
                                "(no padding: pixels are not invented)")
        top, left = (H - h) // 2, (W - w) // 2
        out[field] = x[..., top:top + h, left:left + w].contiguous()
    return m.replace(**out)


def load_hsc_cutouts(size: int | tuple[int, int] = 48) -> dict[str, HSCImage]:
    """Each shipped HSC cutout as an `HSCImage` batch of one, centre-cropped to ``size``:
    flux (1, 5, h, w), with variance and mask where the file has them (hsc_cosmos_35 only)."""
    return {name: center_crop(HSCImage.from_record(read_cutout(name), sample_id=name), size)
            for name in HSC_CUTOUTS}


def load_hsc_batch(size: int | tuple[int, int] = 48) -> HSCImage:
    """All shipped HSC cutouts as one batch: flux (3, 5, h, w) in `HSC_CUTOUTS` order. Variance
    and mask are dropped (only one cutout has them); ``cut_hsc`` is normalised, not calibrated."""
    cutouts = load_hsc_cutouts(size)
    return HSCImage.collate([HSCImage(flux=m.flux) for m in cutouts.values()])


def load_hsc_catalog() -> SourceCatalog:
    """The 6 detections of ``hsc_cosmos.npz`` (SEP catalogue): values (6, 6) = x, y, flux, a,
    b, theta. (``hsc_cosmos_35.npz``'s catalogue has only x, y.)"""
    return SourceCatalog.from_catalog(read_npz(HSC_CUTOUTS["hsc_cosmos"])["catalog"])
