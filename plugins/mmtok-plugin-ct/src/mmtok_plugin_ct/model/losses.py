"""Contrastive losses of the CT encoder: CLIP's bidirectional InfoNCE (with duplicate-caption
groups) and the seed's three-level alignment (volume <-> impression, region <-> region mention,
patches <-> reasoning step, FILIP-style)."""

import dataclasses
import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

__all__ = ["AlignmentOutput", "CrossModalContrastiveLoss", "LogitScale", "MultiLevelAlignmentLoss",
           "info_nce", "zero_like_graph"]


@dataclasses.dataclass
class AlignmentOutput:
    """loss: the weighted total (scalar); parts: every level's loss (and the temperatures), scalars."""

    loss: Tensor
    parts: dict[str, Tensor]


def zero_like_graph(*tensors: Tensor) -> Tensor:
    """A scalar 0 that still depends on ``tensors`` (so a skipped level leaves every parameter
    in the graph, as DDP wants)."""
    return sum(t.sum() for t in tensors) * 0.0


def info_nce(logits: Float[Tensor, "m c"], positives: Bool[Tensor, "m c"]) -> Tensor:
    """Multi-positive InfoNCE, mean over the rows that have a positive:
    ``-log(sum_{j in pos} exp(l_ij) / sum_j exp(l_ij))``. With one positive per row this is
    cross-entropy."""
    logits = logits.float()
    rows = positives.any(1)
    if not bool(rows.any()):
        return zero_like_graph(logits)
    logits, positives = logits[rows], positives[rows]
    pos = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()


class LogitScale(nn.Module):
    """CLIP's ``exp(t) = 1 / temperature``, learned in log space and clamped at ``max_scale``."""

    def __init__(self, init_temperature: float = 0.07, learnable: bool = True, max_scale: float = 100.0):
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"the temperature must be > 0, found {init_temperature}")
        value = torch.tensor(math.log(1.0 / init_temperature))
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)
        self.max_log = math.log(max_scale)

    def forward(self) -> Tensor:
        return self.log_scale.clamp(max=self.max_log).exp()


class CrossModalContrastiveLoss(nn.Module):
    """Bidirectional InfoNCE (CLIP) between paired rows of ``a`` and ``b`` (L2-normalised here).

    ``group_ids`` (b,): samples with equal ids (duplicate captions) are positives of each other,
    not negatives (multi-positive InfoNCE); None = only the diagonal.
    """

    def __init__(self, init_temperature: float = 0.07, learnable: bool = True):
        super().__init__()
        self.logit_scale = LogitScale(init_temperature, learnable)

    def forward(self, a: Float[Tensor, "b d"], b: Float[Tensor, "b d"],
                group_ids: Int[Tensor, " b"] | None = None) -> Tensor:
        if a.shape != b.shape or a.dim() != 2:
            raise ValueError(f"a and b must both be (batch, dim), found {tuple(a.shape)} and {tuple(b.shape)}")
        logits = self.logit_scale() * F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
        if group_ids is None:
            labels = torch.arange(len(a), device=a.device)
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        pos = group_ids[:, None] == group_ids[None, :]
        return (info_nce(logits, pos) + info_nce(logits.T, pos.T)) / 2


class MultiLevelAlignmentLoss(nn.Module):
    """The seed's multi-level alignment, on embeddings already in the shared space:

    * ``global``: volume <-> impression, `CrossModalContrastiveLoss` over the batch;
    * ``region``: every reasoning step (b, s) that mentions a region r present in sample b, against
      all present (b', r') region embeddings of the batch (positive: (b, r)), and each mentioned
      region against all such steps (positives: the steps that mention it);
    * ``step``: FILIP-style, score(step, volume j) = mean of the ``top_k`` best cosines between the
      step and volume j's patches (``top_k=1``: the max); InfoNCE over the b volumes for every
      valid step, and over the steps for every volume that has steps. ``patch_valid`` limits the
      top-k to some patches (the aligner: those that overlap an annotated region; background
      patches such as air look alike in every volume and make every volume score the same).

    A level with nothing to align in the batch gives a 0 that keeps its inputs in the graph.
    """

    def __init__(self, weights: dict[str, float] | None = None, init_temperature: float = 0.07,
                 learnable: bool = True, top_k: int = 8):
        super().__init__()
        self.weights = {"global": 1.0, "region": 1.0, "step": 1.0, **(weights or {})}
        if set(self.weights) != {"global", "region", "step"} or any(w < 0 for w in self.weights.values()):
            raise ValueError(f"weights are global / region / step, each >= 0; found {self.weights}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, found {top_k}")
        self.top_k = top_k
        self.global_loss = CrossModalContrastiveLoss(init_temperature, learnable)
        self.region_scale = LogitScale(init_temperature, learnable)
        self.step_scale = LogitScale(init_temperature, learnable)

    def region_level(self, region_emb: Float[Tensor, "b r e"], region_present: Bool[Tensor, "b r"],
                     step_emb: Float[Tensor, "b s e"], step_valid: Bool[Tensor, "b s"],
                     step_region: Int[Tensor, "b s"]) -> Tensor:
        r = region_emb.shape[1]
        safe = step_region.clamp(0, r - 1)
        mentioned = step_valid & (step_region >= 0) & (step_region < r) & region_present.gather(1, safe)
        if not bool(mentioned.any()):
            return zero_like_graph(region_emb, step_emb)
        sb, ss = mentioned.nonzero(as_tuple=True)  # (m,) items
        target = sb * r + safe[sb, ss]  # flat (b, r) of each item's region
        cand = region_present.flatten().nonzero(as_tuple=True)[0]  # (c,) flat (b, r) candidates
        logits = self.region_scale() * F.normalize(step_emb[sb, ss].float(), dim=-1) \
            @ F.normalize(region_emb.flatten(0, 1)[cand].float(), dim=-1).T
        pos = target[:, None] == cand[None, :]  # (m, c)
        return (info_nce(logits, pos) + info_nce(logits.T, pos.T)) / 2

    def step_level(self, patch_emb: Float[Tensor, "b n e"], step_emb: Float[Tensor, "b s e"],
                   step_valid: Bool[Tensor, "b s"], patch_valid: Bool[Tensor, "b n"] | None = None) -> Tensor:
        if not bool(step_valid.any()):
            return zero_like_graph(patch_emb, step_emb)
        sb, ss = step_valid.nonzero(as_tuple=True)
        steps = F.normalize(step_emb[sb, ss].float(), dim=-1)  # (m, e)
        cos = torch.einsum("me,jne->mjn", steps, F.normalize(patch_emb.float(), dim=-1))
        k = min(self.top_k, cos.shape[-1])
        if patch_valid is None:
            score = cos.topk(k, dim=-1).values.mean(-1)  # (m, b)
        else:  # the top-k among a volume's valid patches (all of them if it has none)
            patch_valid = patch_valid | ~patch_valid.any(1, keepdim=True)
            top = cos.masked_fill(~patch_valid[None], float("-inf")).topk(k, dim=-1).values
            kept = torch.isfinite(top)
            score = top.masked_fill(~kept, 0.0).sum(-1) / kept.sum(-1)
        logits = self.step_scale() * score
        pos = sb[:, None] == torch.arange(patch_emb.shape[0], device=sb.device)[None, :]
        return (info_nce(logits, pos) + info_nce(logits.T, pos.T)) / 2

    def forward(self, vision_global: Float[Tensor, "b e"], text_global: Float[Tensor, "b e"],
                region_emb: Float[Tensor, "b r e"], region_present: Bool[Tensor, "b r"],
                patch_emb: Float[Tensor, "b n e"], step_emb: Float[Tensor, "b s e"],
                step_valid: Bool[Tensor, "b s"], step_region: Int[Tensor, "b s"],
                group_ids: Int[Tensor, " b"] | None = None,
                patch_valid: Bool[Tensor, "b n"] | None = None) -> AlignmentOutput:
        """``group_ids``: duplicate-caption groups of the global level; ``patch_valid``: the
        patches the step level may pick (e.g. those inside the body / an annotated region)."""
        parts = {
            "global": self.global_loss(vision_global, text_global, group_ids),
            "region": self.region_level(region_emb, region_present, step_emb, step_valid, step_region),
            "step": self.step_level(patch_emb, step_emb, step_valid, patch_valid),
        }
        total = sum(self.weights[k] * v for k, v in parts.items())
        parts = {**parts, "temperature/global": 1.0 / self.global_loss.logit_scale().detach(),
                 "temperature/region": 1.0 / self.region_scale().detach(),
                 "temperature/step": 1.0 / self.step_scale().detach()}
        return AlignmentOutput(total, parts)
