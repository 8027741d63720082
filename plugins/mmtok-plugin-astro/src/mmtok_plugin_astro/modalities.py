"""Astronomy modalities: survey images (HSC, Legacy Survey), Gaia photometry, source catalogues.

Do not add ``from __future__ import annotations`` here: it would turn the jaxtyping shape
annotations into strings and mmtok refuses such modalities.

Every tensor field is batched on axis 0 (``b``). Images keep the survey's own pixel units
(``zero_point`` says which: ``mag = zero_point - 2.5 log10(pixel value)``); the image codecs
convert to nanomaggies (`mmtok_plugin_astro.preprocessing`). ``from_record`` builds a batch of
one sample from what a reader returned (``{key: numpy array}``) and raises `ModalityError` naming
the sample and the key when the record does not fit.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mmtok import Columns, Modality, ModalityError, stack_columns

from mmtok_plugin_astro.preprocessing import nanomaggies_per_unit

__all__ = ["HSCImage", "LegacySurveyImage", "GaiaPhotometry", "GaiaAstrometry", "SourceCatalog",
           "PIXEL_SCALE_TOLERANCE", "is_null"]

#: relative difference allowed between a file's pixel scale and the modality's ``pixel_scale``
PIXEL_SCALE_TOLERANCE = 0.01


def is_null(value: Any) -> bool:
    """True for a catalogue null: an empty CSV cell (``""``), NaN or None."""
    if value is None:
        return True
    arr = np.asarray(value)
    if arr.size != 1:
        return False
    if arr.dtype.kind in "US":
        return str(arr.reshape(())).strip() == ""
    return arr.dtype.kind == "f" and bool(np.isnan(arr))


def _where(sample_id: str | None) -> str:
    return f"sample {sample_id!r}: " if sample_id is not None else ""


def _synthetic_sky(batch_size: int, bands: int, size: int, noise: float, peak: float,
                   generator: torch.Generator | None) -> Tensor:
    """Gaussian sky noise plus one elliptical Gaussian galaxy per image (b, bands, size, size)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    u = torch.rand(batch_size, 5, generator=generator)
    cx = size / 2 + (u[:, 0] - 0.5) * size / 4
    cy = size / 2 + (u[:, 1] - 0.5) * size / 4
    sx, sy = 1.5 + 3 * u[:, 2], 1.5 + 3 * u[:, 3]
    blob = torch.exp(-0.5 * (((xx - cx[:, None, None]) / sx[:, None, None]) ** 2
                             + ((yy - cy[:, None, None]) / sy[:, None, None]) ** 2))
    colour = torch.linspace(0.6, 1.2, bands)  # redder bands brighter
    amplitude = peak * (0.2 + u[:, 4])[:, None, None, None] * colour[None, :, None, None]
    noise_map = noise * torch.randn(batch_size, bands, size, size, generator=generator)
    return amplitude * blob[:, None] + noise_map


class _SurveyImage:
    """Shared ``from_record`` of the survey image modalities.

    Subclasses set ``bands``, ``pixel_scale`` (arcsec / px), ``zero_point`` (mag) and
    ``record_keys``: field -> accepted record keys, the first being the flux field.
    """

    bands: ClassVar[tuple[str, ...]]
    pixel_scale: ClassVar[float]
    zero_point: ClassVar[float]
    record_keys: ClassVar[dict[str, tuple[str, ...]]]
    #: record keys a reader may return that the modality does not store
    ignored_keys: ClassVar[tuple[str, ...]] = ("psfs", "psf", "catalog", "filters",
                                               "pixel_scale_arcsec")

    @classmethod
    def nanomaggies_per_unit(cls) -> float:
        """Factor from this survey's pixel units to nanomaggies (zero point 22.5)."""
        return nanomaggies_per_unit(cls.zero_point)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], sample_id: str | None = None):
        """One sample (batch of 1) from a reader record.

        Accepted keys: see ``record_keys`` (e.g. the FITS reader's ``flux``, or the scarlet npz
        files' ``images`` / ``variance`` / ``mask``); ``filters`` and ``pixel_scale_arcsec`` are
        checked against ``bands`` and ``pixel_scale``; ``psfs`` and ``catalog`` are ignored.
        Every image array must be (len(bands), h, w).
        """
        where, name = _where(sample_id), cls.__name__
        alias = {key: field for field, keys in cls.record_keys.items() for key in keys}
        unknown = sorted(set(record) - set(alias) - set(cls.ignored_keys))
        if unknown:
            raise ModalityError(f"{where}{name}: unknown record key(s) {unknown}; accepted keys are "
                                f"{sorted(alias)} (ignored: {list(cls.ignored_keys)})")
        fields: dict[str, np.ndarray] = {}
        for key, value in record.items():
            if key not in alias:
                continue
            field = alias[key]
            if field in fields:
                raise ModalityError(f"{where}{name}: record has two arrays for {field!r} "
                                    f"(keys {[k for k in record if alias.get(k) == field]})")
            fields[field] = cls._check_bands(np.asarray(value), f"{where}{name}.{field}")
        flux_field = next(iter(cls.record_keys))
        if flux_field not in fields:
            raise ModalityError(f"{where}{name}.{flux_field}: no image in the record; expected one "
                                f"of the keys {list(cls.record_keys[flux_field])}, found {sorted(record)}")
        shapes = {f: a.shape for f, a in fields.items()}
        if len(set(shapes.values())) > 1:
            raise ModalityError(f"{where}{name}: arrays have different shapes {shapes}")
        if "filters" in record:
            filters = tuple(str(f) for f in np.asarray(record["filters"]).reshape(-1))
            if filters != tuple(cls.bands):
                raise ModalityError(f"{where}{name}: record filters {filters} do not match the "
                                    f"bands {tuple(cls.bands)}")
        if "pixel_scale_arcsec" in record:
            scale = float(np.asarray(record["pixel_scale_arcsec"]))
            if abs(scale / cls.pixel_scale - 1) > PIXEL_SCALE_TOLERANCE:
                raise ModalityError(
                    f"{where}{name}: pixel scale {scale:.4g} arcsec/px in the file, {name} is "
                    f"{cls.pixel_scale} arcsec/px; resample it first (mmtok_plugin_astro.SurveyAligner)")
        return cls.from_arrays(fields, sample_id=sample_id)

    @classmethod
    def _check_bands(cls, arr: np.ndarray, what: str) -> np.ndarray:
        n, names = len(cls.bands), ", ".join(cls.bands)
        if arr.dtype.kind not in "biuf":
            raise ModalityError(f"{what}: expected a numeric array, found dtype {arr.dtype}")
        if arr.ndim != 3:
            raise ModalityError(f"{what}: expected an array ({n} bands, h, w) with bands ({names}), "
                                f"found shape {arr.shape}")
        if arr.shape[0] != n:
            raise ModalityError(f"{what}: expected {n} bands ({names}), found {arr.shape[0]}")
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)  # FITS data is big-endian

    def _check_non_negative(self, field: str) -> None:
        value = getattr(self, field)
        if value is not None and bool((value < 0).any()):
            raise ModalityError(f"{type(self).__name__}.{field}: must be >= 0, found "
                                f"{int((value < 0).sum())} negative value(s)")


@dataclass(frozen=True, eq=False)
class HSCImage(_SurveyImage, Modality):
    """Hyper Suprime-Cam (HSC-SSP) coadd cutouts, bands g, r, i, z, y at 0.168 arcsec/px.

    flux: (b, 5, h, w) in HSC coadd units (zero point 27.0 mag, assumed, see README);
    variance: (b, 5, h, w) per-pixel variance of flux, optional;
    mask: (b, 5, h, w) integer HSC pipeline mask bits, optional.
    """

    name: ClassVar[str] = "hsc_image"
    bands: ClassVar[tuple[str, ...]] = ("g", "r", "i", "z", "y")
    pixel_scale: ClassVar[float] = 0.168
    zero_point: ClassVar[float] = 27.0
    record_keys: ClassVar[dict[str, tuple[str, ...]]] = {
        "flux": ("flux", "images", "image", "data"), "variance": ("variance",), "mask": ("mask",)}

    flux: Float[Tensor, "b 5 h w"]
    variance: Float[Tensor, "b 5 h w"] | None = None
    mask: Int[Tensor, "b 5 h w"] | None = None

    def check(self) -> None:
        super().check()
        self._check_non_negative("variance")

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "HSCImage":
        """Synthetic galaxies on sky noise (not real data), 5 x 48 x 48: fits `hsc-image-fsq`."""
        flux = _synthetic_sky(batch_size, 5, 48, noise=0.02, peak=5.0, generator=generator)
        variance = torch.full_like(flux, 0.02 ** 2)
        return cls(flux=flux, variance=variance, mask=torch.zeros(flux.shape, dtype=torch.int32))


@dataclass(frozen=True, eq=False)
class LegacySurveyImage(_SurveyImage, Modality):
    """DESI Legacy Imaging Surveys cutouts, bands g, r, i, z at 0.262 arcsec/px.

    flux: (b, 4, h, w) in nanomaggies (zero point 22.5 mag);
    ivar: (b, 4, h, w) inverse variance of flux, optional.
    """

    name: ClassVar[str] = "legacy_survey_image"
    bands: ClassVar[tuple[str, ...]] = ("g", "r", "i", "z")
    pixel_scale: ClassVar[float] = 0.262
    zero_point: ClassVar[float] = 22.5
    record_keys: ClassVar[dict[str, tuple[str, ...]]] = {
        "flux": ("flux", "images", "image", "data"), "ivar": ("ivar", "invvar")}

    flux: Float[Tensor, "b 4 h w"]
    ivar: Float[Tensor, "b 4 h w"] | None = None

    def check(self) -> None:
        super().check()
        self._check_non_negative("ivar")

    @classmethod
    def example(cls, batch_size: int = 2,
                generator: torch.Generator | None = None) -> "LegacySurveyImage":
        """Synthetic galaxies on sky noise (not real data), 4 x 32 x 32: fits `legacy-image-fsq`."""
        flux = _synthetic_sky(batch_size, 4, 32, noise=0.005, peak=1.0, generator=generator)
        return cls(flux=flux, ivar=torch.full_like(flux, 0.005 ** -2))


@dataclass(frozen=True, eq=False)
class _CatalogColumns(Columns):
    """A `Columns` table of the astro files: ``from_record`` refuses a whole ``catalog`` table
    (the scarlet npz files carry one), and ``from_catalog`` / ``to_catalog`` are the catalogue
    names of ``from_frame`` / ``to_frame``."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any], sample_id: str | None = None):
        """One row (batch of 1): either ``{"values": (c,)}`` or one number per named column
        (extra keys, e.g. an id or coordinates, are ignored)."""
        if "catalog" in record:
            rows = np.asarray(record["catalog"]).shape
            raise ModalityError(f"{_where(sample_id)}{cls.__name__}.from_record builds one row; the "
                                f"record holds a 'catalog' table of shape {rows}: use "
                                f"{cls.__name__}.from_catalog")
        nulls = [c for c in cls.columns if c in record and is_null(record[c])]
        if nulls:  # a null is an absent measurement, never a number (and never a silent 0)
            raise ModalityError(f"{_where(sample_id)}{cls.__name__}: column(s) {nulls} are null (empty "
                                f"or NaN) for this source; expected a number in every column of "
                                f"{list(cls.columns)}. {cls.null_hint}")
        return super().from_record(record, sample_id=sample_id)

    #: what to do about a null, appended to the error
    null_hint: ClassVar[str] = "Leave this modality out of the sample."

    @classmethod
    def from_catalog(cls, catalog: Any):
        """Many rows: a numpy structured array or a mapping of 1-D columns (n rows) -> batch of
        n, values (n, c) in ``columns`` order. A null (NaN) is refused with the rows that hold
        it: select the complete rows first (`complete_rows`)."""
        values = stack_columns(catalog, cls.columns, where=f"{cls.__name__}.from_catalog")
        bad = torch.nonzero(~torch.isfinite(values).all(dim=1)).flatten().tolist()
        if bad:
            raise ModalityError(f"{cls.__name__}.from_catalog: {len(bad)} row(s) {bad[:8]} have a null "
                                f"(NaN) in {list(cls.columns)}; expected numbers. {cls.null_hint}")
        return cls(values=values)

    @classmethod
    def complete_rows(cls, catalog: Any) -> np.ndarray:
        """Bool mask (n,): rows with a number in every column of ``columns`` (no null)."""
        values = stack_columns(catalog, cls.columns, where=f"{cls.__name__}.complete_rows")
        return torch.isfinite(values).all(dim=1).numpy()

    def to_catalog(self) -> dict[str, np.ndarray]:
        """Batch -> {column: float32 array (b,)}."""
        return self.to_frame()


@dataclass(frozen=True, eq=False)
class GaiaPhotometry(_CatalogColumns):
    """Gaia DR3 mean photometry of a source (Gaia is not imaging): values (b, 3) = G, BP, RP mean
    Vega magnitudes, named as in the Gaia archive's ``gaia_source`` table. A source without BP /
    RP (null in the archive) is refused, never filled in: leave the modality out of that sample."""

    name: ClassVar[str] = "gaia_photometry"
    bands: ClassVar[tuple[str, ...]] = ("G", "BP", "RP")
    columns: ClassVar[tuple[str, ...]] = ("phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag")
    units: ClassVar[tuple[str, ...]] = ("mag", "mag", "mag")
    null_hint: ClassVar[str] = ("Gaia has no BP/RP for some faint sources: leave 'gaia_photometry' "
                                "out of this sample instead of filling in a value")

    @classmethod
    def example(cls, batch_size: int = 2,
                generator: torch.Generator | None = None) -> "GaiaPhotometry":
        """Synthetic stars (not real data): G in [12, 20], BP - RP in [0.5, 2.5]."""
        u = torch.rand(batch_size, 2, generator=generator)
        g, colour = 12 + 8 * u[:, 0], 0.5 + 2 * u[:, 1]
        return cls(values=torch.stack([g, g + 0.4 * colour, g - 0.6 * colour], dim=1))


@dataclass(frozen=True, eq=False)
class GaiaAstrometry(_CatalogColumns):
    """Gaia DR3 astrometry of a source: values (b, 3) = parallax (mas), pmra, pmdec (mas / yr),
    named as in the archive's ``gaia_source`` table. Parallax is the measurement, so it may be
    negative for distant, faint sources. Sources with only a 2-parameter solution have null
    parallax and proper motion: they have no ``gaia_astrometry`` (refused, never filled in)."""

    name: ClassVar[str] = "gaia_astrometry"
    columns: ClassVar[tuple[str, ...]] = ("parallax", "pmra", "pmdec")
    units: ClassVar[tuple[str, ...]] = ("mas", "mas/yr", "mas/yr")
    null_hint: ClassVar[str] = ("Gaia DR3 sources with a 2-parameter solution have no parallax or proper "
                                "motion: leave 'gaia_astrometry' out of this sample")

    @classmethod
    def example(cls, batch_size: int = 2,
                generator: torch.Generator | None = None) -> "GaiaAstrometry":
        """Synthetic sources (not real data): parallax in [-1, 3] mas, proper motions ~ 10 mas/yr."""
        u = torch.rand(batch_size, 1, generator=generator)
        pm = 10 * torch.randn(batch_size, 2, generator=generator)
        return cls(values=torch.cat([-1 + 4 * u, pm], dim=1))


@dataclass(frozen=True, eq=False)
class SourceCatalog(_CatalogColumns):
    """Per-object values of a SEP / SExtractor-style detection catalogue, one row per object:
    values (b, 6) = x, y (pixel centroid in its cutout), flux (sum in the image's units),
    a, b (semi-major / semi-minor axes, px), theta (position angle, radians), as in the
    ``catalog`` record of ``hsc_cosmos.npz``."""

    name: ClassVar[str] = "source_catalog"
    columns: ClassVar[tuple[str, ...]] = ("x", "y", "flux", "a", "b", "theta")

    @classmethod
    def example(cls, batch_size: int = 2,
                generator: torch.Generator | None = None) -> "SourceCatalog":
        """Synthetic detections (not real data) in a 48 x 48 cutout."""
        u = torch.rand(batch_size, 6, generator=generator)
        a = 1 + 4 * u[:, 3]
        return cls(values=torch.stack([48 * u[:, 0], 48 * u[:, 1], torch.exp(6 * u[:, 2]), a,
                                       a * (0.3 + 0.7 * u[:, 4]), math.pi * (u[:, 5] - 0.5)], dim=1))
