"""Transformer building blocks: pre-norm attention blocks on `F.scaled_dot_product_attention`,
and fixed sin-cos position codes for 1-D / 2-D / 3-D token grids."""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

__all__ = ["Attention", "DecoderBlock", "EncoderBlock", "Mlp", "grid_sincos"]


def grid_sincos(grid: tuple[int, ...], dim: int) -> Float[Tensor, "n dim"]:
    """Fixed sin-cos codes for the prod(grid) tokens of a grid, row-major (as codecs emit them).

    Each axis gets an equal share of the channels (rounded down to an even number; the remainder
    stays zero), so a 2-D grid gets the 2-D code of MAE / 4M and a 1-D grid the Transformer code.
    """
    axes = len(grid)
    per = (dim // axes) // 2 * 2
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    out = torch.zeros(math.prod(grid), dim, dtype=torch.float64)
    if per == 0:
        return out.float()
    freqs = 1.0 / (10000 ** (torch.arange(per // 2, dtype=torch.float64) / max(per // 2, 1)))
    for a, c in enumerate(coords):
        ang = c.reshape(-1, 1) * freqs
        out[:, a * per:a * per + per // 2] = torch.sin(ang)
        out[:, a * per + per // 2:(a + 1) * per] = torch.cos(ang)
    return out.float()


class Attention(nn.Module):
    """Multi-head attention; ``keys_valid`` (b, k) masks padded keys. Self-attention when
    ``context`` is None, cross-attention to ``context`` otherwise."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Float[Tensor, "b n d"], keys_valid: Bool[Tensor, "b k"],
                context: Float[Tensor, "b k d"] | None = None) -> Float[Tensor, "b n d"]:
        b, n, d = x.shape
        src = x if context is None else context
        h = self.num_heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(src).view(b, src.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys_valid[:, None, None, :],
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float, dropout: float = 0.0):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderBlock(nn.Module):
    """x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.mlp = Mlp(dim, mlp_ratio, dropout)

    def forward(self, x: Float[Tensor, "b n d"], valid: Bool[Tensor, "b n"]) -> Float[Tensor, "b n d"]:
        x = x + self.attn(self.norm1(x), valid)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """4M's decoder block: self-attention among the target queries, cross-attention to the
    encoder output, MLP (all pre-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout)
        self.cross_attn = Attention(dim, num_heads, dropout)
        self.mlp = Mlp(dim, mlp_ratio, dropout)

    def forward(self, q: Float[Tensor, "b m d"], q_valid: Bool[Tensor, "b m"],
                context: Float[Tensor, "b n d"], context_valid: Bool[Tensor, "b n"]) -> Float[Tensor, "b m d"]:
        q = q + self.self_attn(self.norm1(q), q_valid)
        q = q + self.cross_attn(self.norm2(q), context_valid, context=self.norm_context(context))
        return q + self.mlp(self.norm3(q))
