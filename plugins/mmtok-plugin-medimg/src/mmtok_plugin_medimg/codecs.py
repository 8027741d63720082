"""Medical-image codecs.

`MedicalImageCodec`: the core 2D patch codec (`mmtok.ImageCodec`) on images brought to one
geometry first (channels harmonised, resized with aspect kept and zero padding: see
`mmtok_plugin_medimg.preprocessing.to_model_input`); one FSQ token per 8 x 8 px of 64 x 64.

`ModalityVAECodec`: the encoder of a (trained) `DisentangledConditionalVAE` as a codec, so the
images become a stream of the shared transformer. Tokens are the posterior means:

    continuous: 2 tokens of 8 (z_shared, z_modality)                  grid (2,)
    fsq:        the 16-d latent in groups of len(levels) dims, FSQ'd   grid (16 / len(levels),)

FSQ bounds its input with tanh, so the latent is divided by ``latent_scale`` before and
multiplied after quantization (levels [8, 8, 8, 8] at scale 3: steps of 0.86 latent units).
Decoding picks the decoder head of the modality passed as ``imaging_modality=`` (a decode
field), else of the nearest modality centroid of z_modality (what the VAE's ``classify`` does).
"""

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mmtok import CodecError, ImageCodec, eval_mode, NeuralCodec, NeuralCodecConfig, PatchCodecConfig
from mmtok import ContinuousConfig, QuantizerConfig, build_quantizer
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES, MedicalImage2D
from mmtok_plugin_medimg.preprocessing import to_model_input

__all__ = ["MedicalImageCodecConfig", "MedicalImageCodec", "ModalityVAECodecConfig", "ModalityVAECodec"]

FIT = Literal["pad", "crop", "stretch"]


class MedicalImageCodecConfig(PatchCodecConfig):
    channels: int = Field(3, description="1 (grey) or 3 (RGB); images are harmonised to it")
    size: list[int] = Field(default_factory=lambda: [64, 64], min_length=2, max_length=2)
    patch: list[int] = Field(default_factory=lambda: [8, 8], min_length=2, max_length=2)
    fit: FIT = Field("pad", description="pad: keep the aspect ratio, pad with 0; crop: centre crop; stretch")
    norm: str = Field("none", pattern="^(standard|arcsinh|none)$", description="pixels are in [0, 1] already")

    @model_validator(mode="after")
    def _channels(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, found {self.channels}")
        return self


def _canonical(codec, m: MedicalImage2D) -> MedicalImage2D:
    """The images at the codec's geometry (what `to_tensor` sees), other fields kept."""
    return m.replace(pixels=codec.to_tensor(m))


def _decoded(codec, x: Tensor, fields: dict) -> MedicalImage2D:
    fields = {k: v for k, v in fields.items() if k in ("imaging_modality", "pixel_spacing_mm", "body_part")}
    return MedicalImage2D(pixels=x.float().clamp(0.0, 1.0), **fields)


class MedicalImageCodec(ImageCodec):
    """MedicalImage2D (b, c, h, w) any size -> (b, channels, *size) -> one token per patch."""

    config_class = MedicalImageCodecConfig
    family: ClassVar[str] = "medical-image-patch"
    default_modality = MedicalImage2D

    def to_tensor(self, m: MedicalImage2D) -> Tensor:
        cfg: MedicalImageCodecConfig = self.config
        return to_model_input(m, size=tuple(cfg.size), channels=cfg.channels, fit=cfg.fit)

    def from_tensor(self, x: Tensor, **fields: Any) -> MedicalImage2D:
        return _decoded(self, x, fields)

    def canonical(self, m: MedicalImage2D) -> MedicalImage2D:
        return _canonical(self, m)

    def decoded_shape(self, m: MedicalImage2D) -> tuple[int, ...]:
        return (len(m), self.config.channels, *self.config.size)

    def reconstruction_target(self, m: MedicalImage2D) -> Tensor:
        return self.to_tensor(m)


class ModalityVAECodecConfig(NeuralCodecConfig):
    quantizer: QuantizerConfig = Field(default_factory=ContinuousConfig)
    vae: dict = Field(default_factory=dict, description="the DisentangledConditionalVAE's VAEConfig fields")
    fit: FIT = "pad"
    latent_scale: float = Field(3.0, gt=0, description="latent / scale goes into FSQ's tanh bound")


class ModalityVAECodec(NeuralCodec):
    """MedicalImage2D -> the disentangled VAE's posterior mean (b, 16) -> tokens (see module doc)."""

    config_class = ModalityVAECodecConfig
    family: ClassVar[str] = "medimg-vae"
    default_modality = MedicalImage2D

    def __init__(self, config, modality=None, name=None):
        super().__init__(config, modality, name)
        from mmtok_plugin_medimg.model import DisentangledConditionalVAE, VAEConfig

        cfg: ModalityVAECodecConfig = self.config
        vae_config = VAEConfig(**{"modalities": list(IMAGING_MODALITIES), **cfg.vae})
        self.vae = DisentangledConditionalVAE(vae_config)
        latent = vae_config.latent_shared + vae_config.latent_modality
        q = cfg.quantizer
        if getattr(q, "kind", None) == "continuous":
            if vae_config.latent_shared != vae_config.latent_modality:
                raise CodecError(f"{self.name}: continuous tokens are z_shared and z_modality, which need one "
                                 f"width; found {vae_config.latent_shared} and {vae_config.latent_modality}")
            self.token_width = vae_config.latent_shared
        else:
            levels = getattr(q, "levels", None)
            if levels is None or latent % len(levels):
                raise CodecError(f"{self.name}: an FSQ quantizer with len(levels) dividing the latent width "
                                 f"{latent} is needed, found {q}")
            self.token_width = len(levels)
        self.latent = latent
        self.quantizer = build_quantizer(q, self.token_width)

    @classmethod
    def from_vae(cls, vae, quantizer: dict | None = None, *, name: str | None = None, **config) -> "ModalityVAECodec":
        """A codec around a trained VAE (its weights and centroids copied)."""
        cfg = {"modality": MedicalImage2D.name, "vae": vae.config.model_dump(mode="json"),
               "quantizer": quantizer or {"kind": "continuous"}, **config}
        codec = cls(cfg, name=name)
        codec.vae.load_state_dict(vae.state_dict())
        return codec.eval()

    @property
    def token_grid(self) -> tuple[int, ...]:
        return (self.latent // self.token_width,)

    @property
    def input_shape(self) -> tuple[int, ...]:
        c = self.vae.config
        return (c.channels, c.image_size, c.image_size)

    def to_tensor(self, m: MedicalImage2D) -> Tensor:
        c = self.vae.config
        return to_model_input(m, size=(c.image_size, c.image_size), channels=c.channels, fit=self.config.fit)

    def _scale(self) -> float:
        return self.config.latent_scale if self.quantizer.is_discrete else 1.0

    def _encode(self, x: Tensor) -> Tensor:
        mu, _ = self.vae.encode(x)
        return (mu / self._scale()).reshape(x.shape[0], -1, self.token_width)

    def _to_model(self, labels: Tensor) -> Tensor:
        """IMAGING_MODALITIES indices -> the VAE's own label indices (refusing labels it lacks)."""
        names = list(self.vae.config.modalities)
        wanted = [IMAGING_MODALITIES[i] for i in labels.tolist()]
        missing = sorted(set(wanted) - set(names))
        if missing:
            raise CodecError(f"{self.name}: this VAE has no decoder for imaging modality {missing}; it knows {names}")
        return torch.tensor([names.index(w) for w in wanted], dtype=torch.long, device=labels.device)

    def _from_model(self, labels: Tensor) -> Tensor:
        names = self.vae.config.modalities
        return torch.tensor([IMAGING_MODALITIES.index(names[i]) for i in labels.tolist()], dtype=torch.long)

    def _labels(self, z: Tensor) -> Tensor:
        """The VAE's label of the nearest z_modality centroid; an unfitted VAE (no centroids) has
        none, and its decode needs imaging_modality= (refused otherwise)."""
        if int(self.vae.centroid_counts.sum()) == 0:
            raise CodecError(f"{self.name}: this VAE has no modality centroids (untrained); pass imaging_modality= "
                             "to decode")
        return self.vae._nearest(z[:, self.vae.config.latent_shared:])[0]

    def _decode(self, z_q: Tensor, labels: Tensor | None = None) -> Tensor:
        """labels: the VAE's own indices (None: nearest centroid)."""
        z = z_q.reshape(z_q.shape[0], self.latent) * self._scale()
        return self.vae.decode(z, self._labels(z) if labels is None else labels)

    @eval_mode
    def decode(self, stream, **fields: Any) -> MedicalImage2D:
        z_q = self.quantizer.ids_to_codes(stream.ids) if stream.is_discrete else stream.values
        z_q = z_q.float()
        given = fields.get("imaging_modality")
        labels = self._to_model(given) if given is not None else self._labels(
            z_q.reshape(z_q.shape[0], self.latent) * self._scale())
        x_hat = self._decode(z_q, labels)
        if given is None:
            fields = {**fields, "imaging_modality": self._from_model(labels)}
        return self.from_tensor(x_hat, **fields)

    def forward(self, m: MedicalImage2D):
        from mmtok import CodecOutput

        self.check_input(m)
        if m.imaging_modality is None:
            raise CodecError(f"{self.name}: training needs MedicalImage2D.imaging_modality (the decoder head)")
        x = self.preprocess(m)
        q = self.quantizer.quantize(self._encode(x))
        return CodecOutput(x, self._decode(q.z_q, self._to_model(m.imaging_modality)), q.ids, q.aux_loss)

    def from_tensor(self, x: Tensor, **fields: Any) -> MedicalImage2D:
        return _decoded(self, x, fields)

    def canonical(self, m: MedicalImage2D) -> MedicalImage2D:
        return _canonical(self, m)

    def decoded_shape(self, m: MedicalImage2D) -> tuple[int, ...]:
        return (len(m), *self.input_shape)

    def reconstruction_target(self, m: MedicalImage2D) -> Tensor:
        return self.to_tensor(m)
