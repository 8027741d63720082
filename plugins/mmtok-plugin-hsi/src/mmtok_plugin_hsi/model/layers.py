"""Layers of the guided SpectralGPT: 3D spatial-spectral patches, their positional code, the
factorised spectral attention block and the gated cross-attention that injects auxiliary
guidance.

Shapes: b batch, bands spectral bands, h x w pixels, gs x gh x gw the patch grid (spectral
groups x rows x columns), n = gs * gh * gw tokens in that order (spectral slowest, as the
``flatten`` of a Conv3d output over (bands, h, w)), m <= n tokens actually passed (the visible
subset under MAE masking), k conditioning tokens, d width.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mmtok import MmtokError
from mmtok.nn import Attention, Mlp, grid_sincos

__all__ = ["CrossAttentionBlock", "SelfAttention", "SpatialSpectralPatchEmbed", "SpatialSpectralPositionalEncoding",
           "SpectralAttentionBlock", "init_weights", "patch_grid", "patchify", "same_position_mask", "unpatchify"]


def patch_grid(bands: int, size: int, spectral_patch: int, spatial_patch: int) -> tuple[int, int, int]:
    """(gs, gh, gw) patches of a (bands, size, size) cube; `MmtokError` unless the patch divides it."""
    if bands % spectral_patch or size % spatial_patch:
        raise MmtokError(f"patch size: spectral_patch {spectral_patch} must divide bands {bands} and "
                         f"spatial_patch {spatial_patch} must divide size {size}")
    return bands // spectral_patch, size // spatial_patch, size // spatial_patch


def patchify(cube: Float[Tensor, "b bands h w"], spectral_patch: int, spatial_patch: int) -> Float[Tensor, "b n pd"]:
    """Non-overlapping 3D patches in token order (spectral group, row, column); each patch is
    flattened (band, row, column): pd = spectral_patch * spatial_patch**2. Inverse: `unpatchify`."""
    b, bands, h, w = cube.shape
    s, p = spectral_patch, spatial_patch
    x = cube.reshape(b, bands // s, s, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, (bands // s) * (h // p) * (w // p), s * p * p)


def unpatchify(patches: Float[Tensor, "b n pd"], grid: tuple[int, int, int], spectral_patch: int,
               spatial_patch: int) -> Float[Tensor, "b bands h w"]:
    """Patches (as `patchify` makes them) on the (gs, gh, gw) grid -> the cube."""
    b = patches.shape[0]
    (gs, gh, gw), s, p = grid, spectral_patch, spatial_patch
    x = patches.reshape(b, gs, gh, gw, s, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, gs * s, gh * p, gw * p)


def same_position_mask(spatial_index: Int[Tensor, "b m"]) -> Bool[Tensor, "b 1 m m"]:
    """Attention mask of spectral attention: token i attends to token j iff both sit at the same
    spatial position (a token always sees itself, so no row is empty)."""
    return (spatial_index[:, :, None] == spatial_index[:, None, :])[:, None]


def init_weights(m: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear layers and patch projections (a conv as the
    linear map of a flattened patch), zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
        nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------- tokens
class SpatialSpectralPatchEmbed(nn.Module):
    """Cube (b, bands, h, w) -> tokens (b, n, d): a Conv3d over (b, 1, bands, h, w) with
    kernel = stride = (spectral_patch, spatial_patch, spatial_patch). ``spatial_patch=1`` with
    h = w = 1 embeds a per-pixel spectrum as gs tokens."""

    def __init__(self, bands: int, size: int, spectral_patch: int, spatial_patch: int, dim: int):
        super().__init__()
        self.bands, self.size = bands, size
        self.spectral_patch, self.spatial_patch = spectral_patch, spatial_patch
        self.grid = patch_grid(bands, size, spectral_patch, spatial_patch)
        self.num_patches = math.prod(self.grid)
        self.patch_dim = spectral_patch * spatial_patch**2
        kernel = (spectral_patch, spatial_patch, spatial_patch)
        self.proj = nn.Conv3d(1, dim, kernel_size=kernel, stride=kernel)

    def check(self, cube: Tensor, what: str = "cube") -> None:
        """`MmtokError` unless ``cube`` is (b, bands, size, size)."""
        expected = (self.bands, self.size, self.size)
        if cube.dim() != 4 or tuple(cube.shape[1:]) != expected:
            raise MmtokError(f"{what}: expected (batch, {', '.join(map(str, expected))}) = (b, bands, h, w), "
                             f"found {tuple(cube.shape)}")

    def forward(self, cube: Float[Tensor, "b bands h w"]) -> Float[Tensor, "b n d"]:
        self.check(cube)
        x = self.proj(cube[:, None].to(self.proj.weight.dtype))  # (b, d, gs, gh, gw)
        return x.flatten(2).transpose(1, 2)


class SpatialSpectralPositionalEncoding(nn.Module):
    """Fixed separable code of a (gs, gh, gw) grid, SpectralGPT-style: a 2-D sin-cos code of the
    token's (row, column) plus a 1-D sin-cos code of its spectral group, both d wide, summed.
    ``table`` (n, d) in token order; ``spatial_index`` (n,) = row * gw + column."""

    def __init__(self, grid: tuple[int, int, int], dim: int):
        super().__init__()
        gs, gh, gw = self.grid = tuple(grid)
        spatial = grid_sincos((gh, gw), dim)  # (gh * gw, d)
        spectral = grid_sincos((gs,), dim)  # (gs, d)
        token = torch.arange(gs * gh * gw)
        self.register_buffer("table", spatial[token % (gh * gw)] + spectral[token // (gh * gw)], persistent=False)
        self.register_buffer("spatial_index", token % (gh * gw), persistent=False)

    def forward(self, x: Float[Tensor, "b n d"]) -> Float[Tensor, "b n d"]:
        """Tokens of the full grid + their positions."""
        return x + self.table.to(x.dtype)


# ---------------------------------------------------------------------------- attention
class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``; ``attn_mask``
    (b or 1, 1, m, m) bool, True = may attend. (b, m, d) -> (b, m, d)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise MmtokError(f"heads: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Float[Tensor, "b m d"],
                attn_mask: Bool[Tensor, "b 1 m m"] | None = None) -> Float[Tensor, "b m d"]:
        b, m, d = x.shape
        q, k, v = self.qkv(x).view(b, m, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, m, d))


class SpectralAttentionBlock(nn.Module):
    """Pre-norm transformer block with factorised attention. (b, m, d), spatial_index (b, m) or
    (m,) -> (b, m, d).

    ``spectral_attention=True``: x + spectral(LN x), the tokens at one spatial position attending
    to each other across spectral groups (a `same_position_mask`, so any subset of the grid,
    e.g. MAE's visible tokens, works); then x + joint(LN x), every token to every token
    (spatial-spectral); then x + MLP(LN x). ``False``: a plain ViT block (joint attention + MLP);
    ``spatial_index`` is then unused.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, spectral_attention: bool = True):
        super().__init__()
        self.spectral_attention = spectral_attention
        if spectral_attention:
            self.norm_spectral = nn.LayerNorm(dim)
            self.spectral = SelfAttention(dim, num_heads)
        self.norm_joint, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.joint = SelfAttention(dim, num_heads)
        self.mlp = Mlp(dim, mlp_ratio)

    def spectral_update(self, x: Float[Tensor, "b m d"], spatial_index: Int[Tensor, "b m"]) -> Float[Tensor, "b m d"]:
        """The spectral sub-layer alone: x + spectral(LN x) within each spatial position."""
        if spatial_index.dim() == 1:
            spatial_index = spatial_index[None]
        return x + self.spectral(self.norm_spectral(x), same_position_mask(spatial_index.to(x.device)))

    def forward(self, x: Float[Tensor, "b m d"],
                spatial_index: Int[Tensor, "b m"] | None = None) -> Float[Tensor, "b m d"]:
        if self.spectral_attention:
            if spatial_index is None:
                raise MmtokError("spatial_index: spectral attention needs the spatial position of each token, "
                                 "found None")
            x = self.spectral_update(x, spatial_index)
        x = x + self.joint(self.norm_joint(x))
        return x + self.mlp(self.norm_mlp(x))


class CrossAttentionBlock(nn.Module):
    """Flamingo's gated cross-attention-dense layer: HSI tokens (queries) attend to conditioning
    tokens (keys / values), x + tanh(a) * xattn(LN x, LN c); then x + tanh(b) * MLP(LN x).
    Both gates start at 0, so an untrained block is the identity.

    x (b, m, d), context (b, k, d), context_valid (b, k) -> (b, m, d). Invalid (missing) tokens
    get zero attention weight; a sample with no valid token at all is returned unchanged (its
    update is exactly zero and nothing flows back into its context).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise MmtokError(f"heads: width {dim} is not divisible by {num_heads} heads")
        self.norm_query, self.norm_context, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.mlp = Mlp(dim, mlp_ratio)
        self.attn_gate = nn.Parameter(torch.zeros(()))
        self.mlp_gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: Float[Tensor, "b m d"], context: Float[Tensor, "b k d"],
                context_valid: Bool[Tensor, "b k"]) -> Float[Tensor, "b m d"]:
        any_valid = context_valid.any(1)  # (b,)
        keys = context_valid | ~any_valid[:, None]  # an empty row attends to something finite, then is dropped
        y = x + torch.tanh(self.attn_gate) * self.attn(self.norm_query(x), keys, context=self.norm_context(context))
        y = y + torch.tanh(self.mlp_gate) * self.mlp(self.norm_mlp(y))
        return torch.where(any_valid[:, None, None], y, x)
