"""The guided SpectralGPT encoder: 3D patch tokens of the cube, MAE random masking, spectral
attention blocks, and (when the model has auxiliaries) a gated cross-attention layer after every
k-th block through which the conditioning tokens guide the HSI tokens. The auxiliaries never
enter the token sequence.

Shapes: b batch, n patches of the full grid, m kept (visible) tokens, k conditioning tokens,
d width.
"""

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mmtok import MmtokError
from mmtok_plugin_hsi.model.layers import (CrossAttentionBlock, SpatialSpectralPatchEmbed,
                                           SpatialSpectralPositionalEncoding, SpectralAttentionBlock, init_weights)

__all__ = ["EncoderOutput", "GuidedSpectralEncoder", "MaskingPlan", "random_masking"]


class MaskingPlan(NamedTuple):
    """ids_keep (b, m): kept token indices (in shuffled order); ids_restore (b, n): the inverse
    permutation (as MAE's); mask (b, n) True = masked (hidden from the encoder)."""

    ids_keep: Int[Tensor, "b m"]
    ids_restore: Int[Tensor, "b n"]
    mask: Bool[Tensor, "b n"]


def kept_count(n: int, mask_ratio: float) -> int:
    """Tokens kept of n: ``int(n * (1 - mask_ratio))`` (MAE), at least one."""
    return max(1, int(n * (1.0 - mask_ratio)))


def random_masking(b: int, n: int, mask_ratio: float, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> MaskingPlan:
    """Per-sample uniform random choice of `kept_count` tokens (argsort of uniform noise, as in
    MAE). ``generator`` makes it reproducible (it may live on another device than ``device``)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise MmtokError(f"mask_ratio: expected a value in [0, 1), found {mask_ratio}")
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(b, n, generator=generator, device=noise_device).to(device)
    ids_shuffle = noise.argsort(1)
    ids_restore = ids_shuffle.argsort(1)
    keep = kept_count(n, mask_ratio)
    mask = torch.ones(b, n, dtype=torch.bool, device=device)
    mask[:, :keep] = False
    return MaskingPlan(ids_shuffle[:, :keep], ids_restore, mask.gather(1, ids_restore))


class EncoderOutput(NamedTuple):
    """tokens (b, m, d): the kept tokens after the final LayerNorm, in ``ids_keep`` order (all n
    in grid order when nothing is masked); the `MaskingPlan` fields, ``ids_keep`` etc."""

    tokens: Float[Tensor, "b m d"]
    ids_keep: Int[Tensor, "b m"]
    ids_restore: Int[Tensor, "b n"]
    mask: Bool[Tensor, "b n"]


class GuidedSpectralEncoder(nn.Module):
    """Cube (b, bands, size, size) [+ conditioning tokens (b, k, d), valid (b, k)] -> `EncoderOutput`.

    `SpatialSpectralPatchEmbed` + `SpatialSpectralPositionalEncoding` -> random masking (only the
    kept tokens go on) -> ``depth`` `SpectralAttentionBlock`s, with a `CrossAttentionBlock` after
    block i whenever (i + 1) % ``cross_attention_every`` == 0 (``cross_attention_every=0``: an
    unguided encoder, no cross-attention at all) -> LayerNorm.
    """

    def __init__(self, bands: int = 192, size: int = 9, spectral_patch: int = 12, spatial_patch: int = 3,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 spectral_attention: bool = True, cross_attention_every: int = 0):
        super().__init__()
        self.patch_embed = SpatialSpectralPatchEmbed(bands, size, spectral_patch, spatial_patch, dim)
        self.grid, self.num_patches = self.patch_embed.grid, self.patch_embed.num_patches
        self.position = SpatialSpectralPositionalEncoding(self.grid, dim)
        self.blocks = nn.ModuleList(SpectralAttentionBlock(dim, heads, mlp_ratio, spectral_attention)
                                    for _ in range(depth))
        after = [i for i in range(depth) if cross_attention_every and (i + 1) % cross_attention_every == 0]
        self.cross_after = {i: j for j, i in enumerate(after)}  # block index -> cross-attention layer
        self.cross = nn.ModuleList(CrossAttentionBlock(dim, heads, mlp_ratio) for _ in after)
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)

    @property
    def guided(self) -> bool:
        return len(self.cross) > 0

    def forward(self, cube: Float[Tensor, "b bands h w"], conditioning: Float[Tensor, "b k d"] | None = None,
                conditioning_valid: Bool[Tensor, "b k"] | None = None, mask_ratio: float = 0.0,
                generator: torch.Generator | None = None, plan: MaskingPlan | None = None) -> EncoderOutput:
        """``conditioning`` None (or an unguided encoder): HSI only. ``mask_ratio=0``: every token,
        in grid order (``ids_keep`` = 0..n-1). ``plan``: keep these tokens instead of drawing a
        mask (``mask_ratio`` and ``generator`` are then unused)."""
        x = self.position(self.patch_embed(cube))  # (b, n, d)
        b, n, _ = x.shape
        if plan is None and mask_ratio > 0:
            plan = random_masking(b, n, mask_ratio, x.device, generator)
        if plan is None:
            order = torch.arange(n, device=x.device).expand(b, n)
            plan = MaskingPlan(order, order, torch.zeros(b, n, dtype=torch.bool, device=x.device))
        else:
            x = x.gather(1, plan.ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        spatial = self.position.spatial_index[plan.ids_keep]  # (b, m)
        use_conditioning = conditioning is not None and self.guided
        if use_conditioning and (conditioning_valid is None or conditioning_valid.shape != conditioning.shape[:2]):
            raise MmtokError(f"conditioning_valid: expected {tuple(conditioning.shape[:2])} (batch, tokens), found "
                             f"{None if conditioning_valid is None else tuple(conditioning_valid.shape)}")
        for i, block in enumerate(self.blocks):
            x = block(x, spatial)
            if use_conditioning and i in self.cross_after:
                x = self.cross[self.cross_after[i]](x, conditioning.to(x.dtype), conditioning_valid)
        return EncoderOutput(self.norm(x), *plan)
