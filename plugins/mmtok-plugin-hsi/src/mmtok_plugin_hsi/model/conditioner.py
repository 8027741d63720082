"""Modality conditioner: one small ViT per auxiliary image (infrared, autofluorescence,
thickness, elevation), turned into a few global conditioning tokens for the HSI encoder's
cross-attention and one global embedding for the contrastive loss.

Shapes: b batch, c channels, h x w pixels (co-registered with the cube), q = (h / p) * (w / p)
image patches, t conditioning tokens, e conditioner width, d encoder width, z embedding width.
"""

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mmtok import MmtokError
from mmtok.nn import Attention, grid_sincos
from mmtok_plugin_hsi.model.layers import SpectralAttentionBlock, init_weights

__all__ = ["ConditionerOutput", "ModalityConditioner", "ProjectionHead"]


class ProjectionHead(nn.Module):
    """LayerNorm + Linear into the contrastive space: (..., d) -> (..., z) (not normalised;
    the InfoNCE normalises)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... z"]:
        return self.proj(self.norm(x))


class ConditionerOutput(NamedTuple):
    """tokens (b, t, d): the conditioning tokens, in the encoder's width; embedding (b, z): the
    auxiliary's global embedding for the contrastive loss."""

    tokens: Float[Tensor, "b t d"]
    embedding: Float[Tensor, "b z"]


class ModalityConditioner(nn.Module):
    """Auxiliary image (b, c, h, w) -> `ConditionerOutput`.

    Conv2d patches (kernel = stride = ``patch``, clamped to the image side, so a 1 x 1 image,
    e.g. Houston's per-pixel LiDAR features, is one token) + fixed 2-D sin-cos positions ->
    ``depth`` ViT blocks -> LayerNorm -> ``num_tokens`` learned queries attention-pool the patch
    tokens (query + attention, so the tokens differ even when the image is a single patch) ->
    conditioning tokens (Linear to ``out_dim``) and, from their mean, the embedding
    (`ProjectionHead` to ``embed_dim``).
    """

    def __init__(self, channels: int, image_size: int, patch: int = 3, dim: int = 64, depth: int = 2,
                 num_heads: int = 4, num_tokens: int = 4, out_dim: int = 128, embed_dim: int = 64,
                 mlp_ratio: float = 4.0, name: str = "auxiliary image"):
        super().__init__()
        self.channels, self.image_size, self.name = channels, image_size, name
        self.patch = min(patch, image_size)
        if image_size % self.patch:
            raise MmtokError(f"aux_patch: {self.patch} must divide the {name} size {image_size}")
        side = image_size // self.patch
        self.proj = nn.Conv2d(channels, dim, kernel_size=self.patch, stride=self.patch)
        self.register_buffer("position", grid_sincos((side, side), dim), persistent=False)
        self.blocks = nn.ModuleList(SpectralAttentionBlock(dim, num_heads, mlp_ratio, spectral_attention=False)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.pool = Attention(dim, num_heads)
        self.pool_norm = nn.LayerNorm(dim)
        self.to_tokens = nn.Linear(dim, out_dim)
        self.head = ProjectionHead(dim, embed_dim)
        self.apply(init_weights)
        nn.init.normal_(self.queries, std=0.02)

    def check(self, pixels: Tensor) -> None:
        """`MmtokError` unless ``pixels`` is (b, channels, image_size, image_size)."""
        expected = (self.channels, self.image_size, self.image_size)
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != expected:
            raise MmtokError(f"{self.name}: expected (batch, {', '.join(map(str, expected))}) = (b, c, h, w) on the "
                             f"cube's grid, found {tuple(pixels.shape)}")

    def forward(self, pixels: Float[Tensor, "b c h w"]) -> ConditionerOutput:
        self.check(pixels)
        x = self.proj(pixels.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)  # (b, q, e)
        x = x + self.position.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        b, q, _ = x.shape
        every = torch.ones(b, q, dtype=torch.bool, device=x.device)
        queries = self.queries.expand(b, -1, -1).to(x.dtype)
        pooled = self.pool_norm(queries + self.pool(queries, every, context=x))  # (b, t, e)
        return ConditionerOutput(self.to_tokens(pooled), self.head(pooled.mean(1)))
