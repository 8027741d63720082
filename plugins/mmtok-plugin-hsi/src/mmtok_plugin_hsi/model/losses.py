"""Losses of the guided SpectralGPT: MAE's L2 on the masked HSI patches only, and the symmetric
InfoNCE that aligns the pooled HSI latent with each auxiliary's embedding."""

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["info_nce", "masked_mse", "normalized_patches"]


def normalized_patches(patches: Float[Tensor, "b n pd"], eps: float = 1e-6) -> Float[Tensor, "b n pd"]:
    """Each patch minus its mean, over its standard deviation (MAE's ``norm_pix_loss`` target;
    population variance, so a one-value patch gives 0, not NaN)."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def masked_mse(pred: Float[Tensor, "b n pd"], target: Float[Tensor, "b n pd"], mask: Bool[Tensor, "b n"],
               norm_pix_loss: bool = False) -> Tensor:
    """Mean squared error over the masked tokens only (mean over a patch's values, then over
    the masked patches); visible tokens do not enter it. ``norm_pix_loss``: against
    `normalized_patches` of the target. No masked token: 0 (still in the graph of ``pred``)."""
    target = target.float()
    if norm_pix_loss:
        target = normalized_patches(target)
    per_patch = (pred.float() - target).pow(2).mean(-1)  # (b, n)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


def info_nce(a: Float[Tensor, "b z"], b: Float[Tensor, "b z"], temperature: float = 0.07) -> Tensor:
    """Symmetric InfoNCE on cosine similarity: row i of ``a`` and row i of ``b`` are positives,
    every other row of the batch a negative; mean of the a->b and b->a cross-entropies of
    ``cos / temperature``."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must both be (batch, dim), found {tuple(a.shape)} and {tuple(b.shape)}")
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
