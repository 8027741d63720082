"""Layers of the 3D CT vision encoder (the seed's components 1-4, with the parts it leaves out).

Shapes: b batch, n = gz * gy * gx patches (row-major z, y, x, as ``flatten`` of a Conv3d output),
r anatomical regions (id 0 = background), d embedding width, h heads.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mmtok.nn import Attention, Mlp, grid_sincos

__all__ = ["AnatomicalStructureEncoder", "AttentionPool", "MultiScaleAggregation", "MultiScaleFeatures",
           "RegionAwareAttention", "RegionEncoding", "SliceAwareAttention", "ThreeDPatchEmbedding",
           "ThreeDTransformerBlock", "patch_grid", "region_occupancy", "slice_distance_index"]


def _triple(v: int | tuple[int, ...], name: str) -> tuple[int, int, int]:
    t = (v,) * 3 if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != 3 or any(x < 1 for x in t):
        raise ValueError(f"{name} must be 3 positive sizes (z, y, x), found {v}")
    return t


def patch_grid(img_size: tuple[int, int, int], patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """(gz, gy, gx) patches of a volume; ValueError unless the patch size divides the volume."""
    if any(i % p for i, p in zip(img_size, patch_size)):
        raise ValueError(f"the volume size {tuple(img_size)} is not divisible by the patch size {tuple(patch_size)}")
    return tuple(i // p for i, p in zip(img_size, patch_size))


def slice_distance_index(z: Int[Tensor, " n"], max_slice_distance: int) -> Int[Tensor, "n n"]:
    """|z_i - z_j| clamped to ``max_slice_distance - 1``: the column of the slice-bias table."""
    return (z[:, None] - z[None, :]).abs().clamp(max=max_slice_distance - 1).long()


# ---------------------------------------------------------------------------- 1. patch embedding
class ThreeDPatchEmbedding(nn.Module):
    """Non-overlapping 3D patches -> tokens. (b, c, D, H, W) -> (b, n, d).

    Position = fixed 3D sin-cos code of the patch grid (`grid_sincos`) + a learned table that
    starts at zero. ``patch_coords`` (n, 3): float (z, y, x) grid indices, in token order.
    """

    def __init__(self, in_channels: int = 1, embed_dim: int = 768, patch_size: tuple[int, int, int] = (4, 16, 16),
                 img_size: tuple[int, int, int] = (64, 512, 512)):
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = _triple(patch_size, "patch_size")
        self.img_size = _triple(img_size, "img_size")
        self.grid = patch_grid(self.img_size, self.patch_size)
        self.num_patches = math.prod(self.grid)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.register_buffer("pos_fixed", grid_sincos(self.grid, embed_dim)[None], persistent=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        coords = torch.meshgrid(*[torch.arange(g) for g in self.grid], indexing="ij")
        self.register_buffer("patch_coords", torch.stack(coords, -1).reshape(-1, 3).float(), persistent=False)

    def check(self, x: Tensor, what: str = "volume") -> None:
        expected = (self.in_channels, *self.img_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{what}: expected (batch, {', '.join(map(str, expected))}) = (b, c, D, H, W), "
                             f"found {tuple(x.shape)}")

    def forward(self, x: Float[Tensor, "b c D H W"]) -> Float[Tensor, "b n d"]:
        self.check(x)
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x + (self.pos_fixed + self.pos_embed).to(x.dtype)


# ---------------------------------------------------------------------------- 2. anatomy
class RegionEncoding(NamedTuple):
    """region_embeds (b, r, d); patch_to_region (b, n, r), rows sum to 1 (voxel share of each
    region in each patch); region_present (b, r), background always True."""

    region_embeds: Float[Tensor, "b r d"]
    patch_to_region: Float[Tensor, "b n r"]
    region_present: Bool[Tensor, "b r"]


def region_occupancy(ids: Int[Tensor, "b D H W"], num_regions: int,
                     cell: tuple[int, int, int]) -> Float[Tensor, "b r gz gy gx"]:
    """Share of each cell's voxels that belong to each region: avg_pool3d of the one-hot map
    (kernel = stride = ``cell``), one region at a time (never the whole one-hot in memory)."""
    ids = ids.unsqueeze(1)
    return torch.cat([F.avg_pool3d((ids == r).float(), cell, cell) for r in range(num_regions)], 1)


class AnatomicalStructureEncoder(nn.Module):
    """Segmentation map (b, 1, D, H, W) of region ids -> `RegionEncoding`.

    patch_to_region is the exact voxel overlap (one-hot averaged over each patch). A region's
    embedding = learned table row + the features of a small 3D CNN on the one-hot map (first
    conv: kernel = stride = patch / ``subdivision`` cells -> patches, then a 3x3x3 context conv),
    averaged over the patches with the region's voxel share as weight + a projection of the
    region's centroid (z, y, x in [0, 1]) and log volume fraction.
    """

    def __init__(self, num_regions: int = 20, embed_dim: int = 768, patch_size: tuple[int, int, int] = (4, 16, 16),
                 hidden: int = 64, subdivision: tuple[int, int, int] = (1, 4, 4)):
        super().__init__()
        if num_regions < 2:
            raise ValueError(f"num_regions counts the background (id 0) too: >= 2, found {num_regions}")
        self.num_regions = num_regions
        self.patch_size = _triple(patch_size, "patch_size")
        self.subdivision = _triple(subdivision, "subdivision")
        if any(p % s for p, s in zip(self.patch_size, self.subdivision)):
            raise ValueError(f"subdivision {self.subdivision} must divide the patch size {self.patch_size}")
        self.cell = tuple(p // s for p, s in zip(self.patch_size, self.subdivision))
        self.region_table = nn.Embedding(num_regions, embed_dim)
        self.mask_encoder = nn.Sequential(
            nn.Conv3d(num_regions, hidden, kernel_size=self.subdivision, stride=self.subdivision),
            nn.GELU(),
            nn.Conv3d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv3d(hidden, embed_dim, 1),
        )
        self.geometry = nn.Linear(4, embed_dim)  # centroid z, y, x + log volume fraction
        self.norm = nn.LayerNorm(embed_dim)
        nn.init.trunc_normal_(self.region_table.weight, std=0.02)

    def check(self, regions: Tensor) -> Int[Tensor, "b D H W"]:
        if regions.dim() != 5 or regions.shape[1] != 1:
            raise ValueError(f"regions: expected (b, 1, D, H, W) region ids, found {tuple(regions.shape)}")
        if regions.is_floating_point() or regions.is_complex() or regions.dtype == torch.bool:
            raise ValueError(f"regions: expected integer region ids, found dtype {regions.dtype}")
        patch_grid(tuple(regions.shape[2:]), self.patch_size)
        lo, hi = int(regions.min()), int(regions.max())
        if lo < 0 or hi >= self.num_regions:
            raise ValueError(f"regions: ids must be in [0, {self.num_regions}), found ids in [{lo}, {hi}]")
        return regions[:, 0].long()

    @torch.no_grad()
    def geometry_features(self, ids: Int[Tensor, "b D H W"]) -> tuple[Float[Tensor, "b r 4"], Float[Tensor, "b r"]]:
        """Per region: (centroid z, y, x in [0, 1], log volume fraction / log 1e6 in [-1, 0]) and voxel count."""
        b, shape = ids.shape[0], ids.shape[1:]
        feats, counts = [], []
        for r in range(self.num_regions):
            m = (ids == r).float()
            count = m.sum((1, 2, 3))
            cent = []
            for axis, size in enumerate(shape):
                other = tuple(a + 1 for a in range(3) if a != axis)
                centre = (torch.arange(size, device=ids.device, dtype=torch.float32) + 0.5) / size
                cent.append((m.sum(other) * centre).sum(1) / count.clamp_min(1))
            cent = torch.stack(cent, -1).masked_fill((count == 0)[:, None], 0.5)  # absent: the centre
            frac = count / math.prod(shape)
            feats.append(torch.cat([cent, (torch.log(frac + 1e-6) / math.log(1e6))[:, None]], -1))
            counts.append(count)
        return torch.stack(feats, 1), torch.stack(counts, 1).reshape(b, self.num_regions)

    def forward(self, regions: Int[Tensor, "b 1 D H W"]) -> RegionEncoding:
        ids = self.check(regions)
        with torch.no_grad():
            occ = region_occupancy(ids, self.num_regions, self.cell)  # (b, r, cells)
            p2r = F.avg_pool3d(occ, self.subdivision, self.subdivision).flatten(2).transpose(1, 2)  # (b, n, r)
        geo, counts = self.geometry_features(ids)
        present = counts > 0
        present[:, 0] = True
        dtype = self.geometry.weight.dtype
        feats = self.mask_encoder(occ.to(dtype)).flatten(2).transpose(1, 2)  # (b, n, d)
        weights = p2r / p2r.sum(1, keepdim=True).clamp_min(1e-12)  # share of the region's voxels per patch
        pooled = weights.transpose(1, 2).to(feats.dtype) @ feats  # (b, r, d)
        emb = self.region_table.weight[None] + pooled + self.geometry(geo.to(dtype))
        return RegionEncoding(self.norm(emb), p2r, present)


# ---------------------------------------------------------------------------- 3. attention
class SliceAwareAttention(nn.Module):
    """Self-attention with a learned bias per head and per slice distance |dz| (clamped to
    ``max_slice_distance - 1``) on the logits: ``softmax(q k^T / sqrt(hd) + bias[h, |z_i - z_j|]) v``.
    (b, n, d), z (n,) integer slice of each token -> (b, n, d).

    Two exact ways to run it on ``F.scaled_dot_product_attention``:

    * ``"mask"``: the (1, h, n, n) bias is gathered from the (h, max) table and passed as a float
      ``attn_mask``. Simple, but the fused kernels can't return a mask gradient, so SDPA falls back
      to its unfused path and the (n, n) bias costs memory (12.9 GB for the seed's 16,384 patches).
    * ``"augment"``: the bias only depends on the slices (z_i, z_j), so it is a dot product: q gets
      ``sqrt(hd) * one_hot(z_i)`` appended and k the column ``B_h[:, z_j]`` of the (g, g) slice-pair
      bias, over g slices (padded to a multiple of 8; v gets zeros). The fused kernels then run
      unchanged (the table's gradient comes through dk), with no n x n tensor at all.

    ``"auto"`` (default) augments unless g exceeds ``2 * head_dim``. ``num_slices``: g when known (z
    in [0, g)); otherwise it is read from z (one device sync). ``return_attention=True`` computes the
    softmax explicitly and also returns the weights (b, h, n, n), for visualisation.
    """

    def __init__(self, embed_dim: int, num_heads: int, max_slice_distance: int = 32, dropout: float = 0.0,
                 mode: str = "auto"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if max_slice_distance < 1:
            raise ValueError(f"max_slice_distance must be >= 1, found {max_slice_distance}")
        if mode not in ("auto", "augment", "mask"):
            raise ValueError(f"mode is auto, augment or mask; found {mode!r}")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.max_slice_distance, self.dropout, self.mode = max_slice_distance, dropout, mode
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.slice_bias = nn.Parameter(torch.zeros(num_heads, max_slice_distance))

    def bias(self, z: Int[Tensor, " n"]) -> Float[Tensor, "1 h n n"]:
        """The full bias: the (h, max) table at the (n, n) slice-distance index."""
        return self.slice_bias[:, slice_distance_index(z, self.max_slice_distance)][None]

    def _augmented(self, q: Tensor, k: Tensor, v: Tensor, z: Tensor, g: int, p: float) -> Tensor:
        b, h, n, hd = q.shape
        gp = -(-g // 8) * 8
        pair = self.slice_bias[:, slice_distance_index(torch.arange(g, device=z.device), self.max_slice_distance)]
        k_extra = F.pad(pair, (0, 0, 0, gp - g))[:, :, z].transpose(1, 2).to(k.dtype)  # (h, n, gp): B_h[:, z_j]
        q_extra = F.one_hot(z, gp).to(q.dtype) * hd**0.5  # (n, gp)
        q = torch.cat([q, q_extra.expand(b, h, n, gp)], -1)
        k = torch.cat([k, k_extra.expand(b, h, n, gp)], -1)
        v = torch.cat([v, v.new_zeros(b, h, n, gp)], -1)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=hd**-0.5)[..., :hd]

    def forward(self, x: Float[Tensor, "b n d"], z: Int[Tensor, " n"], return_attention: bool = False,
                num_slices: int | None = None):
        b, n, d = x.shape
        if z is None or z.shape != (n,):
            raise ValueError(f"z: expected the ({n},) slice index of each token, found "
                             f"{None if z is None else tuple(z.shape)}")
        z = z.long()
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if return_attention:
            logits = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5 + self.bias(z).to(q.dtype)
            attn = logits.softmax(-1)
            out = F.dropout(attn, p) @ v
        elif self.mode == "mask":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(z).to(q.dtype), dropout_p=p)
        else:
            if num_slices is None:
                lo, hi = torch.aminmax(z)
                lo, hi = int(lo), int(hi)
                z, num_slices = z - lo, hi - lo + 1
            if self.mode == "augment" or -(-num_slices // 8) * 8 <= 2 * self.head_dim:
                out = self._augmented(q, k, v, z, num_slices, p)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(z).to(q.dtype), dropout_p=p)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        return (out, attn) if return_attention else out


class RegionAwareAttention(nn.Module):
    """Cross-attention patches -> regions. (b, n, d), regions (b, r, d) -> (b, n, d).

    Logit bias ``w_h * log(patch_to_region + eps)`` (w_h >= 0 learned per head, starts at 1): a
    patch attends to the regions it overlaps, in proportion to the overlap (times exp(q.k)).
    Absent regions are masked out (the background is always present, so no row is empty).
    """

    def __init__(self, embed_dim: int, num_heads: int, eps: float = 1e-4, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.eps, self.dropout = num_heads, embed_dim // num_heads, eps, dropout
        self.q = nn.Linear(embed_dim, embed_dim)
        self.kv = nn.Linear(embed_dim, 2 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.prior_weight_raw = nn.Parameter(torch.full((num_heads,), math.log(math.e - 1)))  # softplus -> 1

    @property
    def prior_weight(self) -> Float[Tensor, " h"]:
        return F.softplus(self.prior_weight_raw)

    def bias(self, patch_to_region: Float[Tensor, "b n r"], region_present: Bool[Tensor, "b r"]) -> Float[Tensor, "b h n r"]:
        prior = self.prior_weight[None, :, None, None] * torch.log(patch_to_region + self.eps)[:, None]
        return prior.masked_fill(~region_present[:, None, None, :], float("-inf"))

    def forward(self, x: Float[Tensor, "b n d"], regions: Float[Tensor, "b r d"],
                patch_to_region: Float[Tensor, "b n r"], region_present: Bool[Tensor, "b r"],
                return_attention: bool = False):
        b, n, d = x.shape
        r = regions.shape[1]
        present = region_present.clone()
        present[:, 0] = True
        q = self.q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(regions).view(b, r, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.bias(patch_to_region.float(), present).to(q.dtype)
        p = self.dropout if self.training else 0.0
        if return_attention:
            attn = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5 + bias).softmax(-1)
            out = F.dropout(attn, p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        return (out, attn) if return_attention else out


class ThreeDTransformerBlock(nn.Module):
    """Pre-norm: x + slice-aware(LN x); x + region-aware(LN x, LN regions); x + MLP(LN x).
    z (n,): slice of each token, in [0, num_slices) when ``num_slices`` is given."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, max_slice_distance: int = 32,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.norm_regions = nn.LayerNorm(embed_dim)
        self.slice_attn = SliceAwareAttention(embed_dim, num_heads, max_slice_distance, dropout)
        self.region_attn = RegionAwareAttention(embed_dim, num_heads, dropout=dropout)
        self.mlp = Mlp(embed_dim, mlp_ratio, dropout)

    def forward(self, x: Float[Tensor, "b n d"], z: Int[Tensor, " n"], anatomy: RegionEncoding,
                num_slices: int | None = None) -> Float[Tensor, "b n d"]:
        x = x + self.slice_attn(self.norm1(x), z, num_slices=num_slices)
        x = x + self.region_attn(self.norm2(x), self.norm_regions(anatomy.region_embeds), anatomy.patch_to_region,
                                 anatomy.region_present)
        return x + self.mlp(self.norm3(x))


# ---------------------------------------------------------------------------- 4. aggregation
class AttentionPool(nn.Module):
    """A learned query attends over the valid tokens: (b, n, d), valid (b, n) -> (b, d).
    A row with no valid token pools over all of them (callers mask such samples out)."""

    def __init__(self, dim: int, num_heads: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, x: Float[Tensor, "b n d"], valid: Bool[Tensor, "b n"] | None = None) -> Float[Tensor, "b d"]:
        b, n, _ = x.shape
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=x.device)
        valid = valid | ~valid.any(1, keepdim=True)
        return self.attn(self.query.expand(b, -1, -1).to(x.dtype), valid, context=self.norm(x))[:, 0]


class MultiScaleFeatures(NamedTuple):
    """global_features (b, d); patch_features (b, n, d); region_features (b, r, d)."""

    global_features: Float[Tensor, "b d"]
    patch_features: Float[Tensor, "b n d"]
    region_features: Float[Tensor, "b r d"]


class MultiScaleAggregation(nn.Module):
    """Fuse several blocks' outputs into patch, region and volume features.

    * patch features: LayerNorm + Linear per layer, mixed with learned softmax layer weights;
    * pyramid: the fused patch grid average-pooled 2x in-plane ``num_scales`` times (a side of 1
      stays 1), each scale projected and averaged into one descriptor;
    * global: Linear([attention pool of the patches, mean of the coarser descriptors]);
    * regions: each region's voxel-share-weighted mean of the patch features + its embedding.
    """

    def __init__(self, embed_dim: int, num_layers_used: int, grid: tuple[int, int, int], num_scales: int = 2,
                 num_heads: int = 1):
        super().__init__()
        if num_layers_used < 1:
            raise ValueError(f"num_layers_used must be >= 1, found {num_layers_used}")
        self.grid = tuple(grid)
        self.layer_norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(num_layers_used))
        self.layer_proj = nn.ModuleList(nn.Linear(embed_dim, embed_dim) for _ in range(num_layers_used))
        self.layer_logits = nn.Parameter(torch.zeros(num_layers_used))
        self.scale_proj = nn.ModuleList(nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim))
                                        for _ in range(num_scales))
        self.pool = AttentionPool(embed_dim, num_heads)
        self.global_proj = nn.Linear(2 * embed_dim if num_scales else embed_dim, embed_dim)
        self.region_norm = nn.LayerNorm(embed_dim)

    def forward(self, layers: list[Float[Tensor, "b n d"]], anatomy: RegionEncoding) -> MultiScaleFeatures:
        if len(layers) != len(self.layer_proj):
            raise ValueError(f"expected {len(self.layer_proj)} layers' features, found {len(layers)}")
        w = self.layer_logits.softmax(0)
        x = sum(w[i] * proj(norm(f)) for i, (f, norm, proj) in enumerate(zip(layers, self.layer_norms,
                                                                              self.layer_proj)))
        b, _, d = x.shape
        parts = [self.pool(x)]
        if len(self.scale_proj):
            fmap, descs = x.transpose(1, 2).reshape(b, d, *self.grid), []
            for proj in self.scale_proj:
                k = (1, min(2, fmap.shape[-2]), min(2, fmap.shape[-1]))
                fmap = F.avg_pool3d(fmap, k, k, ceil_mode=True)
                descs.append(proj(fmap.flatten(2).transpose(1, 2)).mean(1))
            parts.append(torch.stack(descs).mean(0))
        global_features = self.global_proj(torch.cat(parts, -1))
        p2r = anatomy.patch_to_region.to(x.dtype)
        weights = p2r / p2r.sum(1, keepdim=True).clamp_min(1e-12)
        regions = weights.transpose(1, 2) @ x + anatomy.region_embeds.to(x.dtype)
        return MultiScaleFeatures(global_features, x, self.region_norm(regions))
