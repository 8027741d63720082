"""Heads on the [CLS] feature: the variational split into z_chem / z_inst, the Fourier neural
operator that turns z_chem into a spectrum at any resolution, and a property regressor."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from .losses import kl_loss

__all__ = ["FNOTransferHead", "RegressionHead", "SpectralConv1d", "VIBHead", "VIBOutput"]


@dataclass
class VIBOutput:
    """z_* sampled in training, = mu in eval; kl = KL(q(z_chem, z_inst | x) || N(0, I)) (scalar),
    with the head's free-bits floor per dimension; kl_raw the same KL without the floor."""

    z_chem: Float[Tensor, "b zc"]
    z_inst: Float[Tensor, "b zi"]
    mu_chem: Float[Tensor, "b zc"]
    logvar_chem: Float[Tensor, "b zc"]
    mu_inst: Float[Tensor, "b zi"]
    logvar_inst: Float[Tensor, "b zi"]
    kl: Float[Tensor, ""]
    kl_raw: Float[Tensor, ""] | None = None


class VIBHead(nn.Module):
    """Variational information bottleneck: cls (b, d) -> Gaussian posteriors of z_chem (b, 128,
    chemistry) and z_inst (b, 64, instrument). Reparameterised samples in training, the means in
    eval; kl summed over both latents' dimensions, averaged over the batch. logvar is clamped to
    [-10, 10].

    free_bits (nats per dimension, default 0 = off): each dimension's batch-mean KL, of z_chem and
    z_inst alike, is floored at this value (`losses.kl_loss`), an anti-collapse switch for
    pretraining; a plain attribute (not part of the saved config), set by the pretraining loop."""

    def __init__(self, d_model: int, z_chem: int = 128, z_inst: int = 64, free_bits: float = 0.0):
        super().__init__()
        self.z_chem, self.z_inst, self.free_bits = z_chem, z_inst, free_bits
        self.chem = nn.Linear(d_model, 2 * z_chem)
        self.inst = nn.Linear(d_model, 2 * z_inst)

    def _sample(self, mu: Tensor, logvar: Tensor) -> Tensor:
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, cls: Float[Tensor, "b d"]) -> VIBOutput:
        mu_c, logvar_c = self.chem(cls).chunk(2, dim=-1)
        mu_i, logvar_i = self.inst(cls).chunk(2, dim=-1)
        logvar_c, logvar_i = logvar_c.clamp(-10, 10), logvar_i.clamp(-10, 10)
        kl_raw = kl_loss(mu_c, logvar_c) + kl_loss(mu_i, logvar_i)
        kl = kl_raw if not self.free_bits else \
            kl_loss(mu_c, logvar_c, self.free_bits) + kl_loss(mu_i, logvar_i, self.free_bits)
        return VIBOutput(self._sample(mu_c, logvar_c), self._sample(mu_i, logvar_i),
                         mu_c, logvar_c, mu_i, logvar_i, kl, kl_raw)


class SpectralConv1d(nn.Module):
    """FNO layer (Li et al. 2021): rfft -> complex weights (in, out) on the lowest `modes`
    frequencies -> irfft to any length.  x: (b, c_in, n) -> (b, c_out, n_out).

    The transforms use norm="forward" (the Fourier coefficients do not depend on n), so the output
    is the same band-limited function evaluated on whichever grid n_out asks for: the output at
    2n points taken every second point equals the output at n points. The complex weights are
    stored as a real (in, out, modes, 2) parameter (safetensors-friendly).
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1.0 / (in_channels * out_channels)
        self.weight = nn.Parameter(scale * torch.rand(in_channels, out_channels, modes, 2))

    def forward(self, x: Float[Tensor, "b i n"], n_out: int | None = None) -> Float[Tensor, "b o m"]:
        n_out = x.shape[-1] if n_out is None else n_out
        x_ft = torch.fft.rfft(x, norm="forward")                          # (b, i, n // 2 + 1)
        m = min(self.modes, x_ft.shape[-1], n_out // 2 + 1)
        w = torch.view_as_complex(self.weight[:, :, :m].contiguous())
        y_ft = torch.einsum("bim,iom->bom", x_ft[..., :m], w.to(x_ft.dtype))
        y_ft = torch.cat([y_ft, y_ft.new_zeros(*y_ft.shape[:-1], n_out // 2 + 1 - m)], dim=-1)
        return torch.fft.irfft(y_ft, n=n_out, norm="forward")


class FNOTransferHead(nn.Module):
    """z_chem (b, z) -> spectrum (b, n_out) at any resolution.

    lift: Linear to a coarse latent function (b, width, n_grid = 2 modes); n_layers FNO layers
    v <- GELU(SpectralConv1d(v, n_out) + Conv1d_1x1(v resampled to n_out)) (the first one maps the
    coarse grid onto n_out points spectrally, no GELU after the last); projection
    Conv1d(width, 2 width, 1) -> GELU -> Conv1d(2 width, 1, 1).
    """

    def __init__(self, z_dim: int = 128, width: int = 32, modes: int = 32, n_layers: int = 3,
                 n_grid: int | None = None):
        super().__init__()
        self.width, self.n_grid = width, n_grid or 2 * modes
        self.lift = nn.Linear(z_dim, width * self.n_grid)
        self.spectral = nn.ModuleList([SpectralConv1d(width, width, modes) for _ in range(n_layers)])
        self.pointwise = nn.ModuleList([nn.Conv1d(width, width, 1) for _ in range(n_layers)])
        self.proj = nn.Sequential(nn.Conv1d(width, 2 * width, 1), nn.GELU(), nn.Conv1d(2 * width, 1, 1))

    def forward(self, z_chem: Float[Tensor, "b z"], n_out: int = 2048) -> Float[Tensor, "b n"]:
        v = self.lift(z_chem).view(-1, self.width, self.n_grid)
        for i, (spectral, pointwise) in enumerate(zip(self.spectral, self.pointwise)):
            skip = v if v.shape[-1] == n_out else F.interpolate(v, size=n_out, mode="linear")
            v = spectral(v, n_out) + pointwise(skip)
            if i < len(self.spectral) - 1:
                v = F.gelu(v)
        return self.proj(v)[:, 0]


class RegressionHead(nn.Module):
    """z_chem (b, z) -> property values (b, n_targets): Linear-GELU-Linear, or one Linear when
    hidden = 0."""

    def __init__(self, z_dim: int = 128, n_targets: int = 1, hidden: int = 64):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.GELU(), nn.Linear(hidden, n_targets))
        else:
            self.net = nn.Linear(z_dim, n_targets)

    def forward(self, z: Float[Tensor, "b z"]) -> Float[Tensor, "b t"]:
        return self.net(z)
