"""Decoders of the conditional VAEs: a shared conv trunk conditioned on the modality embedding,
followed by one of three output stages (``VAEConfig.decoder``):

* "shared": one pointwise (1x1) output layer for every modality;
* "heads": a modality-specific head per modality: FiLM (per-channel scale and shift) of the trunk's
  features, SiLU, a 1x1 conv to the pixel channels. Each image's head parameters are gathered by
  its label and applied as one batched matmul, so the cost is one head per image whatever the
  number of modalities (no Python loop over the batch or the modalities; a grouped conv with
  groups = batch measured ~2x slower on CPU);
* "moe": a mixture of experts: ``experts`` pointwise two-layer networks, all computed densely as
  batched matmuls, mixed per image by a gating net on [z, e(y)] (softmax weights over experts,
  applied to the experts' logits).

Shapes: b batch, z latent, e embed_dim, C widths[0] (trunk output channels), c image channels,
P padded side, s image side. Every decoder returns logits (b, c, s, s); the model applies the
sigmoid (BCE is computed on logits for stability).
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from mmtok_plugin_medimg.model.config import VAEConfig
from mmtok_plugin_medimg.model.layers import UpBlock, centre_crop, group_norm, padded_size

__all__ = ["ConditionalDecoder", "DecoderTrunk", "ExpertMixture", "ModalityHeads", "SharedOutput", "pointwise"]


def pointwise(x: Float[Tensor, "b k h w"], weight: Float[Tensor, "b o k"],
              bias: Float[Tensor, "b o"]) -> Float[Tensor, "b o h w"]:
    """A 1x1 conv with per-image weights (the leading dim of weight / bias may be 1: shared),
    as one batched matmul."""
    b, _, h, w = x.shape
    out = weight @ x.flatten(2) + bias[:, :, None]
    return out.view(b, -1, h, w)


class DecoderTrunk(nn.Module):
    """(b, in_dim) -> (b, widths[0], P, P): a linear map to the (widths[-1], g, g) grid, GroupNorm,
    SiLU, then one `UpBlock` per encoder block (channels mirrored, the last keeps widths[0])."""

    def __init__(self, in_dim: int, widths: list[int], image_size: int):
        super().__init__()
        self.grid = padded_size(image_size, len(widths)) // 2 ** len(widths)
        self.top = widths[-1]
        self.proj = nn.Linear(in_dim, self.top * self.grid * self.grid)
        self.norm = group_norm(self.top)
        chans = [*reversed(widths), widths[0]]
        self.blocks = nn.Sequential(*(UpBlock(a, b) for a, b in zip(chans[:-1], chans[1:])))

    def forward(self, h: Float[Tensor, "b i"]) -> Float[Tensor, "b C P P"]:
        x = self.proj(h).view(len(h), self.top, self.grid, self.grid)
        return self.blocks(F.silu(self.norm(x)))


class SharedOutput(nn.Module):
    """(b, C, P, P) -> (b, c, P, P) logits: one 1x1 conv for every modality."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in) * c_in ** -0.5)
        self.bias = nn.Parameter(torch.zeros(1, c_out))

    def forward(self, f: Float[Tensor, "b C P P"], y: Int[Tensor, " b"]) -> Float[Tensor, "b c P P"]:
        return pointwise(f, self.weight, self.bias)


class ModalityHeads(nn.Module):
    """(b, C, P, P), y (b,) -> (b, c, P, P) logits through head y of each image: FiLM
    (features * (1 + scale_y) + shift_y), SiLU, 1x1 conv (weight_y, bias_y). Parameters are
    gathered by label, so one head's cost per image."""

    def __init__(self, c_in: int, c_out: int, modalities: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(modalities, c_in))
        self.shift = nn.Parameter(torch.zeros(modalities, c_in))
        self.weight = nn.Parameter(torch.randn(modalities, c_out, c_in) * c_in ** -0.5)
        self.bias = nn.Parameter(torch.zeros(modalities, c_out))

    def forward(self, f: Float[Tensor, "b C P P"], y: Int[Tensor, " b"]) -> Float[Tensor, "b c P P"]:
        f = F.silu(f * (1 + self.scale[y])[:, :, None, None] + self.shift[y][:, :, None, None])
        return pointwise(f, self.weight[y], self.bias[y])


class ExpertMixture(nn.Module):
    """(b, C, P, P) features and the condition h = [z, e(y)] (b, cond) -> (b, c, P, P) logits:
    sum_k gate_k(h) * expert_k(features); expert k = 1x1 conv (C -> hidden, default C / 2), SiLU,
    1x1 conv (hidden -> c). All experts run as two batched matmuls."""

    def __init__(self, c_in: int, c_out: int, experts: int, cond_dim: int, hidden: int | None = None):
        super().__init__()
        self.experts, self.hidden = experts, hidden or max(8, c_in // 2)
        self.gate = nn.Sequential(nn.Linear(cond_dim, 64), nn.SiLU(), nn.Linear(64, experts))
        self.w1 = nn.Parameter(torch.randn(experts * self.hidden, c_in) * c_in ** -0.5)
        self.b1 = nn.Parameter(torch.zeros(experts * self.hidden))
        self.w2 = nn.Parameter(torch.randn(experts, c_out, self.hidden) * self.hidden ** -0.5)
        self.b2 = nn.Parameter(torch.zeros(experts, c_out))

    def gates(self, h: Float[Tensor, "b cond"]) -> Float[Tensor, "b k"]:
        """Softmax mixture weights over the experts (b, experts)."""
        return self.gate(h).softmax(-1)

    def forward(self, f: Float[Tensor, "b C P P"], h: Float[Tensor, "b cond"]) -> Float[Tensor, "b c P P"]:
        b, _, height, width = f.shape
        hid = F.silu(self.w1 @ f.flatten(2) + self.b1[:, None])                       # (b, k * hidden, P*P)
        hid = hid.view(b, self.experts, self.hidden, -1)
        out = torch.einsum("kom,bkms->bkos", self.w2, hid) + self.b2[None, :, :, None]  # (b, k, c, P*P)
        mixed = (self.gates(h)[:, :, None, None] * out).sum(1)
        return mixed.view(b, -1, height, width)


class ConditionalDecoder(nn.Module):
    """decoder(z (b, latent_dim), e (b, embed_dim), y (b,)) -> logits (b, c, s, s): the trunk sees
    [z, e]; the output stage is ``config.decoder`` (see the module docstring)."""

    def __init__(self, config: VAEConfig, latent_dim: int):
        super().__init__()
        self.kind, self.image_size = config.decoder, config.image_size
        cond = latent_dim + config.embed_dim
        self.trunk = DecoderTrunk(cond, config.widths, config.image_size)
        c_in, c_out = config.widths[0], config.channels
        if self.kind == "shared":
            self.output = SharedOutput(c_in, c_out)
        elif self.kind == "heads":
            self.output = ModalityHeads(c_in, c_out, len(config.modalities))
        else:
            self.output = ExpertMixture(c_in, c_out, config.experts, cond)

    def forward(self, z: Float[Tensor, "b z"], e: Float[Tensor, "b e"],
                y: Int[Tensor, " b"]) -> Float[Tensor, "b c s s"]:
        h = torch.cat([z, e], dim=1)
        f = self.trunk(h)
        logits = self.output(f, h) if self.kind == "moe" else self.output(f, y)
        return centre_crop(logits, self.image_size)

    def gates(self, z: Float[Tensor, "b z"], e: Float[Tensor, "b e"]) -> Float[Tensor, "b k"] | None:
        """The mixture-of-experts gate weights (b, experts); None for the other decoders."""
        return self.output.gates(torch.cat([z, e], dim=1)) if self.kind == "moe" else None
