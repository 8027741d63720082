"""`NIRSpectrumCodec`: a NIR spectrum on any wavelength axis -> the card's input (cubic resampling
to ``size`` points over the spectrum's own range, SNV) -> one token per ``patch`` channels.

`SpectralFMCodec`: the same input through a frozen, pretrained SpectralFM -> continuous tokens:
the transformer's output token of every patch (``pool`` consecutive patches averaged into one)
and the posterior mean of z_chem as one global token, each standardised by the statistics
`fit_statistics` measured.

Decoding gives the SNV-normalised spectrum on the resampled axis: absolute absorbance level and
scale are not tokenized (they are mostly instrument and path-length effects, which is what
calibration transfer removes).
"""

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from mmtok import CodecError, ContinuousConfig, NeuralCodec, NeuralCodecConfig, QuantizerConfig, SpectrumCodec
from mmtok import build_quantizer, eval_mode, read_json
from mmtok_plugin_nir.modalities import NIRSpectrum
from mmtok_plugin_nir.preprocessing import resample, snv

__all__ = ["NIRSpectrumCodec", "SpectralFMCodec", "SpectralFMCodecConfig", "prepared_spectra", "resampled_axis",
           "spectralfm_weights"]


def resampled_axis(wavelength_nm: Tensor, n_points: int) -> Tensor:
    """(b, n_points) evenly spaced axes over each row's range of wavelength_nm (b, l)."""
    t = torch.linspace(0, 1, n_points, dtype=torch.float64)
    lo, hi = wavelength_nm[:, :1].double(), wavelength_nm[:, -1:].double()
    return (lo + (hi - lo) * t).float()


def prepared_spectra(m: NIRSpectrum, n_points: int) -> Tensor:
    """Resampled (cubic) and SNV-normalised values, (b, n_points). Rows that share an axis are
    interpolated together."""
    values, axes = m.values.double().cpu().numpy(), m.wavelength_nm.double().cpu().numpy()
    out = np.empty((len(m), n_points))
    _, first, groups = np.unique(axes, axis=0, return_index=True, return_inverse=True)
    for g, row in enumerate(first):
        rows = np.flatnonzero(groups.reshape(-1) == g)
        out[rows] = resample(values[rows], axes[row], n_points)[0]
    return torch.as_tensor(snv(out), dtype=torch.float32, device=m.values.device)


class NIRSpectrumCodec(SpectrumCodec):
    """NIR spectra (values (b, l) on wavelength_nm (b, l)) as ``size / patch`` tokens of a
    resampled, SNV-normalised (b, 1, size) spectrum."""

    family: ClassVar[str] = "nir-spectrum-patch"
    default_modality = NIRSpectrum

    def to_tensor(self, m: NIRSpectrum) -> Tensor:
        """values on any axis -> resampled, SNV-normalised (b, 1, size)."""
        return prepared_spectra(m, self.config.size[0]).unsqueeze(1)

    def decoded_shape(self, m: NIRSpectrum) -> tuple[int, ...]:
        return (len(m), self.config.size[0])

    def reconstruction_target(self, m: NIRSpectrum) -> Tensor:
        return self.to_tensor(m)[:, 0]

    def passthrough_fields(self, m: NIRSpectrum) -> dict:
        return {"wavelength_nm": resampled_axis(m.wavelength_nm, self.config.size[0]),
                "instrument": m.instrument, "domain": m.domain}

    def from_tensor(self, x: Tensor, **fields) -> NIRSpectrum:
        return NIRSpectrum(values=x[:, 0], **fields)


def spectralfm_weights(checkpoint: str | Path) -> Path:
    """The ``model.safetensors`` of a SpectralFM run directory (or that file itself), checked to
    exist with its ``model.json`` beside it (what `SpectralFM.save` writes)."""
    path = Path(checkpoint)
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file() or not path.with_suffix(".json").is_file():
        raise CodecError(f"checkpoint: expected SpectralFM weights {path} and {path.with_suffix('.json')} "
                         "(written by SpectralFM.save / `mmtok nir pretrain --out DIR`), found "
                         f"{'no weights' if not path.is_file() else 'no model.json'}")
    return path


class SpectralFMCodecConfig(NeuralCodecConfig):
    quantizer: QuantizerConfig = Field(default_factory=ContinuousConfig)
    checkpoint: str | None = Field(None, description="SpectralFM run directory (model.safetensors + model.json, "
                                   "as SpectralFM.save writes) whose weights the codec wraps; None: an untrained "
                                   "SpectralFM of `spectralfm` (weights then come from the codec's own checkpoint)")
    # without a checkpoint and with `spectralfm` empty the model is SpectralFMConfig.cpu() (what
    # `mmtok nir pretrain` trains by default: 64 patches of 32 channels)
    spectralfm: dict = Field(default_factory=dict, description="SpectralFMConfig fields when no checkpoint is "
                             "given (with one, they must be empty or equal the checkpoint's)")
    pool: int = Field(1, ge=1, description="consecutive patch tokens averaged into one token")
    z_chem_token: bool = Field(True, description="append the posterior mean of z_chem as one global token")


class SpectralFMCodec(NeuralCodec):
    """NIRSpectrum (b, l) on any axis -> resampled + SNV (b, n_points) -> frozen SpectralFM ->
    continuous tokens (b, p / pool + 1, w): the patch tokens after SpectralFM's transformer,
    mean-pooled over ``pool`` patches, then mu_chem, zero-padded to one width
    w = max(d_model, z_chem), each (token, dimension) standardised by fitted statistics
    (`fit_statistics`; identity until fitted). Decoding maps the patch tokens back through
    SpectralFM's patch head (a pooled token stands for each of its patches) to the SNV spectrum
    (b, n_points); the z_chem token is not used to decode. Nothing is trained: `mmtok
    fit-codec` with steps 0 fits the statistics only."""

    config_class = SpectralFMCodecConfig
    family: ClassVar[str] = "spectralfm"
    default_modality = NIRSpectrum

    def __init__(self, config, modality=None, name=None):
        super().__init__(config, modality, name)
        from mmtok_plugin_nir.model.spectralfm import SpectralFM, SpectralFMConfig

        cfg: SpectralFMCodecConfig = self.config
        if getattr(cfg.quantizer, "kind", None) != "continuous":
            raise CodecError(f"{self.name}: SpectralFM tokens are continuous; found quantizer "
                             f"{cfg.quantizer.kind!r}")
        if cfg.checkpoint:
            weights = spectralfm_weights(cfg.checkpoint)
            saved = read_json(weights.with_suffix(".json"))["config"]
            if cfg.spectralfm and SpectralFMConfig.from_dict(cfg.spectralfm) != SpectralFMConfig.from_dict(saved):
                raise CodecError(f"{self.name}: config.spectralfm differs from the checkpoint's config "
                                 f"({weights.with_suffix('.json')}); leave it empty")
            model = SpectralFM.load(weights)
        else:
            try:
                model = SpectralFM(SpectralFMConfig.from_dict(cfg.spectralfm) if cfg.spectralfm
                                   else SpectralFMConfig.cpu())
            except (TypeError, ValueError) as err:
                raise CodecError(f"{self.name}: config.spectralfm: {err}") from None
        if model.lora:
            raise CodecError(f"{self.name}: the checkpoint has LoRA adapters; a codec wraps a pretrained "
                             "(not fine-tuned) SpectralFM")
        # float64: standardising divides by spreads as small as 1e-4 of a token's size (similar spectra,
        # the VIB's collapsed mu_chem), which would turn float32 rounding into batch-dependent tokens
        self.spectralfm = model.double().eval().requires_grad_(False)
        c = model.config
        n_patches = c.n_points // c.patch_size
        if n_patches % cfg.pool:
            raise CodecError(f"{self.name}: pool {cfg.pool} does not divide the {n_patches} patches "
                             f"({c.n_points} points / patch {c.patch_size})")
        self.n_patch_tokens = n_patches // cfg.pool
        self.width = max(c.d_model, c.z_chem) if cfg.z_chem_token else c.d_model
        n = self.n_patch_tokens + int(cfg.z_chem_token)
        self.quantizer = build_quantizer(cfg.quantizer, self.width)
        self.register_buffer("token_mean", torch.zeros(n, self.width, dtype=torch.float64))
        self.register_buffer("token_std", torch.ones(n, self.width, dtype=torch.float64))

    @property
    def token_grid(self) -> tuple[int, ...]:
        return (self.n_patch_tokens + int(self.config.z_chem_token),)

    @property
    def n_points(self) -> int:
        return self.spectralfm.config.n_points

    def to_tensor(self, m: NIRSpectrum) -> Tensor:
        """values on any axis -> resampled, SNV-normalised (b, n_points)."""
        return prepared_spectra(m, self.n_points)

    def raw_tokens(self, m: NIRSpectrum) -> Tensor:
        """Unstandardised tokens (b, n, w), float64, of a batch (no grad)."""
        self.check_input(m)
        c = self.spectralfm.config
        with torch.no_grad():
            x = self.to_tensor(m).double()
            out = self.spectralfm(x, resampled_axis(m.wavelength_nm, c.n_points).to(x), m.domain.long())
            b = x.shape[0]
            patches = out.tokens[:, 2:].reshape(b, self.n_patch_tokens, self.config.pool, c.d_model).mean(2)
            parts = [torch.nn.functional.pad(patches, (0, self.width - c.d_model))]
            if self.config.z_chem_token:
                parts.append(torch.nn.functional.pad(out.mu_chem, (0, self.width - c.z_chem))[:, None])
            return torch.cat(parts, 1)

    @torch.no_grad()
    def fit_statistics(self, m: NIRSpectrum) -> None:
        """Mean and spread of every (token, dimension) over the batch m (padding keeps 0 / 1)."""
        z = self.raw_tokens(m)
        self.token_mean.copy_(z.mean(0))
        self.token_std.copy_(z.std(0, correction=0).clamp_min(1e-6) if len(z) > 1 else torch.ones_like(z[0]))

    @eval_mode
    def encode(self, m: NIRSpectrum):
        return self.stream(values=((self.raw_tokens(m) - self.token_mean) / self.token_std).float())

    @eval_mode
    def decode(self, stream, **fields: Any) -> NIRSpectrum:
        z = stream.values.double() * self.token_std + self.token_mean
        patches = z[:, :self.n_patch_tokens, :self.spectralfm.config.d_model]
        patches = patches.repeat_interleave(self.config.pool, dim=1)
        return NIRSpectrum(values=self.spectralfm.patch_head(patches).flatten(1).float(), **fields)

    def forward(self, m: NIRSpectrum):
        raise CodecError(f"{self.name}: the SpectralFM encoder is frozen, there is nothing to train; fit its "
                         "statistics only (`mmtok fit-codec --steps 0`, or codec.fit_statistics)")

    def decoded_shape(self, m: NIRSpectrum) -> tuple[int, ...]:
        return (len(m), self.n_points)

    def reconstruction_target(self, m: NIRSpectrum) -> Tensor:
        return self.to_tensor(m)

    def preprocess(self, m: NIRSpectrum) -> Tensor:
        return self.to_tensor(m)

    def passthrough_fields(self, m: NIRSpectrum) -> dict:
        return {"wavelength_nm": resampled_axis(m.wavelength_nm, self.n_points),
                "instrument": m.instrument, "domain": m.domain}
