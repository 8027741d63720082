"""CT codecs.

* `CTVolumeCodec`: the core 3D patch codec (`mmtok.codecs.VolumeCodec`) behind CT
  preprocessing: resample to ``spacing_mm``, crop / pad to ``size``, window to [0, 1]. One token
  per ``patch`` (default 4x16x16) voxels; FSQ by default, continuous with
  ``quantizer: {kind: continuous}``. Decoding gives HU back on the preprocessed grid (values
  outside the window come back clipped to its ends).
* `AnatomyMaskCodec`: region composition per patch. Each patch's voxels are counted per region
  group (`mmtok_plugin_ct.regions`, 20 groups): ``output: region`` emits the dominant group
  (discrete, vocabulary 20), ``output: composition`` the composition vector (continuous, 20
  fractions summing to 1). An exact codec: no training, the geometry is the codec.
"""

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mmtok import Codec, CodecConfig, CodecError, ModalityError, PatchCodecConfig, TokenStream, VolumeCodec, eval_mode
from mmtok_plugin_ct.modalities import AnatomyMask, CTVolume
from mmtok_plugin_ct.preprocessing import (CTPreprocessConfig, Window, preprocess_mask, preprocess_volume,
                                           unwindow)
from mmtok_plugin_ct.regions import NUM_REGIONS, group_labels

__all__ = ["CTVolumeCodecConfig", "CTVolumeCodec", "AnatomyMaskCodecConfig", "AnatomyMaskCodec"]


class CTVolumeCodecConfig(PatchCodecConfig):
    channels: int = Field(1, ge=1, le=1)
    size: list[int] = Field(default_factory=lambda: [64, 512, 512], min_length=3, max_length=3)
    patch: list[int] = Field(default_factory=lambda: [4, 16, 16], min_length=3, max_length=3)
    window: str | Window = "soft_tissue"
    spacing_mm: list[float] | None = Field(None, min_length=3, max_length=3,
                                           description="target voxel size (d, h, w); None keeps the input's")
    crop: str = Field("center", pattern="^(center|start)$")
    pad_hu: float = -1024.0

    @model_validator(mode="after")
    def _valid_preprocessing(self):
        self.preprocessing()  # raises on an unknown window / bad spacing
        return self

    def preprocessing(self) -> CTPreprocessConfig:
        return CTPreprocessConfig(window=self.window, spacing_mm=self.spacing_mm, size=self.size,
                                  crop=self.crop, pad_hu=self.pad_hu)


class CTVolumeCodec(VolumeCodec):
    """CT volume (HU, any grid) -> preprocess -> 3D patch tokens. x: (b, 1, *size) in [0, 1]."""

    config_class = CTVolumeCodecConfig
    family: ClassVar[str] = "ct-volume-patch"
    default_modality = CTVolume

    def decoded_shape(self, m: CTVolume) -> tuple[int, ...]:
        return (len(m), 1, *self.config.size)

    def to_tensor(self, m: CTVolume) -> Tensor:
        """HU on any grid -> resampled, cropped / padded, windowed (b, 1, *size) in [0, 1]."""
        return preprocess_volume(m.hu, m.spacing_mm, self.config.preprocessing())

    def reconstruction_target(self, m: CTVolume) -> Tensor:
        """The input in HU on the codec's grid, clipped to its window: (b, 1, *size)."""
        cfg = self.config.preprocessing()
        return unwindow(preprocess_volume(m.hu, m.spacing_mm, cfg), *cfg.center_width())

    def output_spacing(self, m: CTVolume | None = None) -> Tensor | None:
        if self.config.spacing_mm is not None:
            return torch.tensor([self.config.spacing_mm], dtype=torch.float32)
        return None if m is None else m.spacing_mm

    def passthrough_fields(self, m: CTVolume) -> dict:
        return {"spacing_mm": self.output_spacing(m)}

    def from_tensor(self, x: Tensor, **fields) -> CTVolume:
        x = x.clamp(0.0, 1.0)
        spacing = fields.pop("spacing_mm", None)
        if spacing is None:
            spacing = self.output_spacing()
            if spacing is None:
                raise CodecError(f"{self.name}: pass spacing_mm= to decode (the codec keeps the input "
                                 "spacing, which tokens do not carry)")
        spacing = spacing.to(x.device).expand(x.shape[0], 3).clone()
        return CTVolume(hu=unwindow(x, *self.config.preprocessing().center_width()), spacing_mm=spacing, **fields)


class AnatomyMaskCodecConfig(CodecConfig):
    size: list[int] = Field(default_factory=lambda: [64, 512, 512], min_length=3, max_length=3)
    patch: list[int] = Field(default_factory=lambda: [4, 16, 16], min_length=3, max_length=3)
    spacing_mm: list[float] | None = Field(None, min_length=3, max_length=3)
    crop: str = Field("center", pattern="^(center|start)$")
    num_regions: int = Field(NUM_REGIONS, ge=2, le=256)
    output: Literal["region", "composition"] = Field(
        "region", description="region: one discrete token per patch (its dominant region); "
                              "composition: one continuous token per patch (the region fractions)")

    @model_validator(mode="after")
    def _divisible(self):
        for s, p in zip(self.size, self.patch):
            if p < 1 or s % p:
                raise ValueError(f"size {self.size} must be divisible by patch {self.patch}")
        return self

    def preprocessing(self) -> CTPreprocessConfig:
        """The volume codec's geometry (masks have no window: padding is background)."""
        return CTPreprocessConfig(spacing_mm=self.spacing_mm, size=self.size, crop=self.crop)


class AnatomyMaskCodec(Codec):
    """labels (b, 1, d, h, w) -> per-patch region composition (b, n, R) -> dominant region ids
    (b, n) (``output: region``) or the composition itself (``output: composition``)."""

    config_class = AnatomyMaskCodecConfig
    family: ClassVar[str] = "anatomy-composition"
    default_modality = AnatomyMask

    def decoded_shape(self, m: AnatomyMask) -> tuple[int, ...]:
        return (len(m), 1, *self.config.size)

    @property
    def grid(self) -> tuple[int, ...]:
        return self.token_grid

    @property
    def vocab_size(self) -> int | None:
        return self.config.num_regions if self.config.output == "region" else None

    @property
    def token_dim(self) -> int | None:
        return None if self.is_discrete else self.config.num_regions

    @property
    def token_grid(self) -> tuple[int, ...]:
        return tuple(s // p for s, p in zip(self.config.size, self.config.patch))

    def regions(self, m: AnatomyMask) -> Tensor:
        """Region group ids on the preprocessed grid: (b, 1, *size) long."""
        labels = preprocess_mask(m.labels, m.spacing_mm, self.config.preprocessing())
        if m.label_set == "totalsegmentator-total":
            labels = group_labels(labels)
        elif m.label_set != "region-groups":
            raise ModalityError(f"{self.name}: unknown AnatomyMask.label_set {m.label_set!r}; expected "
                                "'totalsegmentator-total' or 'region-groups'")
        if int(labels.max()) >= self.config.num_regions:
            raise ModalityError(f"{self.name}: region id {int(labels.max())} >= num_regions={self.config.num_regions}")
        return labels

    def reconstruction_target(self, m: AnatomyMask) -> Tensor:
        return self.regions(m)

    def composition(self, regions: Tensor) -> Tensor:
        """(b, 1, *size) region ids -> (b, n, R) fraction of each patch's voxels per region."""
        # a count per (sample, patch, region) with one bincount: the one-hot volume it replaces
        # (b x R x d x h x w, float) is 20x the mask and took 25 s for two 64x512x512 masks (0.35 s now)
        b, r = regions.shape[0], self.config.num_regions
        (gd, gh, gw), (pd, ph, pw) = self.token_grid, self.config.patch
        per_patch = regions.reshape(b, gd, pd, gh, ph, gw, pw).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, -1, pd * ph * pw)
        n = per_patch.shape[1]
        offset = torch.arange(b * n, device=regions.device).view(b, n, 1) * r
        counts = torch.bincount((per_patch.long() + offset).flatten(), minlength=b * n * r)
        return counts.view(b, n, r).float() / (pd * ph * pw)

    def preprocess(self, m: AnatomyMask) -> Tensor:
        return self.composition(self.regions(m))

    @eval_mode
    def encode(self, m: AnatomyMask) -> TokenStream:
        self.check_input(m)
        comp = self.preprocess(m)
        return self.stream(ids=comp.argmax(-1)) if self.is_discrete else self.stream(values=comp)

    @eval_mode
    def decode(self, stream: TokenStream, **fields) -> AnatomyMask:
        """Each patch filled with its (dominant) region: a blocky mask on the preprocessed grid."""
        self.check_stream(stream)
        ids = stream.ids.long() if stream.is_discrete else stream.values.argmax(-1)
        b = ids.shape[0]
        grid = ids.reshape(b, 1, *self.token_grid)
        for axis, p in enumerate(self.config.patch):
            grid = grid.repeat_interleave(p, dim=2 + axis)
        spacing = fields.pop("spacing_mm", None)
        if spacing is None:
            if self.config.spacing_mm is None:
                raise CodecError(f"{self.name}: pass spacing_mm= to decode")
            spacing = torch.tensor([self.config.spacing_mm], dtype=torch.float32)
        return AnatomyMask(labels=grid, spacing_mm=spacing.expand(b, 3).clone(), label_set="region-groups",
                           **fields)

    def passthrough_fields(self, m: AnatomyMask) -> dict:
        spacing = None if self.config.spacing_mm is None else torch.tensor([self.config.spacing_mm])
        return {"spacing_mm": m.spacing_mm if spacing is None else spacing}

    def reconstruction_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Fraction of voxels whose region differs from their patch's dominant one (of ``x``, the
        composition of the input; a decoded mask is pure per patch)."""
        return 1.0 - x.max(-1).values.mean()
