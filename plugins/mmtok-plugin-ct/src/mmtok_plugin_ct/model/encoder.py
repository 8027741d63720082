"""The seed's 3D CT vision encoder, a small report encoder and the contrastive aligner.

    CTVisionEncoder: volume (b, 1, D, H, W) + region map (b, 1, D, H, W) -> CTVisionOutput
    ReportTextEncoder: token ids (b, T) + step index (b, T) -> TextOutput
    EmbeddedReportEncoder: frozen line embeddings (b, S, E) (e.g. report-wordllama) -> TextOutput
    CTReportAligner: both + projection heads + MultiLevelAlignmentLoss -> AlignmentOutput

Standalone (plain PyTorch): the shared-transformer head of the plugin is `mmtok_plugin_ct.model.head`.
"""

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from mmtok.nn import EncoderBlock, grid_sincos
from mmtok_plugin_ct.model.layers import (
    AnatomicalStructureEncoder,
    MultiScaleAggregation,
    ThreeDPatchEmbedding,
    ThreeDTransformerBlock,
    patch_grid,
)
from mmtok_plugin_ct.model.losses import AlignmentOutput, MultiLevelAlignmentLoss

__all__ = ["AlignmentOutput", "CTEncoderConfig", "CTReportAligner", "CTVisionEncoder", "CTVisionOutput",
           "EmbeddedReportEncoder", "ProjectionHead", "ReportTextEncoder", "TextOutput"]


class CTEncoderConfig(BaseModel):
    """Sizes of `CTReportAligner` (defaults: the seed's ViT-B on 64 x 512 x 512 volumes)."""

    model_config = ConfigDict(extra="forbid")

    img_size: tuple[int, int, int] = (64, 512, 512)
    patch_size: tuple[int, int, int] = (4, 16, 16)
    in_channels: int = Field(default=1, ge=1)
    embed_dim: int = Field(default=768, ge=8)
    depth: int = Field(default=12, ge=1)
    num_heads: int = Field(default=12, ge=1)
    mlp_ratio: float = Field(default=4.0, gt=0)
    #: anatomical regions including the background (id 0)
    num_regions: int = Field(default=20, ge=2)
    max_slice_distance: int = Field(default=32, ge=1)
    #: width of the mask CNN and its sub-patch cells per patch (must divide patch_size)
    mask_hidden: int = Field(default=64, ge=1)
    mask_subdivision: tuple[int, int, int] = (1, 4, 4)
    #: blocks (0-based, negative from the end) fused by MultiScaleAggregation; None: the last
    #: block of each third of the depth
    aggregate_layers: list[int] | None = None
    num_scales: int = Field(default=2, ge=0)
    shared_dim: int = Field(default=512, ge=1)
    vocab_size: int = Field(default=8192, ge=2)
    text_max_tokens: int = Field(default=256, ge=1)
    text_depth: int = Field(default=4, ge=1)
    #: the report side: word ids (`ReportTextEncoder`, trained) or frozen per-line embeddings of
    #: width ``text_embed_dim`` (`EmbeddedReportEncoder`: only its adapter is trained)
    text_input: Literal["ids", "embeddings"] = "ids"
    text_embed_dim: int = Field(default=256, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    temperature: float = Field(default=0.07, gt=0)
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"global": 1.0, "region": 1.0, "step": 1.0})
    #: FILIP step score: mean of the top-k patch cosines (1 = max)
    filip_top_k: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "CTEncoderConfig":
        patch_grid(self.img_size, self.patch_size)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if any(p % s for p, s in zip(self.patch_size, self.mask_subdivision)):
            raise ValueError(f"mask_subdivision {self.mask_subdivision} must divide patch_size {self.patch_size}")
        bad = [i for i in self.aggregate_layers or [] if not -self.depth <= i < self.depth]
        if bad or self.aggregate_layers == []:
            raise ValueError(f"aggregate_layers must be non-empty block indices in [-{self.depth}, {self.depth}), "
                             f"found {self.aggregate_layers}")
        return self

    @property
    def layers_used(self) -> list[int]:
        """Sorted non-negative block indices fused by the aggregation."""
        if self.aggregate_layers is None:
            return sorted({max(self.depth * k // 3 - 1, 0) for k in (1, 2, 3)})
        return sorted({i % self.depth for i in self.aggregate_layers})


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------- vision
@dataclasses.dataclass
class CTVisionOutput:
    """global_features (b, d); patch_features (b, n, d); region_features (b, r, d);
    region_present (b, r); patch_to_region (b, n, r) (rows sum to 1)."""

    global_features: Float[Tensor, "b d"]
    patch_features: Float[Tensor, "b n d"]
    region_features: Float[Tensor, "b r d"]
    region_present: Bool[Tensor, "b r"]
    patch_to_region: Float[Tensor, "b n r"]


class CTVisionEncoder(nn.Module):
    """Patch embedding -> anatomy encoder -> slice- and region-aware blocks -> multi-scale
    aggregation. volume (b, c, D, H, W) float, regions (b, 1, D, H, W) int -> `CTVisionOutput`."""

    def __init__(self, config: CTEncoderConfig | None = None):
        super().__init__()
        self.config = c = config or CTEncoderConfig()
        self.patch_embed = ThreeDPatchEmbedding(c.in_channels, c.embed_dim, c.patch_size, c.img_size)
        self.anatomy = AnatomicalStructureEncoder(c.num_regions, c.embed_dim, c.patch_size, c.mask_hidden,
                                                  c.mask_subdivision)
        self.blocks = nn.ModuleList(ThreeDTransformerBlock(c.embed_dim, c.num_heads, c.mlp_ratio,
                                                           c.max_slice_distance, c.dropout)
                                    for _ in range(c.depth))
        self.layers_used = c.layers_used
        self.aggregate = MultiScaleAggregation(c.embed_dim, len(self.layers_used), self.patch_embed.grid,
                                               c.num_scales, c.num_heads)
        self.register_buffer("patch_z", self.patch_embed.patch_coords[:, 0].long(), persistent=False)
        self.apply(_init_weights)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def forward(self, volume: Float[Tensor, "b c D H W"], regions: Int[Tensor, "b 1 D H W"]) -> CTVisionOutput:
        self.patch_embed.check(volume)
        expected = (volume.shape[0], 1, *self.config.img_size)
        if tuple(regions.shape) != expected:
            raise ValueError(f"regions: expected {expected} (one id per voxel of the volume), "
                             f"found {tuple(regions.shape)}")
        x = self.patch_embed(volume)
        anatomy = self.anatomy(regions)
        used, slices = [], self.patch_embed.grid[0]
        for i, block in enumerate(self.blocks):
            x = block(x, self.patch_z, anatomy, num_slices=slices)
            if i in self.layers_used:
                used.append(x)
        agg = self.aggregate(used, anatomy)
        return CTVisionOutput(agg.global_features, agg.patch_features, agg.region_features,
                              anatomy.region_present, anatomy.patch_to_region)


# ---------------------------------------------------------------------------- text
@dataclasses.dataclass
class TextOutput:
    """text_global (b, d): mean of the impression (step 0) tokens, or of all tokens when a
    sample has none; step_features (b, s, d) mean per step; step_valid (b, s);
    token_features (b, T, d); token_valid (b, T)."""

    text_global: Float[Tensor, "b d"]
    step_features: Float[Tensor, "b s d"]
    step_valid: Bool[Tensor, "b s"]
    token_features: Float[Tensor, "b t d"]
    token_valid: Bool[Tensor, "b t"]


class ReportTextEncoder(nn.Module):
    """A small transformer over report tokens (id 0 = padding, masked out), 1-D sin-cos
    positions. ``step_index`` (b, T): the reasoning step of each token (0 = impression), -1 for
    padding / separators. ids (b, T), step_index (b, T) -> `TextOutput`."""

    def __init__(self, vocab_size: int, max_tokens: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.vocab_size, self.max_tokens = vocab_size, max_tokens
        self.token_embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.register_buffer("position", grid_sincos((max_tokens,), embed_dim), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.token_embedding.weight, std=0.02)
        with torch.no_grad():
            self.token_embedding.weight[0].zero_()

    def check(self, ids: Tensor, step_index: Tensor, num_steps: int | None) -> None:
        if ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"text ids: expected (b, T) integer ids, found {tuple(ids.shape)} {ids.dtype}")
        if ids.shape[1] > self.max_tokens:
            raise ValueError(f"text ids: at most {self.max_tokens} tokens, found {ids.shape[1]}")
        if step_index.shape != ids.shape:
            raise ValueError(f"step_index: expected {tuple(ids.shape)} like the ids, found {tuple(step_index.shape)}")
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"text ids must be in [0, {self.vocab_size}), found ids in [{lo}, {hi}]")
            if num_steps is not None and int(step_index.max()) >= num_steps:
                raise ValueError(f"step_index: steps must be < {num_steps} (the steps of step_region), "
                                 f"found {int(step_index.max())}")

    def forward(self, ids: Int[Tensor, "b t"], step_index: Int[Tensor, "b t"],
                num_steps: int | None = None) -> TextOutput:
        """``num_steps``: S of the output (default: the largest step index + 1)."""
        self.check(ids, step_index, num_steps)
        ids, step_index = ids.long(), step_index.long()
        b, t = ids.shape
        valid = ids != 0
        keys = valid | ~valid.any(1, keepdim=True)  # an all-padding row attends to something
        x = self.token_embedding(ids) + self.position[:t]
        for block in self.blocks:
            x = block(x, keys)
        x = self.norm(x)
        if num_steps is None:
            num_steps = max(int(step_index.max()) + 1, 1) if step_index.numel() else 1
        member = (step_index[..., None] == torch.arange(num_steps, device=ids.device)) & valid[..., None]
        member = member.to(x.dtype)  # (b, t, s)
        counts = member.sum(1)  # (b, s)
        steps = member.transpose(1, 2) @ x / counts.clamp_min(1)[..., None]
        w = valid.to(x.dtype)
        mean_all = (w[..., None] * x).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        has_impression = counts[:, :1] > 0 if num_steps else torch.zeros(b, 1, dtype=torch.bool, device=x.device)
        text_global = torch.where(has_impression, steps[:, 0] if num_steps else mean_all, mean_all)
        return TextOutput(text_global, steps, counts > 0, x, valid)


class EmbeddedReportEncoder(nn.Module):
    """Frozen per-line report embeddings -> a trainable adapter -> `TextOutput`, one feature per
    line. embeddings (b, S, E): row 0 the impression, row s the s-th step, all-zero rows for
    absent lines. Adapter: Linear-GELU-Linear to ``embed_dim``, 1-D sin-cos line positions,
    ``depth`` transformer blocks across the lines, LayerNorm."""

    def __init__(self, in_dim: int, max_lines: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.in_dim, self.max_lines = in_dim, max_lines
        self.adapter = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
        self.register_buffer("position", grid_sincos((max_lines,), embed_dim), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(_init_weights)

    def forward(self, embeddings: Float[Tensor, "b s e"], num_steps: int | None = None) -> TextOutput:
        """``num_steps``: S of the output steps (default: all lines)."""
        if embeddings.dim() != 3 or embeddings.shape[-1] != self.in_dim or not embeddings.is_floating_point():
            raise ValueError(f"report embeddings: expected (b, lines, {self.in_dim}) float, found "
                             f"{tuple(embeddings.shape)} {embeddings.dtype}")
        b, s, _ = embeddings.shape
        if s > self.max_lines:
            raise ValueError(f"report embeddings: at most {self.max_lines} lines, found {s}")
        valid = embeddings.abs().sum(-1) > 0
        keys = valid | ~valid.any(1, keepdim=True)
        x = self.adapter(embeddings) + self.position[:s]
        for block in self.blocks:
            x = block(x, keys)
        x = self.norm(x)
        num_steps = s if num_steps is None else num_steps
        steps = F.pad(x, (0, 0, 0, max(num_steps - s, 0)))[:, :num_steps]
        step_valid = F.pad(valid, (0, max(num_steps - s, 0)))[:, :num_steps]
        w = valid.to(x.dtype)
        mean_all = (w[..., None] * x).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        text_global = torch.where(valid[:, :1], x[:, 0], mean_all)
        return TextOutput(text_global, steps, step_valid, x, valid)


# ---------------------------------------------------------------------------- aligner
class ProjectionHead(nn.Module):
    """LayerNorm + Linear to the shared space, L2-normalised: (..., d) -> (..., e)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... e"]:
        return F.normalize(self.proj(self.norm(x)), dim=-1)


def impression_groups(text_ids: Int[Tensor, "b t"], step_index: Int[Tensor, "b t"]) -> Int[Tensor, " b"]:
    """Samples whose impression tokens (all tokens when there is no step 0) are identical share a
    group id: duplicate captions, positives of each other in the global InfoNCE."""
    if text_ids.is_floating_point():  # per-line embeddings (b, s, e): the impression row
        return torch.unique(text_ids[:, 0], dim=0, return_inverse=True)[1]
    imp = step_index == 0
    has = (imp & (text_ids != 0)).any(1, keepdim=True)
    key = torch.where(has, torch.where(imp, text_ids, 0), text_ids)
    return torch.unique(key, dim=0, return_inverse=True)[1]


class CTReportAligner(nn.Module):
    """Vision + report encoders, projection heads and the multi-level loss.

    Heads: ``global_head`` (volume), ``local_head`` (regions and patches), ``text_head``
    (impression), ``step_head`` (reasoning steps), all to ``shared_dim``, L2-normalised.
    """

    def __init__(self, config: CTEncoderConfig | None = None):
        super().__init__()
        self.config = c = config or CTEncoderConfig()
        self.vision = CTVisionEncoder(c)
        if c.text_input == "ids":
            self.text = ReportTextEncoder(c.vocab_size, c.text_max_tokens, c.embed_dim, c.text_depth, c.num_heads,
                                          c.mlp_ratio, c.dropout)
        else:
            self.text = EmbeddedReportEncoder(c.text_embed_dim, c.text_max_tokens, c.embed_dim, c.text_depth,
                                              c.num_heads, c.mlp_ratio, c.dropout)
        self.global_head = ProjectionHead(c.embed_dim, c.shared_dim)
        self.local_head = ProjectionHead(c.embed_dim, c.shared_dim)
        self.text_head = ProjectionHead(c.embed_dim, c.shared_dim)
        self.step_head = ProjectionHead(c.embed_dim, c.shared_dim)
        self.loss_fn = MultiLevelAlignmentLoss(c.loss_weights, c.temperature, top_k=c.filip_top_k)
        for head in (self.global_head, self.local_head, self.text_head, self.step_head):
            head.apply(_init_weights)

    def forward(self, volume: Float[Tensor, "b c D H W"], regions: Int[Tensor, "b 1 D H W"],
                text_ids: Int[Tensor, "b t"], step_index: Int[Tensor, "b t"],
                step_region: Int[Tensor, "b s"]) -> AlignmentOutput:
        """``step_region`` (b, s): the region id each reasoning step mentions, -1 if none. With
        ``text_input: embeddings``, ``text_ids`` are the line embeddings (b, S, E) and
        ``step_index`` is ignored (line s is step s)."""
        if step_region.dim() != 2 or step_region.shape[0] != volume.shape[0]:
            raise ValueError(f"step_region: expected (b={volume.shape[0]}, steps), found {tuple(step_region.shape)}")
        vis = self.vision(volume, regions)
        txt = self._text(text_ids, step_index, num_steps=step_region.shape[1])
        return self.loss_fn(
            vision_global=self.global_head(vis.global_features),
            text_global=self.text_head(txt.text_global),
            region_emb=self.local_head(vis.region_features),
            region_present=vis.region_present,
            patch_emb=self.local_head(vis.patch_features),
            step_emb=self.step_head(txt.step_features),
            step_valid=txt.step_valid,
            step_region=step_region.to(vis.region_present.device).long(),
            group_ids=impression_groups(text_ids, step_index),
            patch_valid=vis.patch_to_region[..., 0] < 1,  # patches with annotated anatomy
        )

    def embed_volumes(self, volume: Float[Tensor, "b c D H W"], regions: Int[Tensor, "b 1 D H W"]) -> Float[Tensor, "b e"]:
        """Volume embeddings for retrieval (unit norm)."""
        return self.global_head(self.vision(volume, regions).global_features)

    def embed_texts(self, text_ids: Int[Tensor, "b t"], step_index: Int[Tensor, "b t"]) -> Float[Tensor, "b e"]:
        """Report (impression) embeddings for retrieval (unit norm)."""
        return self.text_head(self._text(text_ids, step_index).text_global)

    def _text(self, text_ids: Tensor, step_index: Tensor | None, num_steps: int | None = None) -> TextOutput:
        if self.config.text_input == "embeddings":
            return self.text(text_ids, num_steps=num_steps)
        return self.text(text_ids, step_index, num_steps=num_steps)
