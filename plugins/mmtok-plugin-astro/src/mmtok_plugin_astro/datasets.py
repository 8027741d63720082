"""The real HSC cutouts shipped in ``data/`` (origin and licence: data/DATA.md).

Three HSC COSMOS grizy cutouts from the scarlet deblender's test data, of different sizes:

- ``hsc_cosmos_35`` (hsc_cosmos_35.npz): flux (5, 58, 48), variance, mask (HSC mask bits)
- ``hsc_cosmos`` (hsc_cosmos.npz): flux (5, 69, 57), no variance / mask
- ``cut_hsc`` (Cut_HSC.fits): flux (5, 50, 50), WCS 0.168"/px, no variance / mask

Pixel units are not documented in the files: the npz cutouts are taken to be HSC coadd units
(zero point 27.0, assumed); Cut_HSC.fits is normalised (each band sums to 1999.0).
``Cut_HST.fits`` is one HST band (250, 250) at 0.03"/px over the same area as ``Cut_HSC.fits``.

``hsc_source_crops`` cuts them into the multisurvey example's samples: one 24 x 24 crop per
catalogued source. ``gaia_dr3_cone_search_50.csv`` is 50 real Gaia DR3 sources of another sky
field (RA 280, Dec -60): ``read_gaia_catalog`` / ``load_gaia``.
"""

from pathlib import Path

import numpy as np

from mmtok import Modality, ModalityError, read_csv, read_npz

from mmtok_plugin_astro.modalities import HSCImage, SourceCatalog, is_null
from mmtok_plugin_astro.readers import read_fits

__all__ = ["DATA_DIR", "HSC_CUTOUTS", "HST_FITS", "GAIA_CSV", "GAIA_TEST_EVERY", "read_cutout",
           "center_crop", "load_hsc_cutouts", "load_hsc_batch", "load_hsc_catalog",
           "hsc_source_crops", "read_gaia_catalog", "gaia_split", "load_gaia"]

DATA_DIR = Path(__file__).parent / "data"
#: cutout name -> shipped file
HSC_CUTOUTS = {"hsc_cosmos_35": DATA_DIR / "hsc_cosmos_35.npz",
               "hsc_cosmos": DATA_DIR / "hsc_cosmos.npz",
               "cut_hsc": DATA_DIR / "Cut_HSC.fits"}
HST_FITS = DATA_DIR / "Cut_HST.fits"
#: 50 Gaia DR3 sources (astroquery's cone-search test fixture, 25 key columns; see data/DATA.md)
GAIA_CSV = DATA_DIR / "gaia_dr3_cone_search_50.csv"
#: the fixed Gaia split of the pretrained codecs: rows 4, 9, 14, ... (file order) are held out
GAIA_TEST_EVERY = 5


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


def _crop_window(shape: tuple[int, ...], x: float, y: float, size: int) -> tuple[slice, slice]:
    """size x size window centred on (x, y) (pixels), moved inside an image of ``shape[-2:]``."""
    h, w = shape[-2:]
    top = int(np.clip(round(y) - size // 2, 0, h - size))
    left = int(np.clip(round(x) - size // 2, 0, w - size))
    return slice(top, top + size), slice(left, left + size)


def hsc_source_crops(size: int = 24) -> dict[str, dict]:
    """The multisurvey example's HSC samples: one ``size`` x ``size`` grizy crop per catalogued
    source of ``hsc_cosmos_35`` (7) and ``hsc_cosmos`` (6), plus the centre of ``cut_hsc`` (14).

    sample id -> {"field": cutout name, "record": reader-style record (``images`` (5, s, s) with
    ``filters``, ``variance`` and ``mask`` where the file has them; ``flux`` for cut_hsc),
    "catalog": {x, y, flux, a, b, theta} or None (only hsc_cosmos has a full SEP record)}."""
    out: dict[str, dict] = {}
    for field in ("hsc_cosmos_35", "hsc_cosmos"):
        record = read_cutout(field)
        cat = record["catalog"]
        for i, src in enumerate(cat):
            ys, xs = _crop_window(record["images"].shape, float(src["x"]), float(src["y"]), size)
            arrays = {"images": record["images"][:, ys, xs], "filters": record["filters"]}
            for extra in ("variance", "mask"):
                if extra in record:
                    arrays[extra] = record[extra][:, ys, xs]
            row = ({c: float(src[c]) for c in SourceCatalog.columns}
                   if "flux" in cat.dtype.names else None)
            out[f"{field}-{i}"] = {"field": field, "record": arrays, "catalog": row}
    cut = read_cutout("cut_hsc")["flux"]
    ys, xs = _crop_window(cut.shape, cut.shape[-1] / 2, cut.shape[-2] / 2, size)
    out["cut_hsc-centre"] = {"field": "cut_hsc", "record": {"flux": cut[:, ys, xs]}, "catalog": None}
    return out


def read_gaia_catalog() -> dict[str, np.ndarray]:
    """The shipped Gaia CSV as columns (50 rows each). Numeric columns are float64 with NaN where
    the archive has a null (an empty cell), text columns (``designation``...) are str.
    ``source_id`` is int64: 19-digit ids do not survive float64."""
    raw = read_csv(GAIA_CSV)
    out: dict[str, np.ndarray] = {}
    for name, col in raw.items():
        if name == "source_id":
            with open(GAIA_CSV) as fh:  # exact integers, not the float64 of read_csv
                fh.readline()
                out[name] = np.asarray([int(line.split(",", 1)[0]) for line in fh], dtype=np.int64)
        elif col.dtype.kind == "U":
            try:
                out[name] = np.asarray([np.nan if is_null(v) else float(v) for v in col])
            except ValueError:  # a text column (designation, the has_xp_* flags)
                out[name] = col
        else:
            out[name] = col
    return out


def gaia_split(split: str) -> np.ndarray:
    """Bool mask (50,) of the Gaia rows in ``split``: "train" (40), "test" (every
    `GAIA_TEST_EVERY`-th row in file order, 10, held out from the pretrained codecs) or "all"."""
    index = np.arange(len(read_gaia_catalog()["designation"]))
    test = index % GAIA_TEST_EVERY == GAIA_TEST_EVERY - 1
    if split not in ("train", "test", "all"):
        raise ModalityError(f"Gaia split must be 'train', 'test' or 'all', found {split!r}")
    return test if split == "test" else ~test if split == "train" else np.ones_like(test)


def load_gaia(modality: type, split: str = "all") -> tuple[list[str], Modality]:
    """(designations, batch) of the Gaia sources in ``split`` that have every column of
    ``modality`` (`GaiaPhotometry`: all 50; `GaiaAstrometry`: the 44 with a 5-parameter solution).
    Sources with a null are left out, never filled in."""
    cat = read_gaia_catalog()
    keep = gaia_split(split) & modality.complete_rows(cat)
    rows = {c: cat[c][keep] for c in modality.columns}
    return [str(d) for d in cat["designation"][keep]], modality.from_catalog(rows)
