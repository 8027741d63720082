"""The seed's model, whole: guided SpectralGPT pretraining (MAE on 3D spatial-spectral patches,
auxiliary images as cross-attention guidance and as contrastive partners), inference on the
HSI cube alone.

    GuidedSpectralGPT(config)(cube (b, bands, size, size), {name: AuxInput}) -> PretrainOutput
    .embed(cube) -> (b, dim)      .tokens(cube) -> (b, n, dim)      .reconstruct(cube) -> cube, mask

With ``config.auxiliaries = {}`` it is the unguided SpectralGPT MAE of the same size.
"""

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from jaxtyping import Bool, Float
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import save_file
from torch import Tensor, nn

from mmtok import DamagedFileError, MmtokError, atomic_write, load_weights_into, read_json, read_safetensors
from mmtok_plugin_hsi.model.conditioner import ModalityConditioner, ProjectionHead
from mmtok_plugin_hsi.model.decoder import MAEDecoder
from mmtok_plugin_hsi.model.encoder import GuidedSpectralEncoder, MaskingPlan
from mmtok_plugin_hsi.model.layers import init_weights, patchify, unpatchify
from mmtok_plugin_hsi.model.losses import info_nce, masked_mse, normalized_patches

__all__ = ["AuxInput", "GuidedSpectralGPT", "GuidedSpectralGPTConfig", "PretrainOutput"]

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class GuidedSpectralGPTConfig(BaseModel):
    """Sizes and loss weights of `GuidedSpectralGPT` (defaults: 192-band 9 x 9 cubes, 12-band x
    3 x 3 px patches, a 4-block 128-wide encoder)."""

    model_config = ConfigDict(extra="forbid")

    #: input cube (b, bands, size, size)
    bands: int = Field(default=192, ge=1)
    size: int = Field(default=9, ge=1)
    #: 3D patch = spectral_patch bands x spatial_patch x spatial_patch pixels
    spectral_patch: int = Field(default=12, ge=1)
    spatial_patch: int = Field(default=3, ge=1)
    dim: int = Field(default=128, ge=1)
    depth: int = Field(default=4, ge=1)
    heads: int = Field(default=4, ge=1)
    mlp_ratio: float = Field(default=4.0, gt=0)
    #: factorised spectral attention (within each spatial position) in every encoder block
    spectral_attention: bool = True
    #: a cross-attention layer after every k-th encoder block (guided models only)
    cross_attention_every: int = Field(default=1, ge=1)
    decoder_dim: int = Field(default=64, ge=1)
    decoder_depth: int = Field(default=2, ge=0)
    decoder_heads: int = Field(default=4, ge=1)
    mask_ratio: float = Field(default=0.9, ge=0, lt=1)
    norm_pix_loss: bool = False
    #: auxiliary modality name -> channels; {} = the unguided SpectralGPT
    auxiliaries: dict[str, int] = Field(default_factory=dict)
    #: conditioner ViT patch (clamped to the image side, so 1 x 1 images work), width, depth, tokens
    aux_patch: int = Field(default=3, ge=1)
    conditioner_dim: int = Field(default=64, ge=1)
    conditioner_depth: int = Field(default=2, ge=0)
    conditioning_tokens: int = Field(default=4, ge=1)
    #: lambda: loss = mae + contrastive_weight * mean of the per-auxiliary InfoNCE terms
    contrastive_weight: float = Field(default=0.1, ge=0)
    temperature: float = Field(default=0.07, gt=0)
    embed_dim: int = Field(default=64, ge=1)
    #: the HSI side of the contrastive loss: "guided" = the masked pass's latent (which has
    #: cross-attended to the auxiliaries), "hsi" = the same visible tokens encoded without them
    contrastive_latent: Literal["guided", "hsi"] = "guided"

    @model_validator(mode="after")
    def _consistent(self) -> "GuidedSpectralGPTConfig":
        if self.bands % self.spectral_patch or self.size % self.spatial_patch:
            raise ValueError(f"spectral_patch {self.spectral_patch} must divide bands {self.bands} and "
                             f"spatial_patch {self.spatial_patch} must divide size {self.size}")
        for width, heads, what in ((self.dim, self.heads, "dim"), (self.decoder_dim, self.decoder_heads, "decoder_dim"),
                                   (self.conditioner_dim, self.heads, "conditioner_dim")):
            if width % heads:
                raise ValueError(f"{what} {width} must be divisible by its heads ({heads})")
        for name, channels in self.auxiliaries.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or channels < 1:
                raise ValueError(f"auxiliaries: expected identifier -> channels >= 1, found {name!r}: {channels}")
        if self.auxiliaries:
            if self.cross_attention_every > self.depth:
                raise ValueError(f"cross_attention_every {self.cross_attention_every} exceeds depth {self.depth}: "
                                 f"no cross-attention layer would exist")
            patch = min(self.aux_patch, self.size)
            if self.size % patch:
                raise ValueError(f"aux_patch {self.aux_patch} must divide size {self.size}")
        return self

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict) -> "GuidedSpectralGPTConfig":
        return cls.model_validate(d)


class AuxInput(NamedTuple):
    """One auxiliary modality of a batch: pixels (b, c, h, w) on the cube's grid; present (b,)
    bool, False = this sample lacks it (its pixels are never read)."""

    pixels: Float[Tensor, "b c h w"]
    present: Bool[Tensor, " b"]


@dataclasses.dataclass
class PretrainOutput:
    """loss = mae_loss + contrastive_weight * mean(contrastive.values()) (scalar); contrastive: one
    InfoNCE per auxiliary with >= 2 present samples; pred / target (b, n, patch_dim) (target
    normalised per patch when norm_pix_loss); mask (b, n) True = masked."""

    loss: Tensor
    mae_loss: Tensor
    contrastive: dict[str, Tensor]
    pred: Tensor
    target: Tensor
    mask: Tensor


class Conditioning(NamedTuple):
    """tokens (b, k, d) and valid (b, k) over every configured auxiliary (k = auxiliaries x
    conditioning_tokens, config order; missing ones zero and invalid); per present auxiliary, the
    indices of its present samples (p,) and their embeddings (p, embed_dim)."""

    tokens: Tensor
    valid: Tensor
    embeddings: dict[str, tuple[Tensor, Tensor]]


class GuidedSpectralGPT(nn.Module):
    """`GuidedSpectralEncoder` + `MAEDecoder` + one `ModalityConditioner` per auxiliary + the HSI
    projection head of the contrastive loss (guided models only)."""

    def __init__(self, cfg: GuidedSpectralGPTConfig | None = None):
        super().__init__()
        self.config = c = cfg or GuidedSpectralGPTConfig()
        self.encoder = GuidedSpectralEncoder(c.bands, c.size, c.spectral_patch, c.spatial_patch, c.dim, c.depth,
                                             c.heads, c.mlp_ratio, c.spectral_attention,
                                             c.cross_attention_every if c.auxiliaries else 0)
        self.num_patches, self.patch_dim = self.encoder.num_patches, self.encoder.patch_embed.patch_dim
        self.grid = self.encoder.grid
        self.decoder = MAEDecoder(self.grid, c.dim, self.patch_dim, c.decoder_dim, c.decoder_depth,
                                  c.decoder_heads, c.mlp_ratio)
        self.conditioners = nn.ModuleDict({
            name: ModalityConditioner(channels, c.size, c.aux_patch, c.conditioner_dim, c.conditioner_depth,
                                      c.heads, c.conditioning_tokens, c.dim, c.embed_dim, c.mlp_ratio, name=name)
            for name, channels in c.auxiliaries.items()})
        if c.auxiliaries:
            self.hsi_head = ProjectionHead(c.dim, c.embed_dim)
            self.hsi_head.apply(init_weights)

    @property
    def guided(self) -> bool:
        return bool(self.config.auxiliaries)

    # ------------------------------------------------------------------ inputs
    def check_cube(self, cube: Tensor) -> None:
        """`MmtokError` unless ``cube`` is (b, bands, size, size) of this config."""
        self.encoder.patch_embed.check(cube)

    def condition(self, aux: Mapping[str, AuxInput] | None, b: int, device: torch.device) -> Conditioning:
        """Run each auxiliary's conditioner on its present samples only (absent pixels are never
        read); a name missing from ``aux`` is the same as present all False."""
        c, aux = self.config, dict(aux or {})
        unknown = sorted(set(aux) - set(c.auxiliaries))
        if unknown:
            raise MmtokError(f"aux: {unknown[0]!r} is not an auxiliary of this model "
                             f"(config.auxiliaries: {sorted(c.auxiliaries) or 'none, an unguided model'})")
        t = c.conditioning_tokens
        dtype = self.encoder.norm.weight.dtype
        tokens, valid, embeddings = [], [], {}
        for name, conditioner in self.conditioners.items():
            toks = torch.zeros(b, t, c.dim, device=device, dtype=dtype)
            present = torch.zeros(b, dtype=torch.bool, device=device)
            if name in aux:
                pixels, present = self._check_aux(name, aux[name], b, device)
                idx = present.nonzero()[:, 0]
                if len(idx):
                    out = conditioner(pixels.index_select(0, idx))
                    toks = toks.index_copy(0, idx, out.tokens.to(dtype))
                    embeddings[name] = (idx, out.embedding)
            tokens.append(toks)
            valid.append(present[:, None].expand(b, t))
        if not tokens:
            return Conditioning(torch.zeros(b, 0, c.dim, device=device, dtype=dtype),
                                torch.zeros(b, 0, dtype=torch.bool, device=device), {})
        return Conditioning(torch.cat(tokens, 1), torch.cat(valid, 1), embeddings)

    def _check_aux(self, name: str, item, b: int, device: torch.device) -> tuple[Tensor, Tensor]:
        try:
            pixels, present = item
        except (TypeError, ValueError):
            raise MmtokError(f"aux[{name!r}]: expected AuxInput(pixels, present), "
                             f"found {type(item).__name__}") from None
        channels, size = self.config.auxiliaries[name], self.config.size
        if not torch.is_tensor(pixels) or tuple(pixels.shape) != (b, channels, size, size):
            found = tuple(pixels.shape) if torch.is_tensor(pixels) else type(pixels).__name__
            raise MmtokError(f"aux[{name!r}].pixels: expected ({b}, {channels}, {size}, {size}) = (b, c, h, w) on the "
                             f"cube's grid, found {found}")
        if not torch.is_tensor(present) or present.dtype != torch.bool or tuple(present.shape) != (b,):
            found = (f"{tuple(present.shape)} {present.dtype}" if torch.is_tensor(present)
                     else type(present).__name__)
            raise MmtokError(f"aux[{name!r}].present: expected ({b},) bool, found {found}")
        return pixels.to(device), present.to(device)

    # ------------------------------------------------------------------ pretraining
    def forward(self, cube: Float[Tensor, "b bands h w"], aux: Mapping[str, AuxInput] | None = None, *,
                generator: torch.Generator | None = None) -> PretrainOutput:
        """One masked pretraining pass (masking drawn from ``generator``)."""
        c = self.config
        self.check_cube(cube)
        b = cube.shape[0]
        cond = self.condition(aux, b, cube.device)  # (also rejects auxiliaries an unguided model lacks)
        enc = self.encoder(cube, cond.tokens, cond.valid, c.mask_ratio, generator)
        pred = self.decoder(enc.tokens, enc.ids_restore)
        target = patchify(cube.float(), c.spectral_patch, c.spatial_patch)
        mae = masked_mse(pred, target, enc.mask, c.norm_pix_loss)
        contrastive: dict[str, Tensor] = {}
        if any(len(idx) >= 2 for idx, _ in cond.embeddings.values()):
            latent = enc.tokens
            if c.contrastive_latent == "hsi":
                latent = self.encoder(cube, plan=MaskingPlan(enc.ids_keep, enc.ids_restore, enc.mask)).tokens
            z = self.hsi_head(latent.mean(1))  # (b, embed_dim)
            for name, (idx, emb) in cond.embeddings.items():
                if len(idx) >= 2:
                    contrastive[name] = info_nce(z[idx], emb, c.temperature)
        loss = mae + c.contrastive_weight * torch.stack(list(contrastive.values())).mean() if contrastive else mae
        if c.norm_pix_loss:
            target = normalized_patches(target)
        return PretrainOutput(loss, mae, contrastive, pred, target, enc.mask)

    # ------------------------------------------------------------------ inference (HSI only)
    def tokens(self, cube: Float[Tensor, "b bands h w"]) -> Float[Tensor, "b n dim"]:
        """Every token of the cube, in grid order, after the final norm; no mask, no auxiliary."""
        self.check_cube(cube)
        return self.encoder(cube).tokens

    @torch.no_grad()
    def embed(self, cube: Float[Tensor, "b bands h w"]) -> Float[Tensor, "b dim"]:
        """Mean of `tokens`: the HSI-only embedding."""
        return self.tokens(cube).mean(1)

    @torch.no_grad()
    def reconstruct(self, cube: Float[Tensor, "b bands h w"], mask_ratio: float | None = None,
                    generator: torch.Generator | None = None
                    ) -> tuple[Float[Tensor, "b bands h w"], Bool[Tensor, "b n"]]:
        """Mask (``mask_ratio``, default the config's), encode HSI-only, decode: the cube with its
        masked patches replaced by the prediction, and the mask (b, n). With norm_pix_loss the
        prediction is mapped back with each true patch's mean and std (as MAE's demo does)."""
        c = self.config
        self.check_cube(cube)
        enc = self.encoder(cube, mask_ratio=c.mask_ratio if mask_ratio is None else mask_ratio, generator=generator)
        pred = self.decoder(enc.tokens, enc.ids_restore)
        target = patchify(cube.float(), c.spectral_patch, c.spatial_patch)
        if c.norm_pix_loss:
            mean = target.mean(-1, keepdim=True)
            std = (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
            pred = pred * std + mean
        patches = torch.where(enc.mask[..., None], pred.to(target.dtype), target)
        return unpatchify(patches, self.grid, c.spectral_patch, c.spatial_patch).to(cube.dtype), enc.mask

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each atomically)."""
        directory = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE,
                     lambda p: save_file(tensors, str(p), metadata={"format": "guided-spectralgpt"}))
        atomic_write(directory / CONFIG_FILE,
                     lambda p: p.write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n"))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> "GuidedSpectralGPT":
        """Rebuild a model written by `save` (in eval mode)."""
        directory = Path(directory)
        raw = read_json(directory / CONFIG_FILE)
        try:
            config = GuidedSpectralGPTConfig.from_dict(raw)
        except (ValidationError, TypeError) as err:
            detail = " ".join(str(err).split())
            raise DamagedFileError(f"{directory / CONFIG_FILE}: not a GuidedSpectralGPT config "
                                   f"({detail[:300]})") from None
        model = cls(config)
        path = directory / WEIGHTS_FILE
        weights = read_safetensors(path, "GuidedSpectralGPT weights", "re-run pretraining or restore the file")
        load_weights_into(model, weights, path, "GuidedSpectralGPT weights")
        return model.to(device).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

