"""Survey preprocessing: zero points -> a common flux unit, and resampling between pixel scales.

Flux unit. As in AION, the common unit is the **nanomaggy**: ``mag = 22.5 - 2.5 log10(f)``
(AB). A survey whose pixel values ``p`` satisfy ``mag = zp - 2.5 log10(p)`` converts with
``f = p * 10 ** (-0.4 * (zp - 22.5))``: HSC coadds (zp 27.0) by 10^-1.8 = 0.01585, Legacy Survey
images (zp 22.5, already nanomaggies) by 1.

Resampling. `SurveyAligner` moves images from one pixel scale to another (e.g. HSC 0.168 ->
Legacy Survey 0.262 arcsec/px) by exact pixel-overlap (area-weighted) resampling: every output
pixel receives the fraction of each input pixel's flux that falls inside it. It is separable,
two matrix products in torch, and conserves total flux exactly wherever the output covers the
input (the default output size does). No rotation, no sub-pixel shift, no PSF matching.
"""

import math

import torch
from torch import Tensor

from mmtok import ModalityError

__all__ = ["NANOMAGGY_ZERO_POINT", "nanomaggies_per_unit", "to_nanomaggies", "from_nanomaggies",
           "overlap_matrix", "SurveyAligner"]

#: AB magnitude of 1 nanomaggy
NANOMAGGY_ZERO_POINT = 22.5


def nanomaggies_per_unit(zero_point: float) -> float:
    """Nanomaggies per pixel unit of a survey with magnitude zero point ``zero_point``."""
    return 10.0 ** (-0.4 * (zero_point - NANOMAGGY_ZERO_POINT))


def to_nanomaggies(flux: Tensor, zero_point: float) -> Tensor:
    """Pixel values with zero point ``zero_point`` -> nanomaggies (same shape)."""
    return flux * nanomaggies_per_unit(zero_point)


def from_nanomaggies(flux: Tensor, zero_point: float) -> Tensor:
    """Nanomaggies -> pixel values with zero point ``zero_point`` (same shape)."""
    return flux / nanomaggies_per_unit(zero_point)


def overlap_matrix(n_in: int, scale_in: float, n_out: int, scale_out: float,
                   dtype: torch.dtype = torch.float64) -> Tensor:
    """(n_out, n_in): fraction of input pixel j that lies inside output pixel i, for two
    1-D pixel grids sharing their centre (pixel sizes in the same unit, e.g. arcsec)."""
    e_in = (torch.arange(n_in + 1, dtype=torch.float64) - n_in / 2) * scale_in
    e_out = (torch.arange(n_out + 1, dtype=torch.float64) - n_out / 2) * scale_out
    lo = torch.maximum(e_out[:-1, None], e_in[None, :-1])
    hi = torch.minimum(e_out[1:, None], e_in[None, 1:])
    return ((hi - lo).clamp_min(0) / scale_in).to(dtype)


class SurveyAligner:
    """Resample images from pixel scale ``from_scale`` to ``to_scale`` (arcsec / px).

    ``size``: output (h, w); by default the smallest grid covering the input,
    ``ceil(n * from_scale / to_scale)`` per axis, so total flux is conserved exactly. A smaller
    ``size`` keeps the centre (flux outside it is dropped); grids are centre-aligned.

        aligner = SurveyAligner.between(HSCImage, LegacySurveyImage)   # 0.168 -> 0.262
        flux = aligner(hsc.flux)             # (b, 5, 50, 50) -> (b, 5, 33, 33), same total flux
    """

    def __init__(self, from_scale: float, to_scale: float, size: tuple[int, int] | None = None):
        if not (from_scale > 0 and to_scale > 0):
            raise ModalityError(f"SurveyAligner: pixel scales must be > 0, found {from_scale}, {to_scale}")
        self.from_scale, self.to_scale = float(from_scale), float(to_scale)
        self.size = None if size is None else (int(size[0]), int(size[1]))

    @classmethod
    def between(cls, source: type, target: type, size: tuple[int, int] | None = None) -> "SurveyAligner":
        """Aligner from one image modality's ``pixel_scale`` to another's."""
        return cls(source.pixel_scale, target.pixel_scale, size)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        ratio = self.from_scale / self.to_scale
        return math.ceil(h * ratio - 1e-6), math.ceil(w * ratio - 1e-6)

    def matrices(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        """(H, h) and (W, w) overlap matrices for an input of h x w pixels."""
        oh, ow = self.output_size(h, w)
        return (overlap_matrix(h, self.from_scale, oh, self.to_scale),
                overlap_matrix(w, self.from_scale, ow, self.to_scale))

    def _apply(self, x: Tensor, power: int) -> Tensor:
        if x.ndim < 2:
            raise ModalityError(f"SurveyAligner: expected (..., h, w), found shape {tuple(x.shape)}")
        my, mx = self.matrices(x.shape[-2], x.shape[-1])
        my, mx = my.to(x.device) ** power, mx.to(x.device) ** power
        out = torch.einsum("ih,...hw,jw->...ij", my, x.double(), mx)
        return out.to(x.dtype if x.is_floating_point() else torch.float32)

    def __call__(self, flux: Tensor) -> Tensor:
        """Flux per pixel (..., h, w) -> (..., H, W); total flux conserved."""
        return self._apply(flux, 1)

    def resample_variance(self, variance: Tensor) -> Tensor:
        """Variance of the resampled flux (..., H, W), pixels assumed independent."""
        return self._apply(variance, 2)

    def resample_mask(self, mask: Tensor) -> Tensor:
        """Integer bit masks (..., h, w) -> (..., H, W): bitwise OR of the overlapping pixels."""
        if mask.is_floating_point():
            raise ModalityError(f"SurveyAligner.resample_mask: expected integer bits, found {mask.dtype}")
        my, mx = self.matrices(mask.shape[-2], mask.shape[-1])
        # overlaps below 1e-9 of a pixel are float round-off where two pixel edges coincide
        my, mx = (my > 1e-9).double().to(mask.device), (mx > 1e-9).double().to(mask.device)
        out = torch.zeros(*mask.shape[:-2], my.shape[0], mx.shape[0], dtype=mask.dtype, device=mask.device)
        if bool((mask < 0).any()):
            raise ModalityError("SurveyAligner.resample_mask: mask bits must be >= 0")
        bits = 0
        for value in torch.unique(mask).tolist():
            bits |= int(value)
        for bit in range(bits.bit_length()):
            if not (bits >> bit) & 1:
                continue
            plane = ((mask >> bit) & 1).double()
            hit = torch.einsum("ih,...hw,jw->...ij", my, plane, mx) > 0
            out |= hit.to(mask.dtype) << bit
        return out

