"""HSI codecs.

`HSICubeCodec`: the core 3D patch codec (`mmtok.VolumeCodec`) over the spectral axis and the two
spatial axes of a cube. Any sensor's cube is first resampled onto the codec's wavelength grid
(``size[0]`` bands equally spaced over ``wavelength_range_nm``, from the valid bands only, see
`mmtok_plugin_hsi.preprocessing`), so Indian Pines (200 bands), Jasper Ridge (198) and a new
sensor share one vocabulary. One token per ``patch`` = (bands, rows, cols) voxels: SpectralGPT's
12 bands x 8 x 8 px by default; ``patch: [12, 1, 1]`` with ``size: [bands, 1, 1]`` tokenizes
per-pixel spectra (``spatial: center`` takes the centre pixel of a larger, pixel-centred chip). FSQ by default, continuous with ``quantizer: {kind: continuous}``. Decoding
gives reflectance on the codec's wavelength grid.

The auxiliary images use mmtok's `ImageCodec` (2D patches) directly, configured in `plugin.py`.
"""

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mmtok import ModalityError, PatchCodecConfig, VolumeCodec
from mmtok_plugin_hsi.modalities import HSICube
from mmtok_plugin_hsi.preprocessing import coverage_problem, resample_bands, uniform_grid

__all__ = ["HSICubeCodecConfig", "HSICubeCodec"]


class HSICubeCodecConfig(PatchCodecConfig):
    channels: int = Field(1, ge=1, le=1, description="the cube is one channel of a (bands, h, w) volume")
    size: list[int] = Field(default_factory=lambda: [192, 16, 16], min_length=3, max_length=3,
                            description="(bands on the codec's grid, rows, cols)")
    patch: list[int] = Field(default_factory=lambda: [12, 8, 8], min_length=3, max_length=3,
                             description="(bands, rows, cols) per token")
    wavelength_range_nm: list[float] = Field(default_factory=lambda: [400.0, 2500.0], min_length=2, max_length=2)
    coverage_tolerance_nm: float = Field(25.0, ge=0, description="how far a cube's valid bands may stop short "
                                                                  "of the grid's ends (nearest band used there)")
    spatial: Literal["exact", "center"] = Field(
        "exact", description="exact: cubes must have the codec's rows x cols; center: a larger cube is cropped to "
                             "its centre (e.g. the centre pixel of pixel-centred chips for a per-pixel codec)")

    @model_validator(mode="after")
    def _increasing_range(self):
        lo, hi = self.wavelength_range_nm
        if not hi > lo:
            raise ValueError(f"wavelength_range_nm must be increasing, found {self.wavelength_range_nm}")
        return self


class HSICubeCodec(VolumeCodec):
    """Cube (b, bands_in, h, w) on any wavelength axis -> resample to ``size[0]`` bands ->
    (b, 1, bands, h, w) -> 3D patch tokens, grid (bands / pb, h / ph, w / pw)."""

    config_class = HSICubeCodecConfig
    family: ClassVar[str] = "hsi-cube-patch"
    default_modality = HSICube

    def __init__(self, config, modality=None, name=None):
        super().__init__(config, modality, name)
        cfg: HSICubeCodecConfig = self.config
        self.register_buffer("wavelength_grid", uniform_grid(*cfg.wavelength_range_nm, cfg.size[0]),
                             persistent=False)

    def _resampled(self, m: HSICube) -> Tensor:
        """Reflectance on the codec's wavelength grid: (b, bands, h, w), checked."""
        cfg: HSICubeCodecConfig = self.config
        rows, cols = cfg.size[1:]
        found = tuple(m.reflectance.shape[2:])
        reflectance = m.reflectance
        if found != (rows, cols) and cfg.spatial == "center" and found[0] >= rows and found[1] >= cols:
            r0, c0 = (found[0] - rows) // 2, (found[1] - cols) // 2
            reflectance, found = reflectance[:, :, r0:r0 + rows, c0:c0 + cols], (rows, cols)
        if found != (rows, cols):
            raise ModalityError(
                f"{self.name}: HSICube.reflectance has {found[0]} x {found[1]} pixels, this codec tokenizes "
                f"{rows} x {cols} chips; cut the scene into chips first (mmtok_plugin_hsi.chips.tile), or "
                "configure the codec's size" + (" (spatial: center crops larger cubes only)"
                                                if cfg.spatial == "center" else ""))
        problem = coverage_problem(m.wavelength_nm, m.band_mask, *cfg.wavelength_range_nm,
                                   cfg.coverage_tolerance_nm)
        if problem:
            raise ModalityError(f"{self.name}: HSICube.wavelength_nm: {problem}; configure the codec's "
                                "wavelength_range_nm for this sensor")
        return resample_bands(reflectance, m.wavelength_nm, self.wavelength_grid.cpu(), m.band_mask)

    def to_tensor(self, m: HSICube) -> Tensor:
        return self._resampled(m).unsqueeze(1)

    def decoded_shape(self, m: HSICube) -> tuple[int, ...]:
        return (len(m), *self.config.size)

    def reconstruction_target(self, m: HSICube) -> Tensor:
        """The input resampled onto the codec's wavelength grid: (b, bands, h, w)."""
        return self._resampled(m)

    def from_tensor(self, x: Tensor, **fields) -> HSICube:
        # the tokens live on the codec's own wavelength grid, with every band valid: the input's
        # wavelengths and mask (passed through by callers) do not apply to the reconstruction
        fields.pop("wavelength_nm", None)
        fields.pop("band_mask", None)
        grid = self.wavelength_grid.to(x.device).expand(x.shape[0], -1).clone()
        return HSICube(reflectance=x[:, 0], wavelength_nm=grid, **fields)
