"""`DisentangledConditionalVAE`: the seed's model. The latent is partitioned z = [z_shared
(latent_shared, 8), z_modality (latent_modality, 8)] and the encoder is NOT told the modality, so
z_modality has to come from the image (nearest-centroid classification of an unlabelled image is
then meaningful). The decoder is conditioned on the modality embedding and, by default, ends in
modality-specific heads (``config.decoder``: "heads"; "shared" and "moe" are the alternatives).

    loss = recon + KL-part + D * (alpha * separation + beta * contrastive [+ gamma * adversarial])

* KL-part: kl_weight * KL ("elbo"; kl_weight > 1 is the beta-VAE) or kl_weight * (mi + dwkl) +
  tc_weight * tc ("beta_tc", Chen et al. 2018), over the whole z;
* separation: `separation_loss` on the batch centroids of mu_modality (a hinge bounded in [0, 1]);
* contrastive: `supervised_contrastive_loss` on normalised mu_modality, by modality label;
* adversarial (adversarial_weight > 0): a modality discriminator on mu_shared behind gradient
  reversal, so the encoder learns to leave the modality out of z_shared;
* D = c * h * w (`VAEConfig.pixel_values`): the auxiliary weights are per pixel value, like the
  per-value reconstruction sum they compete with.

terms: recon, kl, separation, contrastive (+ adversarial, discriminator_accuracy) (+ mi, tc,
dwkl, kl_mc). `sample(y)`: z_shared ~ N(0, I), z_modality = the centroid of y (+ ``noise`` *
N(0, I)), decoded under y.
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mmtok import MmtokError
from mmtok_plugin_medimg.model.base import MedImageVAE, VAEOutput
from mmtok_plugin_medimg.model.config import VAEConfig
from mmtok_plugin_medimg.model.layers import ConvEncoder, GradientReversal
from mmtok_plugin_medimg.model.losses import adversarial_loss, separation_loss, supervised_contrastive_loss

__all__ = ["DisentangledConditionalVAE"]


class DisentangledConditionalVAE(MedImageVAE):
    """forward(x (b, c, s, s), y (b,)) -> `VAEOutput`; encode(x) -> mu, logvar (b, shared + modality)."""

    def __init__(self, config: VAEConfig):
        self.shared, self.modality = config.latent_shared, config.latent_modality
        super().__init__(config, latent_size=self.shared + self.modality, centroid_size=self.modality)
        self.encoder = ConvEncoder(config.channels, config.widths, config.image_size)
        self.to_latent = nn.Linear(self.encoder.feature_dim, 2 * self.latent_size)
        self.discriminator: nn.Module | None = None
        if config.adversarial_weight > 0:
            w = config.discriminator_width
            self.discriminator = nn.Sequential(GradientReversal(1.0), nn.Linear(self.shared, w), nn.SiLU(),
                                               nn.Linear(w, w), nn.SiLU(), nn.Linear(w, len(config.modalities)))

    def encode(self, x: Float[Tensor, "b c s s"], y: Int[Tensor, " b"] | None = None) -> tuple[Tensor, Tensor]:
        """mu, logvar (b, shared + modality) of the image alone (``y`` is accepted and ignored)."""
        self.check_images(x)
        return self._latent(self.to_latent(self.encoder(x)))

    def forward(self, x: Float[Tensor, "b c s s"], y: Int[Tensor, " b"], *, kl_scale: float = 1.0) -> VAEOutput:
        c = self.config
        self.check_labels(y, len(x))
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        logits = self.decoder(z, self.embedding(y), y)
        loss, terms = self.elbo_terms(x, logits, mu, logvar, z, kl_scale)
        mu_shared, mu_modality = mu[:, :self.shared], mu[:, self.shared:]
        m = len(c.modalities)
        terms["separation"] = separation_loss(mu_modality, y, c.separation_margin, m)
        terms["contrastive"] = supervised_contrastive_loss(mu_modality, y, c.temperature)
        aux = c.separation_weight * terms["separation"] + c.contrastive_weight * terms["contrastive"]
        if self.discriminator is not None:
            disc_logits = self.discriminator(mu_shared)
            terms["adversarial"] = adversarial_loss(disc_logits, y)
            terms["discriminator_accuracy"] = (disc_logits.argmax(1) == y).float().mean().detach()
            aux = aux + c.adversarial_weight * terms["adversarial"]
        return VAEOutput(torch.sigmoid(logits), mu, logvar, z, loss + c.pixel_values * aux, terms)

    def latent_parts(self, mu: Float[Tensor, "b z"]) -> dict[str, Tensor]:
        """{"shared": (b, latent_shared), "modality": (b, latent_modality), "all": mu}."""
        return {"shared": mu[:, :self.shared], "modality": mu[:, self.shared:], "all": mu}

    def centroid_latent(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.encode(x)[0][:, self.shared:]

    @torch.no_grad()
    def classify(self, x: Float[Tensor, "b c s s"], batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """pred (b,), distance (b,): the fitted modality whose z_modality centroid is nearest to
        mu_modality(x) (Euclidean, latent units)."""
        self.check_images(x)
        latent = torch.cat([self.centroid_latent(x[i:i + batch_size].to(self.centroids.device))
                            for i in range(0, len(x), batch_size)])
        return self._nearest(latent)

    def sample_latent(self, y: Tensor, generator: torch.Generator | None, noise: float) -> Tensor:
        """[z_shared ~ N(0, I), centroid_y + noise * N(0, I)]."""
        self.fitted_modalities()
        missing = sorted({int(i) for i in y[self.centroid_counts[y] == 0]})
        if missing:
            names = ", ".join(self.config.modalities[i] for i in missing)
            raise MmtokError(f"DisentangledConditionalVAE.sample: no centroid for {names} (absent from the data "
                             "given to fit_centroids)")
        shared = self._normal((len(y), self.shared), generator)
        modality = self.centroids[y] + noise * self._normal((len(y), self.modality), generator)
        return torch.cat([shared, modality], dim=1)
