"""Generic modalities that ship with mmtok (one per codec family). Plugins define their own,
more specific ones (``HSCImage``, ``CTVolume``...) the same way."""

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from mmtok.modality import Modality

__all__ = ["Image", "Spectrum", "Volume", "Scalars"]


def _randn(*shape: int, generator: torch.Generator | None = None) -> Tensor:
    return torch.randn(*shape, generator=generator)


@dataclass(frozen=True, eq=False)
class Image(Modality):
    """A batch of multi-band 2D images. flux: (b, c, h, w)."""
    name: ClassVar[str] = "image"
    flux: Float[Tensor, "b c h w"]

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "Image":
        return cls(flux=_randn(batch_size, 3, 32, 32, generator=generator))


@dataclass(frozen=True, eq=False)
class Spectrum(Modality):
    """A batch of 1D spectra. values: (b, c, l) on the wavelength grid wavelength: (b, l)."""
    name: ClassVar[str] = "spectrum"
    values: Float[Tensor, "b c l"]
    wavelength: Float[Tensor, "b l"] | None = None

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "Spectrum":
        wl = torch.linspace(1100.0, 2498.0, 128).expand(batch_size, -1).clone()
        return cls(values=_randn(batch_size, 1, 128, generator=generator), wavelength=wl)


@dataclass(frozen=True, eq=False)
class Volume(Modality):
    """A batch of 3D volumes. values: (b, c, d, h, w)."""
    name: ClassVar[str] = "volume"
    values: Float[Tensor, "b c d h w"]

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "Volume":
        return cls(values=_randn(batch_size, 1, 8, 16, 16, generator=generator))


@dataclass(frozen=True, eq=False)
class Scalars(Modality):
    """A batch of rows of c numeric columns. values: (b, c)."""
    name: ClassVar[str] = "scalars"
    values: Float[Tensor, "b c"]

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "Scalars":
        return cls(values=_randn(batch_size, 4, generator=generator))
