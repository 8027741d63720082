"""Losses of the conditional VAEs.

* `reconstruction_loss`: per-image sum over pixel values of BCE (on logits) or 0.5 * squared error.
* `gaussian_kl`: KL(N(mu, sigma^2) || N(0, I)) per image, closed form.
* `beta_tc_terms`: the beta-TC-VAE decomposition of the KL (Chen et al. 2018, "Isolating Sources of
  Disentanglement in VAEs") into mutual information, total correlation and dimension-wise KL,
  estimated on a batch by minibatch-weighted sampling (MWS).
* `separation_loss`: hinge on the distances between the batch's modality centroids, in [0, 1].
* `supervised_contrastive_loss`: SupCon (Khosla et al. 2020, L_out) on L2-normalised latents.
* `adversarial_loss`: cross-entropy of a modality discriminator (put `grad_reverse` before it).

Shapes: b batch, d latent dims, m modalities.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["adversarial_loss", "beta_tc_terms", "gaussian_kl", "gaussian_log_density", "modality_centroids",
           "reconstruction_loss", "separation_loss", "supervised_contrastive_loss"]

_LOG_2PI = math.log(2 * math.pi)


def reconstruction_loss(logits: Float[Tensor, "b c h w"], x: Float[Tensor, "b c h w"],
                        kind: str = "bce") -> Float[Tensor, " b"]:
    """Negative log-likelihood per image, summed over pixel values (targets in [0, 1]):
    "bce" = Bernoulli cross-entropy on the logits, "mse" = 0.5 * (sigmoid(logits) - x)^2."""
    if kind == "bce":
        per_value = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        per_value = 0.5 * (torch.sigmoid(logits) - x).pow(2)
    else:
        raise ValueError(f"reconstruction: expected 'bce' or 'mse', found {kind!r}")
    return per_value.flatten(1).sum(1)


def gaussian_kl(mu: Float[Tensor, "b d"], logvar: Float[Tensor, "b d"]) -> Float[Tensor, " b"]:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, summed over dims."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(z; mu, exp(logvar)) (broadcasting)."""
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def beta_tc_terms(z: Float[Tensor, "b d"], mu: Float[Tensor, "b d"], logvar: Float[Tensor, "b d"],
                  dataset_size: int | None = None) -> dict[str, Tensor]:
    """Batch means of the beta-TC decomposition, z_i ~ q(z | x_i):

        mi   = E[log q(z|x) - log q(z)]                 (index-code mutual information)
        tc   = E[log q(z) - sum_d log q(z_d)]           (total correlation)
        dwkl = E[sum_d log q(z_d) - sum_d log p(z_d)]   (dimension-wise KL)

    with q(z) ~ 1/(N M) sum_j q(z_i | x_j) over the batch (minibatch-weighted sampling, N =
    ``dataset_size`` (None: the batch size), M = batch size; the same for each marginal q(z_d)).
    mi + tc + dwkl = kl_mc = E[log q(z|x) - log p(z)], the one-sample Monte-Carlo estimate of the
    KL, exactly (the identity telescopes); its expectation is the closed-form `gaussian_kl`."""
    m = z.shape[0]
    n = dataset_size or m
    log_norm = math.log(n * m)
    log_qz_x = gaussian_log_density(z, mu, logvar).sum(1)                          # (b,)
    log_pz = (-0.5 * (_LOG_2PI + z.pow(2))).sum(1)                                # (b,)
    pairwise = gaussian_log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # (b, b, d): log q(z_i|x_j)
    log_qz = torch.logsumexp(pairwise.sum(2), dim=1) - log_norm                   # (b,)
    log_qz_marginals = (torch.logsumexp(pairwise, dim=1) - log_norm).sum(1)       # (b,)
    return {"mi": (log_qz_x - log_qz).mean(), "tc": (log_qz - log_qz_marginals).mean(),
            "dwkl": (log_qz_marginals - log_pz).mean(), "kl_mc": (log_qz_x - log_pz).mean()}


def modality_centroids(z: Float[Tensor, "b d"], y: Int[Tensor, " b"],
                       modalities: int) -> tuple[Float[Tensor, "m d"], Int[Tensor, " m"]]:
    """Mean of z per label (rows of absent labels are 0) and the count per label."""
    onehot = F.one_hot(y, modalities).to(z.dtype)        # (b, m)
    counts = onehot.sum(0)
    centroids = onehot.T @ z / counts.clamp_min(1)[:, None]
    return centroids, counts.long()


def separation_loss(z: Float[Tensor, "b d"], y: Int[Tensor, " b"], margin: float,
                    modalities: int) -> Tensor:
    """Mean over pairs of present modalities of relu(margin - ||c_i - c_j||)^2 / margin^2.

    c_i: the batch centroid of modality i. Bounded: 1 when every centroid coincides, 0 (its
    floor, with zero gradient) once every pair is at least ``margin`` apart, so it cannot run
    away as ``-mean(distance)`` does. Fewer than two modalities in the batch: 0."""
    centroids, counts = modality_centroids(z, y, modalities)
    present = counts > 0
    c = centroids[present]
    k = len(c)
    if k < 2:
        return z.sum() * 0.0
    i, j = torch.triu_indices(k, k, offset=1, device=z.device)
    dist = ((c[i] - c[j]).pow(2).sum(1) + 1e-12).sqrt()
    return (F.relu(margin - dist).pow(2) / margin ** 2).mean()


def supervised_contrastive_loss(z: Float[Tensor, "b d"], y: Int[Tensor, " b"], temperature: float = 0.1) -> Tensor:
    """SupCon (Khosla et al. 2020, L_out): for each anchor i with at least one positive (same
    label, j != i), -mean_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) ) with s the
    cosine similarity; mean over those anchors. No positive pair in the batch: 0."""
    u = F.normalize(z, dim=1)
    sim = u @ u.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(1)[anchors] / n_pos[anchors]
    return per_anchor.mean()


def adversarial_loss(logits: Float[Tensor, "b m"], y: Int[Tensor, " b"]) -> Tensor:
    """Cross-entropy of the modality discriminator's logits (it minimises this; an encoder behind
    `grad_reverse` maximises it)."""
    return F.cross_entropy(logits, y)
