"""Quantizers: one small interface over vector-quantize-pytorch, plus `Continuous`.

Every quantizer maps channel-last latents ``z: (b, n, dim)`` to::

    quantize(z) -> QuantizerOutput(z_q: (b, n, dim), ids: (b, n * depth) | None, aux_loss: ())
    ids_to_codes(ids: (b, n * depth)) -> (b, n, dim)

``depth`` is the number of tokens per latent vector (the number of residual levels for
`ResidualVQQuantizer`, 1 otherwise); ids are laid out position-major, depth-minor.

The adapters handle the library's pitfalls on purpose:

* the quantization itself runs in float32 with autocast disabled for *any* device type
  (the library only disables CUDA autocast);
* the input is always passed as 3-D ``(b, n, d)`` with ``channel_first=False``: FSQ and LFQ would
  otherwise treat 4-D and larger input as channel-first images;
* ids are taken in eval mode deterministically (no quantize dropout, no stochastic sampling,
  no codebook updates) when the module is not training;
* ids are decoded to codes *with* the output projection (`get_output_from_indices` /
  `indices_to_codes`), so ``ids_to_codes(quantize(z).ids) == quantize(z).z_q`` in eval mode.
"""

import math
from typing import Annotated, Literal, NamedTuple, Union

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from mmtok.config import StrictModel
from mmtok.errors import CodecError

__all__ = [
    "QuantizerOutput", "Quantizer", "FSQQuantizer", "VQQuantizer", "LFQQuantizer",
    "ResidualVQQuantizer", "Continuous", "QuantizerConfig", "build_quantizer",
    "FSQConfig", "VQConfig", "LFQConfig", "ResidualVQConfig", "ContinuousConfig",
]


class QuantizerOutput(NamedTuple):
    z_q: Tensor  # (b, n, dim), same dtype as the input
    ids: Tensor | None  # (b, n * depth) int64, None for continuous
    aux_loss: Tensor  # () float32: commitment / entropy loss, 0 where the quantizer has none


class Quantizer(nn.Module):
    """Base of the adapters. Subclasses set ``dim``, ``vocab_size``, ``depth`` and implement
    ``_quantize(z_fp32) -> (z_q, ids (b, n, depth) | (b, n), aux)`` and ``_codes(ids)``."""

    dim: int
    vocab_size: int | None = None
    depth: int = 1

    @property
    def is_discrete(self) -> bool:
        return self.vocab_size is not None

    def _check(self, z: Tensor) -> None:
        if z.ndim != 3 or z.shape[-1] != self.dim:
            raise CodecError(f"{type(self).__name__}.quantize: expected latents (b, n, {self.dim}) "
                             f"channel-last, found shape {tuple(z.shape)}")

    def quantize(self, z: Tensor) -> QuantizerOutput:
        self._check(z)
        dtype = z.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_q, ids, aux = self._quantize(z.float())
        if ids is not None:
            ids = ids.long().reshape(z.shape[0], -1)
        aux = aux.float().sum() if aux is not None else z.new_zeros((), dtype=torch.float32)
        return QuantizerOutput(z_q.to(dtype), ids, aux)

    forward = quantize

    def ids_to_codes(self, ids: Tensor) -> Tensor:
        """(b, n * depth) ids -> (b, n, dim) float32 codes (after the output projection)."""
        if not self.is_discrete:
            raise CodecError(f"{type(self).__name__} is continuous; it has no ids to decode")
        if ids.ndim != 2 or ids.shape[1] % self.depth:
            raise CodecError(f"{type(self).__name__}.ids_to_codes: expected ids (b, n*{self.depth}), "
                             f"found shape {tuple(ids.shape)}")
        if ids.numel() == 0:
            return torch.zeros(ids.shape[0], ids.shape[1] // self.depth, self.dim, device=ids.device)
        lo, hi = (int(v) for v in torch.aminmax(ids))
        if lo < 0 or hi >= self.vocab_size:
            raise CodecError(f"{type(self).__name__}.ids_to_codes: ids must lie in [0, {self.vocab_size}), "
                             f"found range [{lo}, {hi}]")
        with torch.autocast(device_type=ids.device.type, enabled=False):
            return self._codes(ids.reshape(ids.shape[0], -1, self.depth) if self.depth > 1 else ids)


# --------------------------------------------------------------------------- configs
class _QConfig(StrictModel):
    """Base of the quantizer configs (``kind`` picks the adapter)."""


class FSQConfig(_QConfig):
    """Finite scalar quantization (Mentzer et al. 2023); vocabulary = prod(levels)."""
    kind: Literal["fsq"] = "fsq"
    levels: list[int] = Field(default_factory=lambda: [8, 5, 5, 5], min_length=1)


class VQConfig(_QConfig):
    """Classic VQ-VAE codebook with EMA updates and optional k-means init."""
    kind: Literal["vq"] = "vq"
    codebook_size: int = Field(512, ge=2)
    codebook_dim: int | None = None
    decay: float = 0.99
    commitment_weight: float = 0.25
    kmeans_init: bool = False


class LFQConfig(_QConfig):
    """Lookup-free quantization (MAGVIT-v2); vocabulary = codebook_size (a power of two)."""
    kind: Literal["lfq"] = "lfq"
    codebook_size: int = Field(256, ge=2)
    entropy_loss_weight: float = 0.1
    commitment_loss_weight: float = 0.25


class ResidualVQConfig(_QConfig):
    """Residual VQ: ``num_quantizers`` tokens per latent vector, each from ``codebook_size``."""
    kind: Literal["rvq"] = "rvq"
    num_quantizers: int = Field(4, ge=1)
    codebook_size: int = Field(256, ge=2)
    decay: float = 0.99
    commitment_weight: float = 0.25
    kmeans_init: bool = False


class ContinuousConfig(_QConfig):
    """No quantization: the stream carries the latent vectors themselves."""
    kind: Literal["continuous"] = "continuous"


QuantizerConfig = Annotated[
    Union[FSQConfig, VQConfig, LFQConfig, ResidualVQConfig, ContinuousConfig],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- adapters
class FSQQuantizer(Quantizer):
    def __init__(self, config: FSQConfig, dim: int):
        super().__init__()
        from vector_quantize_pytorch import FSQ

        if any(level < 3 for level in config.levels):
            raise CodecError(f"FSQ levels must all be >= 3, found {config.levels}")
        self.dim, self.vocab_size = dim, int(math.prod(config.levels))
        self.impl = FSQ(levels=list(config.levels), dim=dim, channel_first=False)

    def _quantize(self, z):
        out, ids = self.impl(z)
        return out, ids, None

    def _codes(self, ids):
        return self.impl.indices_to_codes(ids.int())  # the library's own id dtype is int32


class VQQuantizer(Quantizer):
    def __init__(self, config: VQConfig, dim: int):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.dim, self.vocab_size = dim, config.codebook_size
        self.impl = VectorQuantize(
            dim=dim, codebook_size=config.codebook_size, codebook_dim=config.codebook_dim,
            decay=config.decay, commitment_weight=config.commitment_weight,
            kmeans_init=config.kmeans_init, channel_last=True,
        )

    def _quantize(self, z):
        return self.impl(z)

    def _codes(self, ids):
        return self.impl.get_output_from_indices(ids)


class LFQQuantizer(Quantizer):
    def __init__(self, config: LFQConfig, dim: int):
        super().__init__()
        from vector_quantize_pytorch import LFQ

        if not math.log2(config.codebook_size).is_integer():
            raise CodecError(f"LFQ codebook_size must be a power of two, found {config.codebook_size}")
        self.dim, self.vocab_size = dim, config.codebook_size
        self.impl = LFQ(
            dim=dim, codebook_size=config.codebook_size, channel_first=False,
            entropy_loss_weight=config.entropy_loss_weight,
            commitment_loss_weight=config.commitment_loss_weight,
        )

    def _quantize(self, z):
        return self.impl(z)

    def _codes(self, ids):
        return self.impl.indices_to_codes(ids)


class ResidualVQQuantizer(Quantizer):
    def __init__(self, config: ResidualVQConfig, dim: int):
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ

        self.dim, self.vocab_size, self.depth = dim, config.codebook_size, config.num_quantizers
        self.impl = ResidualVQ(
            dim=dim, num_quantizers=config.num_quantizers, codebook_size=config.codebook_size,
            decay=config.decay, commitment_weight=config.commitment_weight,
            kmeans_init=config.kmeans_init,
        )

    def _quantize(self, z):
        return self.impl(z)

    def _codes(self, ids):
        return self.impl.get_output_from_indices(ids)


class Continuous(Quantizer):
    """Identity: the codec's latent vectors are the tokens."""

    def __init__(self, config: ContinuousConfig | None = None, dim: int = 1):
        super().__init__()
        self.dim = dim

    def _quantize(self, z):
        return z, None, None


_ADAPTERS = {
    "fsq": FSQQuantizer, "vq": VQQuantizer, "lfq": LFQQuantizer,
    "rvq": ResidualVQQuantizer, "continuous": Continuous,
}


def build_quantizer(config: BaseModel, dim: int) -> Quantizer:
    """Build the adapter for a quantizer config (one of the `QuantizerConfig` union)."""
    return _ADAPTERS[config.kind](config, dim)
