"""CT preprocessing: resample to a target spacing, crop / pad to a fixed shape, HU windowing
to [0, 1]. Volumes are (b, 1, d, h, w) tensors in the canonical layout; masks go through the
same geometry with nearest-neighbour resampling, so they stay voxel-aligned.

    cfg = CTPreprocessConfig(window="soft_tissue", spacing_mm=[3, 1.5, 1.5], size=[16, 64, 64])
    x = preprocess_volume(hu, spacing, cfg)        # (b, 1, 16, 64, 64) in [0, 1]
"""

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from mmtok import ModalityError

__all__ = ["WINDOWS", "Window", "CTPreprocessConfig", "window_hu", "unwindow", "resample",
           "crop_or_pad", "preprocess_volume", "preprocess_mask"]

#: named HU windows: (centre, width). Soft tissue 40/400 as in the seed; lung and bone as in
#: common radiology practice.
WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
    "full": (1000.0, 4000.0),  # -1000 ... 3000 HU: nothing clipped but metal
}


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")
    center: float
    width: float = Field(gt=0)


class CTPreprocessConfig(BaseModel):
    """window: a preset name or {center, width}; spacing_mm: target voxel size (d, h, w), None
    keeps the input's; size: output grid (d, h, w); crop: "center" or "start"; pad_hu: value of
    voxels added by padding (air)."""

    model_config = ConfigDict(extra="forbid")
    window: str | Window = "soft_tissue"
    spacing_mm: list[float] | None = Field(None, min_length=3, max_length=3)
    size: list[int] = Field(default_factory=lambda: [64, 512, 512], min_length=3, max_length=3)
    crop: str = Field("center", pattern="^(center|start)$")
    pad_hu: float = -1024.0

    @field_validator("window")
    @classmethod
    def _known(cls, v):
        if isinstance(v, str) and v not in WINDOWS:
            raise ValueError(f"unknown window {v!r}; presets are {sorted(WINDOWS)} or give {{center, width}}")
        return v

    @field_validator("spacing_mm")
    @classmethod
    def _positive(cls, v):
        if v is not None and min(v) <= 0:
            raise ValueError(f"spacing_mm must be positive, found {v}")
        return v

    def center_width(self) -> tuple[float, float]:
        return WINDOWS[self.window] if isinstance(self.window, str) else (self.window.center, self.window.width)


def window_hu(hu: Tensor, center: float, width: float) -> Tensor:
    """HU -> [0, 1]: linear inside [center - width/2, center + width/2], clipped outside."""
    return ((hu - (center - width / 2)) / width).clamp(0.0, 1.0)


def unwindow(x: Tensor, center: float, width: float) -> Tensor:
    """[0, 1] -> HU (values outside the window come back clipped to its ends)."""
    return x * width + (center - width / 2)


def resample(x: Tensor, spacing: Tensor, target: list[float] | None, *, mode: str) -> Tensor:
    """(1, c, d, h, w) at ``spacing`` (3,) mm -> the grid of ``target`` mm covering the same extent.
    ``mode`` is "trilinear" for intensities and "nearest" for label maps."""
    if target is None:
        return x
    t = torch.as_tensor(target, dtype=torch.float64)
    s = spacing.to(torch.float64).cpu()
    if torch.allclose(s, t, rtol=1e-4):
        return x
    size = [max(1, int(round(float(n * a / b)))) for n, a, b in zip(x.shape[2:], s, t)]
    if mode == "nearest":
        return F.interpolate(x.float(), size=size, mode="nearest-exact").to(x.dtype)
    return F.interpolate(x.float(), size=size, mode="trilinear", align_corners=False)


def crop_or_pad(x: Tensor, size: list[int], fill: float, crop: str = "center") -> Tensor:
    """(..., d, h, w) -> (..., *size): centred (or leading) crop where larger, constant pad where smaller."""
    for axis, n in enumerate(size):
        dim = x.ndim - 3 + axis
        cur = x.shape[dim]
        if cur > n:
            start = (cur - n) // 2 if crop == "center" else 0
            x = x.narrow(dim, start, n)
        elif cur < n:
            before = (n - cur) // 2 if crop == "center" else 0
            pad_shape = list(x.shape)
            pad_shape[dim] = before
            lo = x.new_full(pad_shape, fill)
            pad_shape[dim] = n - cur - before
            hi = x.new_full(pad_shape, fill)
            x = torch.cat([lo, x, hi], dim=dim)
    return x


def _per_sample(x: Tensor, spacing: Tensor, cfg: CTPreprocessConfig, fill: float, mode: str) -> Tensor:
    if x.ndim != 5 or x.shape[1] != 1:
        raise ModalityError(f"expected a (b, 1, d, h, w) volume, found shape {tuple(x.shape)}")
    out = [crop_or_pad(resample(x[i:i + 1], spacing[i], cfg.spacing_mm, mode=mode), cfg.size, fill, cfg.crop)
           for i in range(x.shape[0])]
    return torch.cat(out, dim=0)


def preprocess_volume(hu: Tensor, spacing: Tensor, cfg: CTPreprocessConfig) -> Tensor:
    """hu (b, 1, d, h, w), spacing (b, 3) -> windowed (b, 1, *cfg.size) in [0, 1]."""
    x = _per_sample(hu.float(), spacing, cfg, cfg.pad_hu, "trilinear")
    return window_hu(x, *cfg.center_width())


def preprocess_mask(labels: Tensor, spacing: Tensor, cfg: CTPreprocessConfig) -> Tensor:
    """labels (b, 1, d, h, w) -> (b, 1, *cfg.size) on the same grid as `preprocess_volume`
    (nearest neighbour; padding is background 0)."""
    return _per_sample(labels, spacing, cfg, 0, "nearest")
