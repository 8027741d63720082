"""`SurveyImageCodec`: mmtok's `ImageCodec` with the survey's zero point applied first.

    flux (b, c, h, w) in survey units --x nanomaggies_per_unit--> nanomaggies
      --ChannelNorm("arcsinh"): asinh(f / softening), standardised per band--> patch encoder ...

Decoding inverts both steps, so decoded flux is in the survey's own units again. The arcsinh
softening is fitted per band (median absolute deviation, `ChannelNorm.fit`) on fluxes in
nanomaggies, so the fitted statistics of an HSC and a Legacy Survey codec are in the same unit.
(A constant factor cancels inside ``asinh(f / softening)`` when the softening is fitted on the
same data; the conversion matters for comparing statistics across surveys.)
"""

from typing import Any, ClassVar

from torch import Tensor

from mmtok import CodecError, ImageCodec, Modality

__all__ = ["SurveyImageCodec"]


class SurveyImageCodec(ImageCodec):
    """Patch codec for survey images whose modality has a ``zero_point`` (see `HSCImage`)."""

    family: ClassVar[str] = "survey-image-patch"

    def __init__(self, config, modality: type[Modality] | None = None, name: str | None = None):
        super().__init__(config, modality, name)
        if not hasattr(self.modality, "nanomaggies_per_unit"):
            raise CodecError(f"{type(self).__name__}: modality {self.modality.name!r} has no zero "
                             "point (nanomaggies_per_unit); use mmtok's ImageCodec instead")
        if self.field != "flux":
            raise CodecError(f"{type(self).__name__}: tokenizes the 'flux' field, config asks for "
                             f"{self.field!r}")
        #: pixel units -> nanomaggies
        self.to_nmgy = float(self.modality.nanomaggies_per_unit())

    def to_tensor(self, m: Modality) -> Tensor:
        """flux (b, c, h, w) in survey units -> nanomaggies (b, c, h, w)."""
        return self.read_field(m, self.input_shape) * self.to_nmgy

    def from_tensor(self, x: Tensor, **fields: Any) -> Modality:
        """nanomaggies (b, c, h, w) -> modality with flux in the survey's units."""
        return self.modality(flux=x / self.to_nmgy, **fields)
