"""`NIRSpectrumCodec`: a NIR spectrum on any wavelength axis -> the card's input (cubic resampling
to ``size`` points over the spectrum's own range, SNV) -> one token per ``patch`` channels.

Decoding gives the SNV-normalised spectrum on the resampled axis: absolute absorbance level and
scale are not tokenized (they are mostly instrument and path-length effects, which is what
calibration transfer removes).
"""

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mmtok import SpectrumCodec
from mmtok_plugin_nir.modalities import NIRSpectrum
from mmtok_plugin_nir.preprocessing import resample, snv

__all__ = ["NIRSpectrumCodec", "prepared_spectra", "resampled_axis"]


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
