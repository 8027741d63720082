"""Patch codecs for gridded data: 1D spectra / time series, 2D images, 3D volumes.

One architecture, three dimensionalities. With ``N`` spatial axes (``size``) and patch ``p``:

    x: (b, c, *size) --ChannelNorm--> --ConvNd(k=p, s=p)--> (b, hidden, *size/p)
      --residual ConvNd(k=3) blocks--> --1x1--> z: (b, n = prod(size/p), latent_dim)
    z_q --1x1--> residual blocks --ConvTransposeNd(k=p, s=p)--> x_hat: (b, c, *size)

Each token is one patch, with context from its neighbours through the 3x3(x3) blocks.
"""

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmtok.codec import ChannelNorm, NeuralCodec, NeuralCodecConfig
from mmtok.errors import ModalityError
from mmtok.modalities import Image, Spectrum, TimeSeries, Volume
from mmtok.modality import Modality
from mmtok.quantize import build_quantizer

__all__ = ["PatchCodecConfig", "PatchCodec", "SpectrumCodec", "TimeSeriesCodecConfig", "TimeSeriesCodec",
           "ImageCodec", "VolumeCodec"]

_CONV = {1: (nn.Conv1d, nn.ConvTranspose1d), 2: (nn.Conv2d, nn.ConvTranspose2d),
         3: (nn.Conv3d, nn.ConvTranspose3d)}


class PatchCodecConfig(NeuralCodecConfig):
    channels: int = Field(ge=1, description="number of input channels / bands")
    size: list[int] = Field(min_length=1, max_length=3, description="spatial size, e.g. [64, 64]")
    patch: list[int] = Field(min_length=1, max_length=3, description="patch size per axis")
    hidden: int = Field(64, ge=1, description="conv channels of encoder and decoder")
    latent_dim: int = Field(8, ge=1, description="width of each latent before quantization (FSQ: its levels set it)")
    blocks: int = Field(2, ge=0, description="residual conv blocks on each side")
    norm: str = Field("standard", pattern="^(standard|arcsinh|none)$", description="per-channel input normalisation fitted on the data: z-score, arcsinh (heavy tails, e.g. flux), none")

    @model_validator(mode="after")
    def _divisible(self):
        if len(self.size) != len(self.patch):
            raise ValueError(f"size {self.size} and patch {self.patch} must have the same length")
        for s, p in zip(self.size, self.patch):
            if p < 1 or s % p:
                raise ValueError(f"size {self.size} must be divisible by patch {self.patch}")
        return self


class _ResBlock(nn.Module):
    def __init__(self, conv: type[nn.Module], dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(1, dim), nn.GELU(), conv(dim, dim, 3, padding=1),
                                 nn.GELU(), conv(dim, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class PatchEncoder(nn.Module):
    """(b, c, *size) -> (b, n, latent_dim)."""

    def __init__(self, cfg: PatchCodecConfig):
        super().__init__()
        conv, _ = _CONV[len(cfg.size)]
        self.net = nn.Sequential(conv(cfg.channels, cfg.hidden, cfg.patch, stride=cfg.patch),
                                 *[_ResBlock(conv, cfg.hidden) for _ in range(cfg.blocks)],
                                 nn.GELU(), conv(cfg.hidden, cfg.latent_dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(2).transpose(1, 2)


class PatchDecoder(nn.Module):
    """(b, n, latent_dim) -> (b, c, *size)."""

    def __init__(self, cfg: PatchCodecConfig):
        super().__init__()
        conv, deconv = _CONV[len(cfg.size)]
        self.grid = [s // p for s, p in zip(cfg.size, cfg.patch)]
        self.net = nn.Sequential(conv(cfg.latent_dim, cfg.hidden, 1),
                                 *[_ResBlock(conv, cfg.hidden) for _ in range(cfg.blocks)],
                                 nn.GELU(), deconv(cfg.hidden, cfg.channels, cfg.patch, stride=cfg.patch))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.transpose(1, 2).reshape(z.shape[0], z.shape[2], *self.grid))


class PatchCodec(NeuralCodec):
    """Generic patch codec; subclasses fix the number of spatial axes (``ndim``)."""

    config_class = PatchCodecConfig
    family: ClassVar[str] = "patch"
    ndim: ClassVar[int]

    def __init__(self, config, modality: type[Modality] | None = None, name: str | None = None):
        super().__init__(config, modality, name)
        cfg: PatchCodecConfig = self.config
        if len(cfg.size) != self.ndim:
            raise ModalityError(f"{type(self).__name__}: expects {self.ndim} spatial axes, config "
                                f"size is {cfg.size}")
        self.norm = ChannelNorm(cfg.channels, cfg.norm)
        self.encoder = PatchEncoder(cfg)
        self.quantizer = build_quantizer(cfg.quantizer, cfg.latent_dim)
        self.decoder = PatchDecoder(cfg)

    @property
    def token_grid(self) -> tuple[int, ...]:
        return tuple(s // p for s, p in zip(self.config.size, self.config.patch))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.config.channels, *self.config.size)

    def extra_repr(self) -> str:
        return f"grid={self.token_grid}, tokens={math.prod(self.grid)}, vocab={self.vocab_size}"


class SpectrumCodec(PatchCodec):
    """1D spectra: (b, c, wavelengths) in patches of ``patch`` channels."""
    family = "spectrum-patch"
    ndim = 1
    default_modality = Spectrum


class TimeSeriesCodecConfig(PatchCodecConfig):
    length: Literal["exact", "pad", "crop", "resample"] = Field(
        "exact", description="series of another length than size[0]: refuse them (exact); pad shorter ones "
                             "by repeating the last step, marked invalid (pad); keep the first size[0] "
                             "steps of longer ones (crop); interpolate linearly to size[0] (resample)")


class TimeSeriesCodec(PatchCodec):
    """Regularly sampled time series: (b, c, t) in windows of ``patch`` steps; series of any
    length t are brought to ``size[0]`` steps by the config's ``length`` policy.

    With ``pad``, the padded steps (and steps a `TimeSeries.valid` marks False) carry no loss
    when the codec is fitted, and the decoded series has ``valid`` False there when the
    original's fields are passed to ``decode``.
    """
    config_class = TimeSeriesCodecConfig
    family = "timeseries-patch"
    ndim = 1
    default_modality = TimeSeries

    def _fit_length(self, x: Tensor, what: str, mode: str = "linear") -> Tensor:
        """(b, [c,] t) -> (b, [c,] size[0]) by the length policy; ``mode`` nearest for masks."""
        cfg: TimeSeriesCodecConfig = self.config
        n, t = cfg.size[0], x.shape[-1]
        if t == n:
            return x
        if cfg.length == "pad" and t < n:
            return F.pad(x.float(), (0, n - t), mode="replicate").to(x.dtype) if x.dim() == 3 else \
                F.pad(x, (0, n - t), value=False if x.dtype == torch.bool else 0)
        if cfg.length == "crop" and t > n:
            return x[..., :n]
        if cfg.length == "resample":
            y = x.float() if x.dim() == 3 else x.float()[:, None]
            y = F.interpolate(y, size=n, mode=mode, **({"align_corners": True} if mode == "linear" else {}))
            y = y if x.dim() == 3 else y[:, 0]
            return y.bool() if x.dtype == torch.bool else y.to(x.dtype)
        hint = {"exact": "set length: pad, crop or resample in the codec config",
                "pad": "pad only lengthens; use crop or resample for longer series",
                "crop": "crop only shortens; use pad or resample for shorter series"}.get(cfg.length, "")
        raise ModalityError(f"{self.name}: {what} has {t} steps, the codec takes {n} (length: {cfg.length}); {hint}")

    def _valid(self, m: TimeSeries) -> Tensor | None:
        """(b, size[0]) validity of each step after the length policy; None when all are valid."""
        t = m.values.shape[-1]
        own = m.valid if m.valid is not None else torch.ones(len(m), t, dtype=torch.bool, device=m.values.device)
        if m.valid is None and (t >= self.config.size[0] or self.config.length != "pad"):
            return None
        return self._fit_length(own, f"{type(m).__name__}.valid", mode="nearest")

    def to_tensor(self, m: Modality) -> Tensor:
        x = getattr(m, self.field)
        c = self.config.channels
        if x.dim() != 3 or x.shape[1] != c:
            raise ModalityError(f"{self.name}: {type(m).__name__}.{self.field} must be (b, {c}, t) ({c} channel"
                                f"{'s' if c > 1 else ''}), found {tuple(x.shape)}")
        return self._fit_length(x.float(), f"{type(m).__name__}.{self.field}")

    def forward(self, m: Modality):
        """Training pass; steps that are not valid (padding) carry no reconstruction loss."""
        out = super().forward(m)
        valid = self._valid(m) if isinstance(m, TimeSeries) else None
        if valid is None:
            return out
        return out._replace(x_hat=torch.where(valid[:, None, :].to(out.x.device), out.x_hat, out.x.detach()))

    def _fit_fields(self, m: TimeSeries) -> dict[str, Any]:
        """``m``'s other fields at the codec's length: ``valid`` (padded steps False), ``time``
        (dropped when padded: the times of padded steps are unknown)."""
        t, n = m.values.shape[-1], self.config.size[0]
        out = self.passthrough_fields(m)
        out["valid"] = self._valid(m)
        if m.time is not None:
            out["time"] = None if (self.config.length == "pad" and t < n) else self._fit_length(m.time, "time")
        return out

    def decode_like(self, stream, m: Modality) -> Modality:
        return self.decode(stream, **(self._fit_fields(m) if isinstance(m, TimeSeries) else
                                      self.passthrough_fields(m)))

    def canonical(self, m: Modality) -> Modality:
        if not isinstance(m, TimeSeries):
            return m
        return m.replace(values=self.to_tensor(m), **{k: v for k, v in self._fit_fields(m).items()
                                                      if k in ("valid", "time")})

    def decoded_shape(self, m: Modality) -> tuple[int, ...]:
        return (len(m), self.config.channels, self.config.size[0])

    def reconstruction_target(self, m: Modality) -> Tensor:
        return self.to_tensor(m)


class ImageCodec(PatchCodec):
    """Multi-band 2D images: (b, c, h, w) in a grid of ``patch`` pixels."""
    family = "image-patch"
    ndim = 2
    default_modality = Image


class VolumeCodec(PatchCodec):
    """3D volumes: (b, c, d, h, w) in a grid of ``patch`` voxels."""
    family = "volume-patch"
    ndim = 3
    default_modality = Volume
