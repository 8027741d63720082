"""Hyperspectral modalities: `HSICube` and the co-registered auxiliary images of the seed.

`HSICube`: reflectance (b, bands, h, w), wavelengths (b, bands) strictly increasing, an
optional band mask (True = valid; False for water-absorption / dead bands). Auxiliary images lie
on the cube's pixel grid (checked per sample by the plugin's sample checks):
`InfraredImage`, `AutofluorescenceImage`, `ThicknessMap` (1 or 3 channels, the seed's IR / AF /
thickness images) and `ElevationMap` (a LiDAR DSM, optionally with its attribute profiles as
further channels: Houston 2013 has 21).

Record layouts (what readers return): a cube is ``reflectance`` (bands, h, w), or ``cube`` /
``data`` / the one 3-D array of a MATLAB file in the field's (h, w, bands) layout; a record's
``layout`` ("bhw" / "hwb") overrides. Wavelengths come as ``wavelength_nm`` or ``wavelength``,
the mask as ``band_mask`` or ENVI's ``bbl`` (bad band list, 1 = good). Masked bands may hold NaN
in a file; `HSICube.from_record` sets them to 0, since no codec reads them.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mmtok import Modality, ModalityError

__all__ = ["HSICube", "AuxiliaryImage", "InfraredImage", "AutofluorescenceImage", "ThicknessMap",
           "ElevationMap", "AUXILIARIES", "check_coregistered", "CONSTANT_BAND_MIN_PIXELS"]

#: a band with one value over at least this many pixels is a dead detector or a fill value
CONSTANT_BAND_MIN_PIXELS = 16

_CUBE_KEYS = ("reflectance", "cube", "data", "radiance")
_WAVELENGTH_KEYS = ("wavelength_nm", "wavelength", "wavelengths")
_MASK_KEYS = ("band_mask", "bbl")


def _where(sample_id: str | None) -> str:
    return f"sample {sample_id!r}: " if sample_id is not None else ""


def _band(i: int, wl: Tensor) -> str:
    return f"band {i} ({float(wl[i]):.1f} nm)"


@dataclass(frozen=True, eq=False)
class HSICube(Modality):
    """Hyperspectral cubes. reflectance: (b, bands, h, w); wavelength_nm: (b, bands), strictly
    increasing; band_mask: (b, bands) bool, True = valid band (None: all valid)."""

    name: ClassVar[str] = "hsi_cube"
    reflectance: Float[Tensor, "b bands h w"]
    wavelength_nm: Float[Tensor, "b bands"]
    band_mask: Bool[Tensor, "b bands"] | None = None

    def check(self) -> None:
        r, wl, mask = self.reflectance, self.wavelength_nm, self.band_mask
        if isinstance(r, Tensor) and r.ndim != 4:
            hint = (" (a 2-D image or a table of spectra is not a cube; per-pixel spectra are cubes of "
                    "1 x 1 pixels: reshape to (n, bands, 1, 1))") if r.ndim in (2, 3) else ""
            raise ModalityError(f"HSICube.reflectance: expected a cube (b, bands, h, w), found {r.ndim}-D shape "
                                f"{tuple(r.shape)}{hint}")
        if isinstance(r, Tensor) and isinstance(wl, Tensor) and wl.ndim == 2 and wl.shape != r.shape[:2]:
            raise ModalityError(f"HSICube.wavelength_nm: expected one wavelength per band, shape "
                                f"{tuple(r.shape[:2])}, found {tuple(wl.shape)} "
                                f"({wl.shape[-1]} wavelengths for {r.shape[1]} bands)")
        if isinstance(r, Tensor) and r.is_floating_point() and isinstance(wl, Tensor) and wl.ndim == 2:
            self._check_bad_bands(r, wl, mask)
        super().check()  # shapes and dtypes (jaxtyping), finiteness
        steps = wl[:, 1:] - wl[:, :-1]
        if bool((steps <= 0).any()):
            row, i = (int(v) for v in (steps <= 0).nonzero()[0])
            raise ModalityError(
                f"HSICube.wavelength_nm: must be strictly increasing; row {row} has "
                f"{float(wl[row, i]):.2f} nm at band {i} followed by {float(wl[row, i + 1]):.2f} nm at band "
                f"{i + 1} (sort the bands by wavelength, reordering reflectance the same way)")

    @staticmethod
    def _check_bad_bands(r: Tensor, wl: Tensor, mask: Tensor | None) -> None:
        """NaN / inf or constant bands must be covered by the band mask."""
        valid = torch.ones(r.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
        if valid.shape != r.shape[:2]:
            return  # the shape check reports it
        finite = torch.isfinite(r).flatten(2)  # (b, bands, h*w)
        bad = ~finite.all(2)
        if bool((bad & valid).any()):
            row, i = (int(v) for v in (bad & valid).nonzero()[0])
            n = int((~finite[row, i]).sum())
            raise ModalityError(
                f"HSICube.reflectance: row {row}, {_band(i, wl[row])} has {n} NaN/inf of {finite.shape[2]} pixels "
                "and is not excluded by band_mask (set band_mask False for it, or fix the data)")
        if bool(bad.any()):
            raise ModalityError("HSICube.reflectance: masked bands hold NaN/inf; set them to 0 (from_record does)")
        pixels = r.shape[2] * r.shape[3]
        if pixels >= CONSTANT_BAND_MIN_PIXELS:
            flat = r.flatten(2)
            constant = (flat.amax(2) == flat.amin(2)) & valid
            if bool(constant.any()):
                row, i = (int(v) for v in constant.nonzero()[0])
                raise ModalityError(
                    f"HSICube.reflectance: row {row}, {_band(i, wl[row])} is constant ({float(flat[row, i, 0]):g} "
                    f"at all {pixels} pixels): a dead detector or fill value not excluded by band_mask "
                    "(set band_mask False for it)")

    # ------------------------------------------------------------------ records
    @classmethod
    def from_record(cls, record: dict, *, sample_id: str | None = None) -> "HSICube":
        where = _where(sample_id)
        key = next((k for k in _CUBE_KEYS if k in record), None)
        if key is None:
            cubes = [k for k, v in record.items() if np.ndim(v) == 3]
            if len(cubes) != 1:
                raise ModalityError(f"{where}HSICube needs 'reflectance' (bands, h, w) or one 3-D array "
                                    f"(h, w, bands); found {sorted(record)}"
                                    + (f" with 3-D arrays {cubes}" if cubes else ""))
            key = cubes[0]
        cube = np.asarray(record[key])
        if cube.ndim != 3:
            raise ModalityError(f"{where}HSICube.{key}: expected a 3-D cube, found {cube.ndim}-D shape {cube.shape}"
                                + (" (a 2-D image is not a hyperspectral cube)" if cube.ndim == 2 else ""))
        if cube.dtype.kind not in "biuf":
            raise ModalityError(f"{where}HSICube.{key}: expected numbers, found dtype {cube.dtype}")
        layout = str(np.asarray(record.get("layout", "bhw" if key == "reflectance" else "hwb")))
        if layout not in ("bhw", "hwb"):
            raise ModalityError(f"{where}HSICube.layout: expected 'bhw' or 'hwb', found {layout!r}")
        if layout == "hwb":
            cube = np.moveaxis(cube, -1, 0)
        wl_key = next((k for k in _WAVELENGTH_KEYS if k in record), None)
        if wl_key is None:
            raise ModalityError(f"{where}HSICube.wavelength_nm: missing (the file has no wavelength table; "
                                f"found {sorted(record)}); pass wavelength_nm in the manifest entry")
        wl = np.asarray(record[wl_key], dtype=np.float64).reshape(-1)
        mask_key = next((k for k in _MASK_KEYS if k in record), None)
        mask = None
        if mask_key is not None:
            mask = np.asarray(record[mask_key]).reshape(-1)
            if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
                raise ModalityError(f"{where}HSICube.{mask_key}: expected 0/1 or bools per band, found "
                                    f"{np.unique(mask)[:5].tolist()}")
            mask = mask.astype(bool)
            if mask.shape[0] == cube.shape[0]:
                cube = cube.astype(np.float32, copy=True)
                cube[~mask] = np.where(np.isfinite(cube[~mask]), cube[~mask], 0.0)
        return cls.from_arrays({"reflectance": np.array(cube, dtype=np.float32), "wavelength_nm": wl,
                                "band_mask": mask}, sample_id=sample_id)

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "HSICube":
        """Smooth random spectra, 200 bands over 400–2500 nm, 16 x 16 px, band 50 masked."""
        g = generator
        base = torch.rand(batch_size, 4, 1, 16, 16, generator=g)
        shape = torch.linspace(0, 1, 200).view(1, 1, 200, 1, 1)
        spectra = (base * torch.stack([torch.sin(3 * k * shape + k) for k in range(4)], 1)[:, :, 0]).sum(1)
        r = 0.3 + 0.1 * spectra + 0.01 * torch.randn(batch_size, 200, 16, 16, generator=g)
        mask = torch.ones(batch_size, 200, dtype=torch.bool)
        mask[:, 50] = False
        return cls(reflectance=r, wavelength_nm=torch.linspace(400.0, 2500.0, 200).expand(batch_size, -1).clone(),
                   band_mask=mask)


@dataclass(frozen=True, eq=False)
class AuxiliaryImage(Modality):
    """Family base of the auxiliary images: pixels (b, c, h, w) on the cube's grid.

    Subclasses set ``name`` and ``channel_counts`` (the allowed c; None = any)."""

    pixels: Float[Tensor, "b c h w"]
    channel_counts: ClassVar[tuple[int, ...] | None] = (1, 3)

    def check(self) -> None:
        super().check()
        c = self.pixels.shape[1]
        if self.channel_counts is not None and c not in self.channel_counts:
            allowed = " or ".join(map(str, self.channel_counts))
            raise ModalityError(f"{type(self).__name__}.pixels: expected {allowed} channels (grey or RGB), "
                                f"found {c} in shape {tuple(self.pixels.shape)}")

    @classmethod
    def from_record(cls, record: dict, *, sample_id: str | None = None) -> "AuxiliaryImage":
        where = _where(sample_id)
        arrays = {k: v for k, v in record.items() if k != "layout" and np.ndim(v) in (2, 3)}
        key = "pixels" if "pixels" in record else "data" if "data" in record else (
            next(iter(arrays)) if len(arrays) == 1 else None)
        if key is None:
            raise ModalityError(f"{where}{cls.__name__} needs 'pixels' (c, h, w) or one 2-D / 3-D array; "
                                f"found {sorted(record)}")
        a = np.asarray(record[key])
        if a.ndim == 2:
            a = a[None]
        elif a.ndim != 3:
            raise ModalityError(f"{where}{cls.__name__}.{key}: expected an image (c, h, w) or (h, w), found "
                                f"{a.ndim}-D shape {a.shape}")
        layout = str(np.asarray(record.get("layout", "")))
        # (h, w, 1 | 3) is unambiguous for grey / RGB classes; multi-channel maps must say "hwc"
        looks_hwc = cls.channel_counts is not None and a.shape[-1] in cls.channel_counts \
            and a.shape[0] not in cls.channel_counts
        if layout == "hwc" or (not layout and looks_hwc):
            a = np.moveaxis(a, -1, 0)
        elif layout not in ("", "chw"):
            raise ModalityError(f"{where}{cls.__name__}.layout: expected 'chw' or 'hwc', found {layout!r}")
        if a.dtype.kind not in "biuf":
            raise ModalityError(f"{where}{cls.__name__}.{key}: expected numbers, found dtype {a.dtype}")
        return cls.from_arrays({"pixels": a.astype(np.float32)}, sample_id=sample_id)

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None):
        c = 1 if cls.channel_counts is None else cls.channel_counts[0]
        return cls(pixels=torch.rand(batch_size, c, 16, 16, generator=generator))


@dataclass(frozen=True, eq=False)
class InfraredImage(AuxiliaryImage):
    """Infrared image co-registered with the cube (seed: IR). pixels: (b, 1 | 3, h, w)."""
    name: ClassVar[str] = "infrared_image"


@dataclass(frozen=True, eq=False)
class AutofluorescenceImage(AuxiliaryImage):
    """Autofluorescence image co-registered with the cube (seed: AF). pixels: (b, 1 | 3, h, w)."""
    name: ClassVar[str] = "autofluorescence_image"


@dataclass(frozen=True, eq=False)
class ThicknessMap(AuxiliaryImage):
    """Thickness map co-registered with the cube (seed: thickness, e.g. retinal OCT thickness).
    pixels: (b, 1 | 3, h, w)."""
    name: ClassVar[str] = "thickness_map"


@dataclass(frozen=True, eq=False)
class ElevationMap(AuxiliaryImage):
    """LiDAR elevation co-registered with the cube: channel 0 (or the last, as in Houston 2013)
    the DSM, further channels its morphological / attribute profiles. pixels: (b, c >= 1, h, w)."""
    name: ClassVar[str] = "elevation_map"
    channel_counts: ClassVar[tuple[int, ...] | None] = None


#: the auxiliary modality classes by name
AUXILIARIES: dict[str, type[AuxiliaryImage]] = {
    c.name: c for c in (InfraredImage, AutofluorescenceImage, ThicknessMap, ElevationMap)}


def check_coregistered(cube: HSICube, aux: AuxiliaryImage) -> None:
    """Raise `ModalityError` unless ``aux`` lies on ``cube``'s pixel grid (same h x w)."""
    grid, found = tuple(cube.reflectance.shape[2:]), tuple(aux.pixels.shape[2:])
    if grid != found:
        raise ModalityError(f"{type(aux).__name__}.pixels: grid {found[0]} x {found[1]} does not match the HSI "
                            f"cube's {grid[0]} x {grid[1]}; auxiliary images must be co-registered with the cube "
                            "(resample / crop them onto its pixel grid first)")

