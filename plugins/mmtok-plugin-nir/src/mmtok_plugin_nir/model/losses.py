"""The seven SpectralFM pretraining losses and their weights (the card's LOSS FUNCTIONS table).

    L = 1.0 L_MSRP + 0.3 L_contrastive + 0.2 L_denoise + 0.1 L_OT + 0.1 L_physics
        + 0.05 L_VIB + 0.01 L_MoE

Spectra are (b, l) SNV-normalised values; patch masks are (b, p) bool with p = l / patch_size.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["LOSS_WEIGHTS", "byol_loss", "cv_squared", "denoise_loss", "kl_loss", "kl_per_dim", "log_sinkhorn",
           "moe_loss", "msrp_loss", "physics_loss", "physics_terms", "sinkhorn_loss",
           "symmetric_byol_loss", "total_loss"]

LOSS_WEIGHTS = {"msrp": 1.0, "contrastive": 0.3, "denoise": 0.2, "ot": 0.1, "physics": 0.1,
                "vib": 0.05, "moe": 0.01}


def msrp_loss(pred: Float[Tensor, "b l"], target: Float[Tensor, "b l"],
              mask: Bool[Tensor, "b p"]) -> Float[Tensor, ""]:
    """Masked spectral reconstruction: MSE over the samples of the masked patches only.

    pred / target may also be given per patch, (b, p, patch_size)."""
    b, p = mask.shape
    pred, target = pred.reshape(b, p, -1), target.reshape(b, p, -1)
    sq = (pred - target).pow(2).mean(-1)                                  # (b, p)
    return (sq * mask).sum() / mask.sum().clamp(min=1)


def byol_loss(p: Float[Tensor, "b z"], z: Float[Tensor, "b z"]) -> Float[Tensor, ""]:
    """-cos(p, stopgrad(z)), averaged over the batch (in [-1, 1], -1 at perfect alignment)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def symmetric_byol_loss(p1: Float[Tensor, "b z"], p2: Float[Tensor, "b z"], z1: Float[Tensor, "b z"],
                        z2: Float[Tensor, "b z"]) -> Float[Tensor, ""]:
    """(byol(p1, z2) + byol(p2, z1)) / 2: each view's prediction chases the other's target."""
    return 0.5 * (byol_loss(p1, z2) + byol_loss(p2, z1))


def denoise_loss(denoised: Float[Tensor, "b l"], clean: Float[Tensor, "b l"]) -> Float[Tensor, ""]:
    """MSE(denoise(noisy), clean)."""
    return F.mse_loss(denoised, clean)


def log_sinkhorn(a: Float[Tensor, " n"], b: Float[Tensor, " m"], M: Float[Tensor, "n m"],
                 reg: float = 0.05, n_iter: int = 100) -> Float[Tensor, ""]:
    """Entropic OT cost <P, M> by Sinkhorn iterations on the dual potentials in the log domain.

    f_i = reg (log a_i - logsumexp_j (g_j - M_ij) / reg), g likewise; P = exp((f + g - M) / reg).
    Never forms exp(-M / reg), so a small reg cannot underflow. Differentiable (autograd runs
    through the iterations)."""
    log_a, log_b = a.log(), b.log()
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    for _ in range(n_iter):
        f = reg * (log_a - torch.logsumexp((g[None, :] - M) / reg, dim=1))
        g = reg * (log_b - torch.logsumexp((f[:, None] - M) / reg, dim=0))
    plan = torch.exp((f[:, None] + g[None, :] - M) / reg)
    return (plan * M).sum()


def _pot():
    try:
        import ot
    except ImportError:
        return None
    return ot


def sinkhorn_loss(x: Float[Tensor, "n d"], y: Float[Tensor, "m d"], reg: float = 0.05,
                  n_iter: int = 100, use_pot: bool | None = None) -> Float[Tensor, ""]:
    """Entropic OT between two point clouds with uniform weights.

    Cost M_ij = |x_i - y_j|^2 / d (squared distance per dimension, so reg means the same at any
    width). Uses POT's ``ot.sinkhorn2(..., method="sinkhorn_log")`` (torch backend, differentiable)
    when POT is importable and use_pot is not False, else `log_sinkhorn`. Returns <P, M>.
    """
    M = torch.cdist(x, y).pow(2) / x.shape[-1]
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=M.dtype, device=M.device)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=M.dtype, device=M.device)
    ot = _pot() if use_pot is not False else None
    if use_pot and ot is None:
        raise ImportError("sinkhorn_loss(use_pot=True) needs POT (pip install POT)")
    if ot is not None:
        return ot.sinkhorn2(a, b, M, reg, method="sinkhorn_log", numItermax=n_iter, warn=False)
    return log_sinkhorn(a, b, M, reg, n_iter)


def physics_terms(spectrum: Float[Tensor, "b l"], mean: Float[Tensor, " b"] | None = None,
                  std: Float[Tensor, " b"] | None = None) -> dict[str, Tensor]:
    """The three chemical-plausibility terms of a (reconstructed) spectrum, per sample point.

    - smoothness: mean squared second difference, mean((x[t+1] - 2 x[t] + x[t-1])^2).
    - nonnegativity: mean(relu(-absorbance)^2) with absorbance = x * std + mean (undoing SNV);
      zero when mean / std (b,) are not given (an SNV spectrum is negative by construction).
    - peak_shape: mean(relu(-d2[t] * d2[t+1])) over neighbouring second differences d2.
      Absorption bands are broad and smooth: their curvature changes sign only at the flanks,
      where it is near zero, so the product of neighbouring curvatures stays >= 0 (or tiny).
      A spike or a zig-zag flips the curvature sign from one point to the next with large
      magnitude, which this term penalises.
    """
    d2 = spectrum[:, 2:] - 2 * spectrum[:, 1:-1] + spectrum[:, :-2]
    terms = {"smoothness": d2.pow(2).mean(),
             "peak_shape": F.relu(-d2[:, 1:] * d2[:, :-1]).mean()}
    if mean is not None and std is not None:
        absorbance = spectrum * std.reshape(-1, 1) + mean.reshape(-1, 1)
        terms["nonnegativity"] = F.relu(-absorbance).pow(2).mean()
    else:
        terms["nonnegativity"] = spectrum.new_zeros(())
    return terms


def physics_loss(spectrum: Float[Tensor, "b l"], mean: Float[Tensor, " b"] | None = None,
                 std: Float[Tensor, " b"] | None = None) -> Float[Tensor, ""]:
    """smoothness + nonnegativity + peak_shape (see `physics_terms`)."""
    return sum(physics_terms(spectrum, mean, std).values())


def kl_per_dim(mu: Float[Tensor, "b z"], logvar: Float[Tensor, "b z"]) -> Float[Tensor, " z"]:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension, averaged over the batch (z,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(0)


def kl_loss(mu: Float[Tensor, "b z"], logvar: Float[Tensor, "b z"], free_bits: float = 0.0) -> Float[Tensor, ""]:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over z, averaged over the batch (>= 0).

    free_bits > 0 (nats per dimension; Kingma et al. 2016): sum_z max(free_bits, KL_z) with KL_z
    the batch-mean KL of dimension z (`kl_per_dim`). A dimension below the floor gets no gradient
    from the KL, so the bottleneck stops pushing it onto the prior (the collapse of mu_chem the
    first round measured); free_bits = 0 is the plain KL."""
    if free_bits < 0:
        raise ValueError(f"kl_loss: free_bits must be >= 0 nats per dimension, found {free_bits}")
    if free_bits == 0:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1).mean()
    return kl_per_dim(mu, logvar).clamp(min=free_bits).sum()


def cv_squared(v: Float[Tensor, " e"], eps: float = 1e-10) -> Float[Tensor, ""]:
    """Squared coefficient of variation var(v) / mean(v)^2 (population variance; 0 iff equal)."""
    return v.var(unbiased=False) / (v.mean().pow(2) + eps)


def moe_loss(expert_loads: Float[Tensor, " e"]) -> Float[Tensor, ""]:
    """L_MoE = CV(expert_loads)^2."""
    return cv_squared(expert_loads)


def total_loss(losses: dict[str, Tensor]) -> Float[Tensor, ""]:
    """sum_k LOSS_WEIGHTS[k] * losses[k] over the weighted keys present (others, e.g. "total",
    are ignored)."""
    terms = [LOSS_WEIGHTS[k] * v for k, v in losses.items() if k in LOSS_WEIGHTS]
    if not terms:
        raise ValueError(f"total_loss: none of {sorted(LOSS_WEIGHTS)} in {sorted(losses)}")
    return torch.stack([t.reshape(()) for t in terms]).sum()
