"""SpectralFM: WaveletEmbedding -> MambaBackbone -> MixtureOfExperts (residual) ->
TransformerEncoder -> VIBHead on [CLS], with the pretraining heads (masked-patch / denoising
reconstruction, BYOL predictor), an instrument classifier on z_inst and the FNO transfer head.

Parameter counts (`SpectralFM(cfg).num_parameters()`): default config (d_model 128) 2.00 M;
`SpectralFMConfig.card()` (d_model 320, 8 heads, FNO width 64; the card's "~10M params") 10.12 M.
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import save_file
from torch import Tensor, nn

from mmtok import atomic_write, load_weights_into, read_json, read_safetensors

from .embedding import WaveletEmbedding
from .heads import FNOTransferHead, VIBHead
from .losses import (denoise_loss, msrp_loss, physics_loss, sinkhorn_loss,
                     symmetric_byol_loss, total_loss)
from .mamba import MambaBackbone
from .moe import MixtureOfExperts
from .transformer import TransformerEncoder

__all__ = ["SpectralFM", "SpectralFMConfig", "SpectralFMOutput"]


@dataclass
class SpectralFMConfig:
    """Sizes of SpectralFM. The default (d_model 128) has 2.00 M parameters; `card()` 10.12 M."""

    n_points: int = 2048
    patch_size: int = 16
    d_model: int = 128
    n_mamba_layers: int = 4
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    n_experts: int = 4
    top_k: int = 2
    n_transformer_layers: int = 2
    n_heads: int = 4
    z_chem: int = 128
    z_inst: int = 64
    n_domains: int = 3
    n_instruments: int = 8
    fno_modes: int = 32
    fno_width: int = 32
    wavelet: str = "db4"
    wavelet_levels: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SpectralFMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SpectralFMConfig.from_dict: unknown keys {unknown}")
        return cls(**d)

    @classmethod
    def cpu(cls) -> "SpectralFMConfig":
        """Sized to pretrain on a laptop CPU (patch 32, d_state 8, expand 1): 1.76 M parameters,
        about 7x cheaper per step than the default (the selective scan's state b x l x d_inner x
        d_state is what costs)."""
        return cls(patch_size=32, d_state=8, expand=1)

    @classmethod
    def card(cls) -> "SpectralFMConfig":
        """The card's ~10 M-parameter model (d_model 320, 8 heads, FNO width 64): 10.12 M parameters."""
        return cls(d_model=320, n_heads=8, fno_width=64)


@dataclass
class SpectralFMOutput:
    """tokens (b, 2 + p, d) after the transformer; cls = tokens[:, 0]; z_* / mu_* / logvar_*
    from the VIB head (z = mu in eval); kl scalar; moe_aux the MoE's aux dict (None from
    `head_from_backbone`); patch_recon (b, l) the patch head's reconstruction of the whole
    spectrum; instrument_logits (b, n_instruments) from z_inst."""

    tokens: Float[Tensor, "b n d"]
    cls: Float[Tensor, "b d"]
    z_chem: Float[Tensor, "b zc"]
    z_inst: Float[Tensor, "b zi"]
    mu_chem: Float[Tensor, "b zc"]
    logvar_chem: Float[Tensor, "b zc"]
    mu_inst: Float[Tensor, "b zi"]
    logvar_inst: Float[Tensor, "b zi"]
    kl: Float[Tensor, ""]
    moe_aux: dict | None
    patch_recon: Float[Tensor, "b l"]
    instrument_logits: Float[Tensor, "b i"]

    @property
    def mu(self) -> Float[Tensor, "b z"]:
        """cat(mu_chem, mu_inst)."""
        return torch.cat([self.mu_chem, self.mu_inst], dim=-1)

    @property
    def logvar(self) -> Float[Tensor, "b z"]:
        """cat(logvar_chem, logvar_inst)."""
        return torch.cat([self.logvar_chem, self.logvar_inst], dim=-1)


class SpectralFM(nn.Module):
    """The spectral foundation model.  x (b, l) SNV spectra, wavelength_nm (l,) or (b, l),
    domain (b,) long -> `SpectralFMOutput`. l must be a multiple of patch_size (2048 by default).
    """

    def __init__(self, config: SpectralFMConfig | None = None):
        super().__init__()
        self.config = c = config or SpectralFMConfig()
        self.embed = WaveletEmbedding(c.d_model, c.patch_size, c.wavelet, c.wavelet_levels, c.n_domains)
        self.backbone = MambaBackbone(c.d_model, c.n_mamba_layers, c.d_state, c.expand, c.d_conv)
        self.moe_norm = nn.LayerNorm(c.d_model)
        self.moe = MixtureOfExperts(c.d_model, c.n_experts, c.top_k)
        self.transformer = TransformerEncoder(c.d_model, c.n_transformer_layers, c.n_heads)
        self.vib = VIBHead(c.d_model, c.z_chem, c.z_inst)
        self.patch_head = nn.Linear(c.d_model, c.patch_size)
        self.predictor = nn.Sequential(nn.Linear(c.z_chem, 2 * c.z_chem), nn.GELU(),
                                       nn.Linear(2 * c.z_chem, c.z_chem))
        self.instrument_head = nn.Linear(c.z_inst, c.n_instruments)
        self.fno = FNOTransferHead(c.z_chem, c.fno_width, c.fno_modes)
        self.lora: dict | None = None   # {"rank", "alpha"} once add_lora ran

    # ------------------------------------------------------------------ encoding
    def _backbone(self, x, wavelength_nm, domain, mask, axis_known=None):
        tokens = self.backbone(self.embed(x, wavelength_nm, domain, mask, axis_known))
        moe_out, moe_aux = self.moe(self.moe_norm(tokens))
        return tokens + moe_out, moe_aux

    def backbone_tokens(self, x: Float[Tensor, "b l"], wavelength_nm: Float[Tensor, "*b l"],
                        domain: Int[Tensor, " b"], mask: Bool[Tensor, "b p"] | None = None,
                        axis_known: Bool[Tensor, " b"] | None = None) -> Float[Tensor, "b n d"]:
        """Tokens (b, 2 + p, d) before the transformer (embedding, Mamba, MoE), to cache the
        frozen part of the model during transfer."""
        return self._backbone(x, wavelength_nm, domain, mask, axis_known)[0]

    def head_from_backbone(self, tokens: Float[Tensor, "b n d"], moe_aux: dict | None = None) -> SpectralFMOutput:
        """Transformer + VIB + patch / instrument heads on `backbone_tokens` output."""
        tokens = self.transformer(tokens)
        cls = tokens[:, 0]
        v = self.vib(cls)
        patch_recon = self.patch_head(tokens[:, 2:]).flatten(1)          # (b, p * patch_size)
        return SpectralFMOutput(tokens, cls, v.z_chem, v.z_inst, v.mu_chem, v.logvar_chem, v.mu_inst,
                                v.logvar_inst, v.kl, moe_aux, patch_recon, self.instrument_head(v.z_inst))

    def forward(self, x: Float[Tensor, "b l"], wavelength_nm: Float[Tensor, "*b l"] | None, domain: Int[Tensor, " b"],
                mask: Bool[Tensor, "b p"] | None = None, axis_known: Bool[Tensor, " b"] | None = None
                ) -> SpectralFMOutput:
        """mask (b, p) bool: masked patches become the [MASK] token (see WaveletEmbedding).
        axis_known (b,) bool, None = all known: False rows have no wavelength axis (their
        wavelength_nm row is ignored; wavelength_nm may be None if no row has one) and get the
        embedding's relative-position code instead of the wavenumber code."""
        tokens, moe_aux = self._backbone(x, wavelength_nm, domain, mask, axis_known)
        return self.head_from_backbone(tokens, moe_aux)

    def features(self, x: Float[Tensor, "b l"], wavelength_nm: Float[Tensor, "*b l"] | None,
                 domain: Int[Tensor, " b"], axis_known: Bool[Tensor, " b"] | None = None) -> Float[Tensor, "b zc"]:
        """The posterior mean of z_chem (b, z_chem), whatever the train / eval mode."""
        return self(x, wavelength_nm, domain, axis_known=axis_known).mu_chem

    def transfer_spectrum(self, z_chem: Float[Tensor, "b zc"], n_out: int | None = None) -> Float[Tensor, "b n"]:
        """FNO head: z_chem -> spectrum (b, n_out), n_out = config.n_points by default."""
        return self.fno(z_chem, n_out or self.config.n_points)

    # ------------------------------------------------------------------ pretraining
    def pretrain_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """All seven pretraining losses and their weighted "total" (`losses.LOSS_WEIGHTS`).

        batch: clean, view1, view2, noisy (b, l); mask (b, p) bool; wavelength_nm (l,) or (b, l);
        domain (b,) long; instrument (b,) long; optional snv_mean / snv_std (b,) for the
        non-negativity term; optional axis_known (b,) bool (False: no wavelength axis, see
        `forward`; wavelength_nm may then be None). The four inputs run as one (4b) forward pass (only the clean copy
        masked):
          msrp        masked-patch MSE of the clean copy's reconstruction
          contrastive symmetric BYOL (-cos, stop-grad) between predictor(mu_chem) of the views
          denoise     MSE(patch_recon(noisy), clean)
          ot          Sinkhorn between the views' mu_chem of every pair of instruments in the
                      batch, averaged over pairs (0 with a single instrument)
          physics     `physics_loss` of the denoised reconstruction
          vib         the VIB KL of the whole pass
          moe         the MoE load-balance loss of the whole pass
        """
        clean, mask = batch["clean"], batch["mask"]
        b = clean.shape[0]
        x = torch.cat([clean, batch["view1"], batch["view2"], batch["noisy"]])
        full_mask = torch.cat([mask, mask.new_zeros(3 * b, mask.shape[1])])
        wavelength_nm, axis_known = batch.get("wavelength_nm"), batch.get("axis_known")
        if wavelength_nm is not None and wavelength_nm.dim() == 2:
            wavelength_nm = wavelength_nm.repeat(4, 1)
        axis_known = None if axis_known is None else torch.as_tensor(axis_known, dtype=torch.bool).repeat(4)
        out = self(x, wavelength_nm, batch["domain"].repeat(4), full_mask, axis_known)
        recon_clean, _, _, recon_noisy = out.patch_recon.split(b)
        _, mu1, mu2, _ = out.mu_chem.split(b)
        losses = {
            "msrp": msrp_loss(recon_clean, clean, mask),
            "contrastive": symmetric_byol_loss(self.predictor(mu1), self.predictor(mu2), mu1, mu2),
            "denoise": denoise_loss(recon_noisy, clean),
            "ot": self._instrument_ot(torch.cat([mu1, mu2]), batch["instrument"].repeat(2)),
            "physics": physics_loss(recon_noisy, batch.get("snv_mean"), batch.get("snv_std")),
            "vib": out.kl,
            "moe": out.moe_aux["load_balance_loss"],
        }
        losses["total"] = total_loss(losses)
        return losses

    @staticmethod
    def _instrument_ot(z: Float[Tensor, "n zc"], instrument: Int[Tensor, " n"]) -> Float[Tensor, ""]:
        ids = instrument.unique().tolist()
        pairs = [(i, j) for k, i in enumerate(ids) for j in ids[k + 1:]]
        if not pairs:
            return z.sum() * 0.0
        return torch.stack([sinkhorn_loss(z[instrument == i], z[instrument == j]) for i, j in pairs]).mean()

    # ------------------------------------------------------------------ adaptation
    def norm_parameters(self) -> list[nn.Parameter]:
        """The affine parameters of every LayerNorm / RMSNorm (what test-time training updates)."""
        return [p for m in self.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) for p in m.parameters()]

    def add_lora(self, rank: int = 8, alpha: float = 16.0) -> list[nn.Parameter]:
        """Freeze the whole model and add LoRA adapters to the transformer's q / k / v (the card:
        not in Mamba). Returns the adapters' parameters, the only trainable ones."""
        self.requires_grad_(False)
        params = self.transformer.add_lora(rank, alpha)
        self.lora = {"rank": rank, "alpha": alpha}
        return params

    def lora_parameters(self) -> list[nn.Parameter]:
        return self.transformer.lora_parameters()

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the weights to ``path`` (safetensors) and {"config", "lora"} to ``path`` with a
        .json suffix, each atomically (temporary file + os.replace). No pickle."""
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "spectralfm"}))
        meta = {"config": self.config.to_dict(), "lora": self.lora}
        atomic_write(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "SpectralFM":
        """Rebuild a model written by `save` (in eval mode)."""
        path = Path(path)
        meta = read_json(path.with_suffix(".json"))
        model = cls(SpectralFMConfig.from_dict(meta["config"]))
        if meta.get("lora"):
            model.add_lora(**meta["lora"])
        weights = read_safetensors(path, "SpectralFM weights", "re-run pretraining or restore the file", map_location)
        load_weights_into(model, weights, path, "SpectralFM weights")
        return model.to(map_location).eval()

