"""Spectral preprocessing: bring cubes from any sensor onto one wavelength grid.

Sensors differ in band count and position (AVIRIS Indian Pines 200 bands over 400–2500 nm with
water-absorption bands removed, Jasper Ridge 198, CASI Houston 144 over 380–1050 nm). A codec or
model fixes a grid (`uniform_grid`) and every cube is linearly interpolated onto it from its
valid bands (`resample_bands`): masked bands (water absorption, dead detectors) are skipped, so
the gap they leave is bridged by their valid neighbours. Target wavelengths outside a cube's
valid range take the nearest valid band (no extrapolation); codecs refuse cubes that do not
cover their range (`coverage_problem`).
"""

import torch
from torch import Tensor

__all__ = ["uniform_grid", "resample_bands", "coverage_problem"]


def uniform_grid(start_nm: float, stop_nm: float, bands: int) -> Tensor:
    """``bands`` equally spaced wavelengths from ``start_nm`` to ``stop_nm`` inclusive: (bands,)."""
    return torch.linspace(float(start_nm), float(stop_nm), int(bands), dtype=torch.float64).float()


def _interp_weights(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Indices (lo, hi) into the increasing ``src`` (m,) and the weight of hi for each ``dst``."""
    m = src.numel()
    hi = torch.searchsorted(src.contiguous(), dst.contiguous()).clamp(1, max(m - 1, 1))
    lo = hi - 1
    if m == 1:
        zeros = torch.zeros_like(dst, dtype=torch.long)
        return zeros, zeros, torch.zeros_like(dst)
    span = (src[hi] - src[lo]).clamp_min(1e-12)
    w = ((dst - src[lo]) / span).clamp(0.0, 1.0)
    return lo, hi, w


def resample_bands(reflectance: Tensor, wavelength_nm: Tensor, target_nm: Tensor,
                   band_mask: Tensor | None = None) -> Tensor:
    """Linear interpolation of each spectrum onto ``target_nm`` over the valid bands only.

    reflectance: (b, n_in, h, w); wavelength_nm: (b, n_in) or (n_in,), increasing;
    target_nm: (n_out,); band_mask: (b, n_in) bool, True = valid (None: all valid)
    -> (b, n_out, h, w) float32. Samples sharing one wavelength axis and mask are done together.
    """
    b, n_in = reflectance.shape[:2]
    wl = wavelength_nm.to(torch.float64)
    if wl.ndim == 1:
        wl = wl.expand(b, n_in)
    target = target_nm.to(torch.float64).to(reflectance.device)
    mask = torch.ones(b, n_in, dtype=torch.bool) if band_mask is None else band_mask.bool().cpu()
    out = reflectance.new_empty((b, target.numel(), *reflectance.shape[2:]), dtype=torch.float32)
    keys = {}
    for i in range(b):  # group samples by (wavelengths, mask): usually one group for a batch
        key = (tuple(wl[i].tolist()), tuple(mask[i].tolist()))
        keys.setdefault(key, []).append(i)
    for (axis, valid), rows in keys.items():
        src = torch.tensor(axis, dtype=torch.float64)[torch.tensor(valid)].to(target.device)
        valid_idx = torch.tensor(valid).nonzero().squeeze(1).to(reflectance.device)
        lo, hi, w = _interp_weights(src, target)
        x = reflectance[rows].float().index_select(1, valid_idx)
        w = w.float().view(1, -1, *([1] * (x.ndim - 2)))
        out[rows] = x[:, lo] * (1 - w) + x[:, hi] * w
    return out


def coverage_problem(wavelength_nm: Tensor, band_mask: Tensor | None, start_nm: float, stop_nm: float,
                     tolerance_nm: float) -> str | None:
    """Why a cube's valid bands (wavelength_nm (b, n)) do not cover [start_nm, stop_nm] within
    ``tolerance_nm``, naming the first sample that fails; None when they all do."""
    mask = torch.ones_like(wavelength_nm, dtype=torch.bool) if band_mask is None else band_mask.bool()
    for i in range(wavelength_nm.shape[0]):
        valid = wavelength_nm[i][mask[i]]
        if valid.numel() == 0:
            return f"sample {i} has no valid band (band_mask is all False)"
        lo, hi = float(valid.min()), float(valid.max())
        if lo > start_nm + tolerance_nm or hi < stop_nm - tolerance_nm:
            return (f"sample {i}: valid bands span {lo:.1f}–{hi:.1f} nm, the codec's grid "
                    f"{start_nm:.1f}–{stop_nm:.1f} nm (tolerance {tolerance_nm:.1f} nm)")
    return None
