"""Building blocks of the conditional VAEs: stride-2 conv blocks (encoder) and their transposed
mirror (decoder), the conv encoder, the modality embedding and gradient reversal.

Shapes: b batch, c image channels, s image side, P the padded side (s rounded up to a multiple
of 2 ** blocks, so 28 -> 32 with four blocks), g = P / 2 ** blocks the side of the deepest
feature map, d widths[-1].
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from mmtok import ModalityError

__all__ = ["ConvEncoder", "DownBlock", "GradientReversal", "ModalityEmbedding", "UpBlock", "centre_crop",
           "centre_pad", "grad_reverse", "group_norm", "padded_size"]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (the largest divisor of ``channels`` not above 8)."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def padded_size(image_size: int, blocks: int) -> int:
    """``image_size`` rounded up to a multiple of ``2 ** blocks`` (each block halves the side)."""
    step = 2 ** blocks
    return -(-image_size // step) * step


def centre_pad(x: Float[Tensor, "b c s s"], size: int) -> Float[Tensor, "b c P P"]:
    """Zero-pad the last two dims to ``size`` (the extra rows / columns split top / bottom)."""
    extra = size - x.shape[-1]
    if extra == 0:
        return x
    lo = extra // 2
    return F.pad(x, (lo, extra - lo, lo, extra - lo))


def centre_crop(x: Float[Tensor, "b c P P"], size: int) -> Float[Tensor, "b c s s"]:
    """Inverse of `centre_pad`: the central ``size`` x ``size`` window."""
    lo = (x.shape[-1] - size) // 2
    return x[..., lo:lo + size, lo:lo + size]


class DownBlock(nn.Sequential):
    """(b, c_in, h, w) -> (b, c_out, h / 2, w / 2): 3x3 conv stride 2, GroupNorm, SiLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), group_norm(c_out), nn.SiLU())


class UpBlock(nn.Sequential):
    """(b, c_in, h, w) -> (b, c_out, 2h, 2w): 4x4 transposed conv stride 2, GroupNorm, SiLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), group_norm(c_out), nn.SiLU())


class ConvEncoder(nn.Module):
    """(b, c, s, s) in [0, 1] -> (b, feature_dim) flattened features of the deepest block
    (feature_dim = widths[-1] * g * g); the input is zero-padded to P x P first."""

    def __init__(self, channels: int, widths: list[int], image_size: int):
        super().__init__()
        self.image_size = image_size
        self.padded = padded_size(image_size, len(widths))
        self.grid = self.padded // 2 ** len(widths)
        chans = [channels, *widths]
        self.blocks = nn.Sequential(*(DownBlock(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.feature_dim = widths[-1] * self.grid * self.grid

    def forward(self, x: Float[Tensor, "b c s s"]) -> Float[Tensor, "b f"]:
        return self.blocks(centre_pad(x, self.padded)).flatten(1)


class ModalityEmbedding(nn.Module):
    """(b,) int64 index into the model's modalities -> (b, embed_dim); an index out of range is a
    `ModalityError` naming the labels."""

    def __init__(self, modalities: list[str], embed_dim: int):
        super().__init__()
        self.modalities = list(modalities)
        self.table = nn.Embedding(len(modalities), embed_dim)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, y: Int[Tensor, " b"]) -> Float[Tensor, "b e"]:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.modalities)):
            raise ModalityError(f"modality labels y: expected indices 0..{len(self.modalities) - 1} "
                                f"({', '.join(self.modalities)}), found {int(y.min())}..{int(y.max())}")
        return self.table(y)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward; the gradient times ``-scale`` backward (Ganin & Lempitsky 2015): what
    follows learns to predict, what precedes learns to defeat the prediction."""
    return _GradReverse.apply(x, scale)


class GradientReversal(nn.Module):
    """`grad_reverse` as a layer."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.scale)
