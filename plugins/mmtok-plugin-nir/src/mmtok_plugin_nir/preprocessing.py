"""Preprocessing of the SpectralFM card: cubic resampling to 2048 points (never truncation), SNV,
and the four pretraining augmentations (Gaussian noise sigma 0.01, low-order polynomial baseline
drift, +-3-channel wavelength shift, 0.95-1.05 intensity scaling).

Resampling works on numpy (scipy's ``interp1d(kind="cubic")``, as the card prescribes); the
augmentations work on torch batches (b, L) with an explicit ``torch.Generator`` so a run is
reproducible.
"""

import numpy as np
import torch
from scipy.interpolate import interp1d
from torch import Tensor

from mmtok_plugin_nir.datasets import NIRDataError, check_axis, check_finite_rows

__all__ = ["N_POINTS", "resample", "snv", "prepare", "add_noise", "baseline_drift", "wavelength_shift",
           "intensity_scale", "augment"]

#: the card's common spectral length
N_POINTS = 2048


def resample(values: np.ndarray, wavelength_nm: np.ndarray, n_points: int = N_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Cubic interpolation of spectra (n, k) from their axis (k,) onto n_points evenly spaced
    wavelengths over the same range. Returns (values (n, n_points), wavelength_nm (n_points,))."""
    values = np.asarray(values, dtype=np.float64)
    wl = np.asarray(wavelength_nm, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != wl.size:
        raise NIRDataError(f"resample: expected spectra (n, {wl.size}) to match the wavelength axis, "
                           f"found {values.shape}")
    if wl.size < 4:
        raise NIRDataError(f"resample: cubic interpolation needs at least 4 channels, found {wl.size}")
    check_axis(wl, "resample")
    check_finite_rows(values, "resample")
    grid = np.linspace(wl[0], wl[-1], n_points)
    return interp1d(wl, values, kind="cubic", axis=1, assume_sorted=True)(grid), grid


def snv(values: np.ndarray | Tensor, eps: float = 1e-8):
    """Standard normal variate per spectrum: (x - mean) / std (population std) along the last axis."""
    if isinstance(values, np.ndarray):
        mean, std = values.mean(-1, keepdims=True), values.std(-1, keepdims=True)
    else:
        mean, std = values.mean(-1, keepdim=True), values.std(-1, keepdim=True, correction=0)
    return (values - mean) / (std + eps)


def prepare(values: np.ndarray, wavelength_nm: np.ndarray, n_points: int = N_POINTS) -> tuple[Tensor, Tensor]:
    """resample + SNV, as float32 tensors: (spectra (n, n_points), wavelength_nm (n_points,))."""
    x, grid = resample(values, wavelength_nm, n_points)
    return torch.as_tensor(snv(x), dtype=torch.float32), torch.as_tensor(grid, dtype=torch.float32)


def add_noise(x: Tensor, sigma: float = 0.01, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise of standard deviation sigma. x: (b, L)."""
    return x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def baseline_drift(x: Tensor, degree: int = 3, scale: float = 0.05,
                   generator: torch.Generator | None = None) -> Tensor:
    """Add a random low-order polynomial baseline (coefficients ~ N(0, scale) on t in [-1, 1]).
    x: (b, L)."""
    t = torch.linspace(-1, 1, x.shape[-1], device=x.device, dtype=x.dtype)
    powers = torch.stack([t ** p for p in range(degree + 1)])                          # (degree+1, L)
    coef = scale * torch.randn(x.shape[0], degree + 1, generator=generator).to(x)       # (b, degree+1)
    return x + coef @ powers


def wavelength_shift(x: Tensor, max_shift: int = 3, generator: torch.Generator | None = None) -> Tensor:
    """Shift each spectrum by a random whole number of channels in [-max_shift, max_shift]; the
    edge value fills the vacated channels (no wrap-around). x: (b, L)."""
    b, length = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=generator).to(x.device)
    index = (torch.arange(length, device=x.device) - shifts).clamp(0, length - 1)
    return x.gather(1, index)


def intensity_scale(x: Tensor, low: float = 0.95, high: float = 1.05,
                    generator: torch.Generator | None = None) -> Tensor:
    """Multiply each spectrum by a factor drawn uniformly from [low, high]. x: (b, L)."""
    factor = low + (high - low) * torch.rand(x.shape[0], 1, generator=generator).to(x)
    return x * factor


def augment(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Apply each of the four augmentations with probability p (per batch element). x: (b, L)."""
    out = x
    for fn in (baseline_drift, wavelength_shift, intensity_scale, add_noise):
        use = (torch.rand(x.shape[0], 1, generator=generator) < p).to(x.device)
        out = torch.where(use, fn(out, generator=generator), out)
    return out
