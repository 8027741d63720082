"""`SurveyImageCodec`: mmtok's `ImageCodec` with the survey's zero point applied first.

    flux (b, c, h, w) in survey units --x nanomaggies_per_unit--> nanomaggies
      --ChannelNorm("arcsinh"): asinh(f / softening), standardised per band--> patch encoder ...

Decoding inverts both steps, so decoded flux is in the survey's own units again. The arcsinh
softening is fitted per band (median absolute deviation, `ChannelNorm.fit`) on fluxes in
nanomaggies, so the fitted statistics of an HSC and a Legacy Survey codec are in the same unit.
(A constant factor cancels inside ``asinh(f / softening)`` when the softening is fitted on the
same data; the conversion matters for comparing statistics across surveys.)

``crop: center`` (opt-in, recorded in the config): an image larger than ``size`` is cut to its
central ``size`` window before encoding (and so are the variance / mask passed through), so a
24 x 24 codec tokenizes the centre of any cutout at least that large. Smaller images are refused:
nothing is padded. The default ``crop: none`` takes exactly ``size``.
"""

from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor

from mmtok import CodecError, ImageCodec, Modality, ModalityError, PatchCodecConfig

__all__ = ["SurveyImageCodec", "SurveyImageCodecConfig"]


class SurveyImageCodecConfig(PatchCodecConfig):
    crop: Literal["none", "center"] = Field(
        "none", description="none: images must be exactly `size`; center: larger images are cut to "
                            "their central `size` window (never padded)")


class SurveyImageCodec(ImageCodec):
    """Patch codec for survey images whose modality has a ``zero_point`` (see `HSCImage`)."""

    family: ClassVar[str] = "survey-image-patch"
    config_class = SurveyImageCodecConfig

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

    def _crop(self, x: Tensor, what: str) -> Tensor:
        """(..., H, W) -> central (..., h, w) window of the codec's ``size`` (``crop: center``);
        unchanged with ``crop: none``."""
        if self.config.crop == "none" or x is None or x.dim() < 2:
            return x
        (h, w), (H, W) = self.config.size, x.shape[-2:]
        if H < h or W < w:
            raise ModalityError(f"{self.name}: {what} is {H}x{W} pixels, this codec crops the central "
                                f"{h}x{w} and never pads; give it images of at least {h}x{w}")
        top, left = (H - h) // 2, (W - w) // 2
        return x[..., top:top + h, left:left + w]

    def _cropped(self, m: Modality) -> dict[str, Any]:
        """Every image field of ``m`` (b, c, H, W) cut to the codec's window."""
        name = type(m).__name__
        return {f: self._crop(getattr(m, f), f"{name}.{f}") for f in m.tensor_fields()
                if getattr(m, f) is not None and getattr(m, f).dim() == 4}

    def to_tensor(self, m: Modality) -> Tensor:
        """flux (b, c, h, w) in survey units (the central window with ``crop: center``) ->
        nanomaggies (b, c, h, w)."""
        if self.config.crop == "none":
            return self.read_field(m, self.input_shape) * self.to_nmgy
        x = self._crop(getattr(m, self.field), f"{type(m).__name__}.{self.field}")
        if tuple(x.shape[1:]) != tuple(self.input_shape):  # the band count
            raise ModalityError(f"{self.name}: {type(m).__name__}.{self.field} must have per-sample shape "
                                f"{tuple(self.input_shape)} after the central crop, found {tuple(x.shape[1:])}")
        return x.float() * self.to_nmgy

    def canonical(self, m: Modality) -> Modality:
        return m.replace(**self._cropped(m)) if self.config.crop == "center" else m

    def passthrough_fields(self, m: Modality) -> dict[str, Any]:
        fields = super().passthrough_fields(m)
        if self.config.crop == "center":
            fields.update({k: v for k, v in self._cropped(m).items() if k in fields})
        return fields

    def decoded_shape(self, m: Modality) -> tuple[int, ...]:
        if self.config.crop == "none":
            return super().decoded_shape(m)
        return (len(m), self.config.channels, *self.config.size)

    def reconstruction_target(self, m: Modality) -> Tensor:
        if self.config.crop == "none":
            return super().reconstruction_target(m)
        return self._crop(getattr(m, self.field), f"{type(m).__name__}.{self.field}")

    def from_tensor(self, x: Tensor, **fields: Any) -> Modality:
        """nanomaggies (b, c, h, w) -> modality with flux in the survey's units."""
        return self.modality(flux=x / self.to_nmgy, **fields)
