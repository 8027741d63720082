"""`VAEConfig`: sizes and loss weights of the conditional VAEs (JSON-serialisable, pydantic).

Shapes: images (b, channels, image_size, image_size) in [0, 1]; labels y (b,) int64 indices into
``modalities`` (the label names the model knows, by default every label of
`mmtok_plugin_medimg.IMAGING_MODALITIES`, in that order).

Loss scale: the reconstruction term is a sum over the c * h * w pixel values of an image and the
KL a sum over latent dims (nats per image, averaged over the batch). The auxiliary terms
(separation, contrastive, adversarial) are O(1) numbers, so the model multiplies their weights by
c * h * w: ``contrastive_weight = 0.01`` means "worth 0.01 nats per pixel value" at any image size.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmtok import ModalityError
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES

__all__ = ["ARCHITECTURE_FIELDS", "VAEConfig"]

#: the fields that decide the weights' shapes or meaning; a saved model refuses a config.json
#: that changes one of them (loss weights may change: they do not touch the weights)
ARCHITECTURE_FIELDS = ("image_size", "channels", "modalities", "latent_dim", "latent_shared", "latent_modality",
                       "widths", "embed_dim", "decoder", "experts", "discriminator_width")


class VAEConfig(BaseModel):
    """Configuration of `ConditionalVAE` (uses ``latent_dim``) and `DisentangledConditionalVAE`
    (uses ``latent_shared`` + ``latent_modality``)."""

    model_config = ConfigDict(extra="forbid")

    # ------------------------------------------------------------------ data
    image_size: int = Field(default=64, ge=8)
    channels: int = 3
    modalities: list[str] = Field(default_factory=lambda: list(IMAGING_MODALITIES), min_length=1)

    # ------------------------------------------------------------------ architecture
    #: baseline `ConditionalVAE`: one latent block
    latent_dim: int = Field(default=16, ge=2)
    #: `DisentangledConditionalVAE`: z = [z_shared, z_modality]
    latent_shared: int = Field(default=8, ge=1)
    latent_modality: int = Field(default=8, ge=1)
    #: channels of the stride-2 conv blocks; the input is zero-padded to a multiple of
    #: 2 ** len(widths) (28 -> 32 with four blocks), the decoder mirrors them
    #: CPU-sized: 0.41 M parameters at 64 x 64 x 3, ~320 training images/s on one core ([32, 64, 128, 256]: 1.36 M, ~120)
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=1)
    #: modality embedding (conditions the decoder; the baseline's encoder too)
    embed_dim: int = Field(default=16, ge=1)
    #: "shared": one output layer; "heads": one output head per modality (FiLM + 1x1 conv,
    #: gathered by label); "moe": a gated mixture of pointwise experts
    decoder: Literal["shared", "heads", "moe"] = "heads"
    experts: int = Field(default=4, ge=1)
    #: hidden width of the modality discriminator on z_shared (exists when adversarial_weight > 0)
    discriminator_width: int = Field(default=64, ge=1)

    # ------------------------------------------------------------------ objective
    #: per-pixel reconstruction likelihood, summed over pixel values: Bernoulli ("bce", on the
    #: decoder's logits) or Gaussian with unit variance up to a constant ("mse", 0.5 * squared error)
    reconstruction: Literal["bce", "mse"] = "bce"
    #: "elbo": recon + kl_weight * KL (kl_weight > 1: beta-VAE); "beta_tc": recon +
    #: kl_weight * (MI + dimension-wise KL) + tc_weight * TC (Chen et al. 2018, minibatch-weighted sampling)
    objective: Literal["elbo", "beta_tc"] = "elbo"
    kl_weight: float = Field(default=1.0, ge=0)
    tc_weight: float = Field(default=6.0, ge=0)
    #: alpha: hinge on the distances between the batch's modality centroids of z_modality
    separation_weight: float = Field(default=0.05, ge=0)
    #: centroids this far apart (latent units) cost nothing more
    separation_margin: float = Field(default=12.0, gt=0)
    #: beta: supervised contrastive loss (Khosla et al. 2020) on normalised z_modality
    contrastive_weight: float = Field(default=0.01, ge=0)
    temperature: float = Field(default=0.1, gt=0)
    #: modality discriminator on z_shared through gradient reversal (0: none)
    adversarial_weight: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "VAEConfig":
        if self.channels not in (1, 3):
            raise ValueError(f"channels: expected 1 (grey) or 3 (RGB), found {self.channels}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities: labels must be unique, found {self.modalities}")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"widths: expected positive channel counts, found {self.widths}")
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def pixel_values(self) -> int:
        """c * h * w: the number of terms of the reconstruction sum (scales the auxiliary weights)."""
        return self.channels * self.image_size * self.image_size

    def index_of(self, label: str) -> int:
        """Index of a modality label in ``modalities``."""
        if label not in self.modalities:
            raise ModalityError(f"VAEConfig.modalities: this model knows {', '.join(self.modalities)}, "
                                f"found {label!r}")
        return self.modalities.index(label)

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        return cls.model_validate(d)
