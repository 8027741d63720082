"""NIR modalities: `NIRSpectrum` (absorbance on a wavelength axis, with the instrument and the
spectroscopy domain) and `PropertyTargets` (the lab reference values of the same samples).

One batch of `NIRSpectrum` shares one channel count ``l``; each sample carries its own wavelength
axis (strictly increasing, nm), so spectra of different instruments can sit in one batch once
resampled to a common length (`mmtok_plugin_nir.preprocessing.resample`).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mmtok import Columns, Modality, ModalityError

__all__ = ["NIRSpectrum", "PropertyTargets", "DOMAINS", "check_wavelengths"]

#: spectroscopy domains, the ids of the model's [DOMAIN] token
DOMAINS = ("NIR", "IR", "RAMAN")


def check_wavelengths(wavelength_nm: Tensor, where: str = "NIRSpectrum.wavelength_nm") -> None:
    """Raise `ModalityError` unless every row of wavelength_nm (b, l) is positive and strictly
    increasing (an axis given high-to-low must be flipped together with its values)."""
    if wavelength_nm.shape[-1] < 2:
        raise ModalityError(f"{where}: expected at least 2 channels, found {wavelength_nm.shape[-1]}")
    if not bool((wavelength_nm > 0).all()):
        raise ModalityError(f"{where}: expected positive wavelengths in nm, found minimum "
                            f"{float(wavelength_nm.min()):g}")
    steps = wavelength_nm.diff(dim=-1)
    if not bool((steps > 0).all()):
        row, col = (steps <= 0).nonzero()[0].tolist()
        raise ModalityError(
            f"{where}: expected a strictly increasing wavelength axis, found sample {row} channel "
            f"{col + 1} at {float(wavelength_nm[row, col + 1]):g} nm after "
            f"{float(wavelength_nm[row, col]):g} nm (reverse the axis and the values together)")


@dataclass(frozen=True, eq=False)
class NIRSpectrum(Modality):
    """A batch of vibrational spectra. values: (b, l) absorbance (log 1/R or log 1/T);
    wavelength_nm: (b, l) strictly increasing; instrument: (b,) instrument id (dataset specific,
    e.g. corn m5 = 0, mp5 = 1, mp6 = 2); domain: (b,) index into `DOMAINS`."""

    name: ClassVar[str] = "nir_spectrum"
    values: Float[Tensor, "b l"]
    wavelength_nm: Float[Tensor, "b l"]
    instrument: Int[Tensor, " b"]
    domain: Int[Tensor, " b"]

    def check(self) -> None:
        super().check()
        check_wavelengths(self.wavelength_nm)
        if bool((self.domain < 0).any() or (self.domain >= len(DOMAINS)).any()):
            raise ModalityError(f"NIRSpectrum.domain: expected ids in 0..{len(DOMAINS) - 1} "
                                f"({', '.join(DOMAINS)}), found {sorted(set(self.domain.tolist()))}")
        if bool((self.instrument < 0).any()):
            raise ModalityError(f"NIRSpectrum.instrument: expected ids >= 0, found "
                                f"{int(self.instrument.min())}")

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "NIRSpectrum":
        wl = torch.linspace(1100.0, 2498.0, 700)
        bands = torch.exp(-0.5 * ((wl - torch.tensor([[1450.0], [1940.0], [2100.0]])) / 40.0) ** 2).sum(0)
        scale = 0.3 + 0.1 * torch.rand(batch_size, 1, generator=generator)
        values = scale * bands + 0.01 * torch.randn(batch_size, 700, generator=generator)
        return cls(values=values, wavelength_nm=wl.expand(batch_size, -1).clone(),
                   instrument=torch.zeros(batch_size, dtype=torch.long),
                   domain=torch.zeros(batch_size, dtype=torch.long))


@dataclass(frozen=True, eq=False)
class PropertyTargets(Columns):
    """Lab reference values of the spectra's samples. values: (b, p), in the units of
    `names` (e.g. corn: Moisture, Oil, Protein, Starch in %). The properties differ between
    data sets (corn has 4, tablet 3), so the names are per batch, not fixed by the class."""

    name: ClassVar[str] = "nir_properties"
    names_field: ClassVar[str | None] = "names"
    names: tuple[str, ...] = ()

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "PropertyTargets":
        return cls(values=10 + torch.rand(batch_size, 4, generator=generator),
                   names=("Moisture", "Oil", "Protein", "Starch"))
