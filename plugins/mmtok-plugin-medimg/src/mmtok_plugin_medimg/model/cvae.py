"""`ConditionalVAE`: the seed's baseline. One latent block of ``latent_dim`` (16) dims; the
modality embedding conditions both the encoder (concatenated to the conv features before the
latent projection) and the decoder ([z, e(y)] into the trunk, plus ``config.decoder``'s output
stage). Because the encoder is told the modality, the latent need not carry it: this is the
design whose modalities overlap in latent space (the seed's "modality entanglement").

    loss = recon + kl_weight * KL   ("elbo")   or the beta-TC form ("beta_tc"); terms: recon, kl
    (+ mi, tc, dwkl, kl_mc). The separation / contrastive / adversarial weights are not used.

Centroids live in the whole latent (mu under the true label). `classify(x)` has no label, so it
encodes x under every fitted modality m and picks the m whose centroid is nearest to mu(x | m).
`sample(y)` draws z ~ N(0, I) and decodes under y.
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mmtok import ModalityError
from mmtok_plugin_medimg.model.base import MedImageVAE, VAEOutput
from mmtok_plugin_medimg.model.config import VAEConfig
from mmtok_plugin_medimg.model.layers import ConvEncoder

__all__ = ["ConditionalVAE"]


class ConditionalVAE(MedImageVAE):
    """forward(x (b, c, s, s), y (b,)) -> `VAEOutput`; encode(x, y) -> mu, logvar (b, latent_dim)."""

    def __init__(self, config: VAEConfig):
        super().__init__(config, latent_size=config.latent_dim, centroid_size=config.latent_dim)
        self.encoder = ConvEncoder(config.channels, config.widths, config.image_size)
        self.to_latent = nn.Linear(self.encoder.feature_dim + config.embed_dim, 2 * config.latent_dim)

    def encode(self, x: Float[Tensor, "b c s s"], y: Int[Tensor, " b"] | None = None) -> tuple[Tensor, Tensor]:
        if y is None:
            raise ModalityError("ConditionalVAE.encode: the baseline's encoder is conditioned on the modality; "
                                "pass y (b,) (DisentangledConditionalVAE encodes without it)")
        self.check_images(x)
        self.check_labels(y, len(x))
        return self._latent(self.to_latent(torch.cat([self.encoder(x), self.embedding(y)], dim=1)))

    def forward(self, x: Float[Tensor, "b c s s"], y: Int[Tensor, " b"], *, kl_scale: float = 1.0) -> VAEOutput:
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar)
        logits = self.decoder(z, self.embedding(y), y)
        loss, terms = self.elbo_terms(x, logits, mu, logvar, z, kl_scale)
        return VAEOutput(torch.sigmoid(logits), mu, logvar, z, loss, terms)

    def latent_parts(self, mu: Float[Tensor, "b z"]) -> dict[str, Tensor]:
        """{"all": mu, "shared" / "modality": its first / second half (for comparison with the
        disentangled model's partition; nothing makes these halves mean anything here)}."""
        half = self.config.latent_dim // 2
        return {"all": mu, "shared": mu[:, :half], "modality": mu[:, half:]}

    def centroid_latent(self, x: Tensor, y: Tensor) -> Tensor:
        return self.encode(x, y)[0]

    @torch.no_grad()
    def classify(self, x: Float[Tensor, "b c s s"], batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """pred (b,), distance (b,): argmin over fitted modalities m of ||mu(x | m) - centroid_m||."""
        self.check_images(x)
        fitted = self.fitted_modalities()
        preds, dists = [], []
        for i in range(0, len(x), batch_size):
            chunk = x[i:i + batch_size].to(self.centroids.device)
            b, k = len(chunk), len(fitted)
            mu, _ = self.encode(chunk.repeat(k, 1, 1, 1), fitted.repeat_interleave(b))
            dist = (mu.view(k, b, -1) - self.centroids[fitted][:, None]).norm(dim=-1)   # (k, b)
            best, which = dist.min(0)
            preds.append(fitted[which])
            dists.append(best)
        return torch.cat(preds), torch.cat(dists)

    def sample_latent(self, y: Tensor, generator: torch.Generator | None, noise: float) -> Tensor:
        """z ~ N(0, I) (``noise`` is unused: the baseline has no modality centroid to sample around)."""
        return self._normal((len(y), self.config.latent_dim), generator)
