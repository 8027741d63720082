"""WaveletEmbedding: spectrum -> [CLS] [DOMAIN] + one token per patch, and contiguous block masks.

A patch token fuses (one linear projection) a Conv1d patch embedding of the full-resolution
spectrum with multi-scale wavelet features of the same patch, then adds a positional code of the
actual wavenumber, or, for a spectrum whose axis is unknown (a channel index is not a
wavelength), a separate learned code of the relative channel position. The DWT runs as fixed stride-2 convolutions with the pywt filter bank
(``pywt.Wavelet(name).dec_lo / dec_hi``): on the tensor's device and differentiable.
"""

import math

import numpy as np
import pywt
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

__all__ = ["WaveletEmbedding", "block_mask", "dwt"]


def dwt(x: Float[Tensor, "b l"], filters: Float[Tensor, "2 1 f"], levels: int,
        mode: str = "symmetric") -> list[Tensor]:
    """Multi-level DWT as [cA_levels, cD_levels, ..., cD_1] (pywt.wavedec's order), each (b, ceil(n/2)).

    filters: the reversed (dec_lo, dec_hi) pair, as conv1d weights. Each level extends its input
    by f/2 - 1 samples on both sides and keeps every second output, which is exactly pywt's
    ``mode="periodization"`` when mode="periodic". mode="symmetric" (default) uses the same
    alignment with a half-sample-symmetric extension instead of wrapping around, so the two ends
    of a spectrum do not leak into each other. An odd-length level repeats its last sample first.
    """
    pad = filters.shape[-1] // 2 - 1
    coeffs = []
    approx = x
    for _ in range(levels):
        if approx.shape[-1] % 2:
            approx = torch.cat([approx, approx[:, -1:]], dim=-1)
        if mode == "periodic":
            ext = torch.cat([approx[:, approx.shape[-1] - pad:], approx, approx[:, :pad]], dim=-1)
        elif mode == "symmetric":
            ext = torch.cat([approx[:, :pad].flip(-1), approx, approx[:, approx.shape[-1] - pad:].flip(-1)], dim=-1)
        else:
            raise ValueError(f"dwt: mode must be 'symmetric' or 'periodic', not {mode!r}")
        out = F.conv1d(ext[:, None], filters.to(ext.dtype), stride=2)   # (b, 2, n / 2)
        approx = out[:, 0]
        coeffs.append(out[:, 1])
    return [approx] + coeffs[::-1]


def block_mask(batch: int, n_patches: int, ratio: float = 0.3, generator: torch.Generator | None = None,
               min_block: int = 3, max_block: int = 5, device=None) -> Bool[Tensor, "b p"]:
    """Contiguous block masks (the card's masking): per row, blocks of min_block..max_block
    adjacent patches at uniform random starts are added until at least round(ratio * n_patches)
    patches are masked (blocks may overlap; the last block can overshoot by < max_block).
    At least one patch stays visible. Deterministic given a torch.Generator."""
    target = min(max(1, round(ratio * n_patches)), n_patches - 1)
    mask = torch.zeros(batch, n_patches, dtype=torch.bool)
    for row in range(batch):
        while int(mask[row].sum()) < target:
            size = int(torch.randint(min_block, max_block + 1, (), generator=generator))
            size = min(size, n_patches - 1)
            start = int(torch.randint(0, n_patches - size + 1, (), generator=generator))
            mask[row, start:start + size] = True
        if bool(mask[row].all()):  # keep at least one patch visible
            mask[row, int(torch.randint(0, n_patches, (), generator=generator))] = False
    return mask.to(device) if device is not None else mask


class WaveletEmbedding(nn.Module):
    """x (b, l) + wavelength_nm (b, l) or (l,) + domain (b,) [+ axis_known (b,)] -> tokens
    (b, 2 + l / patch_size, d).

    Token 0 is a learned [CLS], token 1 the [DOMAIN] embedding (0 NIR, 1 IR, 2 RAMAN), then one
    token per patch: fuse([Conv1d patch embedding (d), wavelet features (2 levels + 1)]) +
    wavenumber code. Wavelet features per patch: the approximation at the coarsest level
    (mean over the patch) and, for each detail level, its mean and its RMS (the energy of the
    peaks at that scale; a plain mean would cancel the oscillating detail coefficients). Level j
    coefficients are scaled by 2^(-j/2) to signal units and average-pooled to the patch grid.

    Wavenumber code: sin / cos of k = 1e7 / wavelength_nm (cm^-1) at n_freqs periods spaced
    geometrically from 4 to 20000 cm^-1, averaged over each patch, then a Linear to d.

    Axis unknown (axis_known[i] False, e.g. the spectra_more sets fruit, yarn and coffee, whose
    only axis is a channel index): the wavenumber code is replaced by a *relative-position code*,
    sin / cos(pi m t) for m = 1..n_rel_freqs of the channel fraction t in (0, 1) (channel centre /
    l), averaged per patch, then its own Linear to d (``rel_pos``, not ``pos``). The sample's
    wavelength_nm row is ignored (it may be anything, or wavelength_nm may be None when no sample
    has an axis), so an index is never read as a wavelength. axis_known None = every axis known.

    mask (b, p) bool: masked samples are set to 0 (the SNV mean) before the patch conv and the
    DWT, so no neighbouring token sees them, and masked tokens become a learned [MASK] vector
    (keeping their wavenumber code, so the model knows where the gap is).
    """

    def __init__(self, d_model: int = 128, patch_size: int = 16, wavelet: str = "db4", levels: int = 4,
                 n_domains: int = 3, n_freqs: int = 32, dwt_mode: str = "symmetric", n_rel_freqs: int = 16):
        super().__init__()
        self.patch_size, self.levels, self.dwt_mode = patch_size, levels, dwt_mode
        w = pywt.Wavelet(wavelet)
        filters = torch.tensor(np.array([w.dec_lo[::-1], w.dec_hi[::-1]]), dtype=torch.float32)
        self.register_buffer("dwt_filters", filters[:, None, :], persistent=False)   # (2, 1, f)
        periods = torch.logspace(math.log10(4.0), math.log10(2e4), n_freqs, dtype=torch.float64)
        self.register_buffer("wavenumber_freqs", 2 * math.pi / periods, persistent=False)
        self.patch = nn.Conv1d(1, d_model, kernel_size=patch_size, stride=patch_size)
        self.fuse = nn.Linear(d_model + 2 * levels + 1, d_model)
        self.pos = nn.Linear(2 * n_freqs, d_model)
        self.cls_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.domain_embed = nn.Embedding(n_domains, d_model)
        self.register_buffer("rel_freqs", math.pi * torch.arange(1, n_rel_freqs + 1, dtype=torch.float64),
                             persistent=False)
        self.rel_pos = nn.Linear(2 * n_rel_freqs, d_model)

    def n_patches(self, n_points: int) -> int:
        """Number of patch tokens for a spectrum of n_points samples."""
        return n_points // self.patch_size

    def wavelet_features(self, x: Float[Tensor, "b l"]) -> Float[Tensor, "b p f"]:
        """(b, l) -> (b, p, 2 levels + 1): [approx mean, (detail mean, detail rms) per level]."""
        p = self.n_patches(x.shape[-1])
        coeffs = dwt(x, self.dwt_filters, self.levels, self.dwt_mode)   # [cA_J, cD_J, ..., cD_1]
        feats = []
        for i, c in enumerate(coeffs):
            level = self.levels if i == 0 else self.levels + 1 - i
            c = c[:, None] * 2.0 ** (-level / 2)
            feats.append(F.adaptive_avg_pool1d(c, p))
            if i > 0:
                feats.append(torch.sqrt(F.adaptive_avg_pool1d(c.pow(2), p) + 1e-8))
        return torch.cat(feats, dim=1).transpose(1, 2)

    def wavenumber_code(self, wavelength_nm: Float[Tensor, "*b l"]) -> Float[Tensor, "*b p c"]:
        """sin / cos of the wavenumber (cm^-1) at the fixed periods, averaged per patch."""
        k = 1e7 / wavelength_nm.to(torch.float64)
        ang = k[..., None] * self.wavenumber_freqs                         # (*b, l, f)
        code = torch.cat([ang.sin(), ang.cos()], dim=-1)
        return code.unflatten(-2, (-1, self.patch_size)).mean(-2)         # (*b, p, 2f)

    def relative_code(self, length: int) -> Float[Tensor, "p c"]:
        """sin / cos(pi m t) of the channel fraction t = (i + 0.5) / length, averaged per patch."""
        t = (torch.arange(length, dtype=torch.float64, device=self.rel_freqs.device) + 0.5) / length
        ang = t[:, None] * self.rel_freqs                                  # (l, m)
        code = torch.cat([ang.sin(), ang.cos()], dim=-1)
        return code.unflatten(0, (-1, self.patch_size)).mean(1)            # (p, 2m)

    def position(self, wavelength_nm: Float[Tensor, "*b l"] | None, axis_known: Bool[Tensor, " b"] | None,
                 b: int, length: int, dtype: torch.dtype) -> Float[Tensor, "b p d"]:
        """The position code of every patch: wavenumber code where the axis is known, the
        relative-position code where it is not (see the class docstring)."""
        if axis_known is None:
            if wavelength_nm is None:
                raise ValueError("WaveletEmbedding: wavelength_nm is None but axis_known is not given; pass "
                                 "axis_known=torch.zeros(b, dtype=torch.bool) for spectra without a wavelength axis")
            return self.pos(self.wavenumber_code(wavelength_nm).to(dtype)).expand(b, -1, -1)
        axis_known = torch.as_tensor(axis_known, dtype=torch.bool, device=self.rel_freqs.device)
        if axis_known.shape != (b,):
            raise ValueError(f"WaveletEmbedding: axis_known: expected shape ({b},), found {tuple(axis_known.shape)}")
        rel = self.rel_pos(self.relative_code(length).to(dtype)).expand(b, -1, -1)
        if not bool(axis_known.any()):
            return rel
        if wavelength_nm is None:
            rows = axis_known.nonzero()[:, 0].tolist()[:10]
            raise ValueError(f"WaveletEmbedding: sample(s) {rows} are flagged axis_known but wavelength_nm is None")
        wl = wavelength_nm.expand(b, length)
        safe = torch.where(axis_known[:, None], wl, torch.ones_like(wl) * 1000.0)   # unknown rows: never read
        known = self.pos(self.wavenumber_code(safe).to(dtype))
        return torch.where(axis_known[:, None, None], known, rel)

    def forward(self, x: Float[Tensor, "b l"], wavelength_nm: Float[Tensor, "*b l"] | None,
                domain: Int[Tensor, " b"], mask: Bool[Tensor, "b p"] | None = None,
                axis_known: Bool[Tensor, " b"] | None = None) -> Float[Tensor, "b n d"]:
        b, length = x.shape
        if length % self.patch_size:
            raise ValueError(f"WaveletEmbedding: length {length} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if mask is not None:
            x = x.masked_fill(mask.repeat_interleave(self.patch_size, dim=1), 0.0)
        patches = self.patch(x[:, None]).transpose(1, 2)                  # (b, p, d)
        tokens = self.fuse(torch.cat([patches, self.wavelet_features(x)], dim=-1))
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.position(wavelength_nm, axis_known, b, length, tokens.dtype)
        cls = self.cls_token.expand(b, 1, -1).to(tokens.dtype)
        dom = self.domain_embed(domain)[:, None].to(tokens.dtype)
        return torch.cat([cls, dom, tokens], dim=1)
