"""`MedicalImage2D`: 2D medical images of any imaging modality, intensities in [0, 1].

pixels: (b, c, h, w) float in [0, 1], c = 1 (grey) or 3 (RGB), any size (codecs resize);
imaging_modality: (b,) int64 index into `IMAGING_MODALITIES` (None: unknown, e.g. an image to
classify); pixel_spacing_mm: (b, 2) row / column spacing, 0 where the file does not say (None:
no spacing for the whole batch); body_part: free text per image (DICOM BodyPartExamined; "" =
unknown; a str is taken for every image of the batch), None when no image says.

The imaging-modality vocabulary is open: `register_imaging_modality("thermography")` appends a
label (indices of existing labels never change, so tokens and trained models stay valid). A
trained model stores the labels it was trained on by name.

Records (what readers return) hold the stored ``pixels`` plus header fields; `from_record` runs
the per-modality preprocessing of `mmtok_plugin_medimg.preprocessing` (DICOM rescale and VOI
window, photometric interpretation, intensity to [0, 1]) and refuses what is not one 2-D image.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mmtok import Modality, ModalityError

__all__ = ["MedicalImage2D", "IMAGING_MODALITIES", "DICOM_MODALITY", "register_imaging_modality",
           "modality_index", "modality_label"]

#: the imaging-modality vocabulary; append only (`register_imaging_modality`)
IMAGING_MODALITIES: list[str] = ["xray", "ct", "mr", "ultrasound", "nuclear", "pathology", "dermatoscopy",
                                 "fundus", "oct", "clinical_photo"]

#: DICOM (0008,0060) Modality -> imaging modality
DICOM_MODALITY: dict[str, str] = {
    "CR": "xray", "DX": "xray", "MG": "xray", "RF": "xray", "XA": "xray", "IO": "xray", "PX": "xray",
    "CT": "ct", "MR": "mr", "US": "ultrasound", "IVUS": "ultrasound", "NM": "nuclear", "PT": "nuclear",
    "SM": "pathology", "OP": "fundus", "OPT": "oct", "OCT": "oct", "XC": "clinical_photo",
    "ES": "clinical_photo",
}

_ALIASES = {"x-ray": "xray", "cr": "xray", "dx": "xray", "radiograph": "xray", "mri": "mr", "us": "ultrasound",
            "nm": "nuclear", "pet": "nuclear", "histology": "pathology", "histopathology": "pathology",
            "dermoscopy": "dermatoscopy", "skin_photo": "clinical_photo"}


def register_imaging_modality(label: str) -> int:
    """Add an imaging-modality label (snake_case); returns its index (existing: its index)."""
    if not isinstance(label, str) or not label.replace("_", "").isalnum() or label != label.lower():
        raise ModalityError(f"imaging modality labels are lower-case snake_case words, found {label!r}")
    if label not in IMAGING_MODALITIES:
        IMAGING_MODALITIES.append(label)
    return IMAGING_MODALITIES.index(label)


def modality_index(label: str, *, where: str = "") -> int:
    """Index of an imaging-modality label (aliases such as ``mri``, ``x-ray`` accepted)."""
    key = str(label).strip().lower().replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in IMAGING_MODALITIES:
        raise ModalityError(f"{where}unknown imaging modality {label!r}; known: {', '.join(IMAGING_MODALITIES)} "
                            "(mmtok_plugin_medimg.register_imaging_modality adds one)")
    return IMAGING_MODALITIES.index(key)


def modality_label(index: int) -> str:
    if not 0 <= int(index) < len(IMAGING_MODALITIES):
        raise ModalityError(f"imaging modality index {int(index)} out of range (0..{len(IMAGING_MODALITIES) - 1})")
    return IMAGING_MODALITIES[int(index)]


@dataclass(frozen=True, eq=False)
class MedicalImage2D(Modality):
    """2D medical images. pixels: (b, c, h, w) in [0, 1], c in {1, 3}; imaging_modality: (b,)
    index into `IMAGING_MODALITIES` or None; pixel_spacing_mm: (b, 2), 0 = unknown, or None."""

    name: ClassVar[str] = "medical_image"
    pixels: Float[Tensor, "b c h w"]
    imaging_modality: Int[Tensor, "b"] | None = None
    pixel_spacing_mm: Float[Tensor, "b 2"] | None = None
    body_part: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        parts = self.body_part
        if isinstance(parts, str):
            parts = (parts,) * (int(self.pixels.shape[0]) if isinstance(self.pixels, Tensor) else 1)
        elif parts is not None:
            parts = tuple("" if v is None else str(v) for v in parts)
        if parts is not None and not any(parts):
            parts = None
        object.__setattr__(self, "body_part", parts)
        super().__post_init__()

    def __getitem__(self, index):
        if self.body_part is None:
            return super().__getitem__(index)
        n = len(self)
        if isinstance(index, int):
            picked = [index % n]
        elif isinstance(index, slice):
            picked = list(range(n))[index]
        elif isinstance(index, Tensor) and index.dtype == torch.bool:
            picked = [i for i, keep in enumerate(index.tolist()) if keep]
        else:
            picked = [int(i) % n for i in (index.tolist() if isinstance(index, Tensor) else index)]
        out = self.replace(body_part=None)[index]
        return out.replace(body_part=tuple(self.body_part[i] for i in picked))

    @classmethod
    def collate(cls, samples):
        """As `Modality.collate`; body parts are per image, so they are concatenated too."""
        parts = [s.body_part or ("",) * len(s) for s in samples]
        out = super().collate([s.replace(body_part=None) if s.body_part is not None else s for s in samples])
        joined = tuple(p for ps in parts for p in ps)
        return out.replace(body_part=joined) if any(joined) else out

    def check(self) -> None:
        p = self.pixels
        if self.body_part is not None and isinstance(p, Tensor) and len(self.body_part) != p.shape[0]:
            raise ModalityError(f"MedicalImage2D.body_part: expected one entry per image ({p.shape[0]}), found "
                                f"{len(self.body_part)}")
        if isinstance(p, Tensor) and p.ndim != 4:
            hint = {2: " (one grey image is (1, 1, h, w))", 3: " (a 3-D array: a volume or a frame stack is not "
                    "one 2-D image; take a slice or a frame: the readers' 'slice' / 'frame' options)",
                    5: " (a batch of volumes is not 2-D images)"}.get(p.ndim, "")
            raise ModalityError(f"MedicalImage2D.pixels: expected 2-D images (b, c, h, w), found {p.ndim}-D shape "
                                f"{tuple(p.shape)}{hint}")
        super().check()  # shapes and dtypes (jaxtyping), finiteness
        if p.shape[1] not in (1, 3):
            raise ModalityError(f"MedicalImage2D.pixels: expected 1 (grey) or 3 (RGB) channels, found "
                                f"{p.shape[1]} in shape {tuple(p.shape)}")
        if p.numel() and (float(p.min()) < 0.0 or float(p.max()) > 1.0):
            raise ModalityError(f"MedicalImage2D.pixels: intensities must lie in [0, 1], found "
                                f"{float(p.min()):.4g}..{float(p.max()):.4g} (records go through "
                                "MedicalImage2D.from_record, which windows and rescales)")
        m = self.imaging_modality
        if m is not None and m.numel() and (int(m.min()) < 0 or int(m.max()) >= len(IMAGING_MODALITIES)):
            raise ModalityError(f"MedicalImage2D.imaging_modality: indices must lie in 0..{len(IMAGING_MODALITIES) - 1} "
                                f"({', '.join(IMAGING_MODALITIES)}), found {int(m.min())}..{int(m.max())}")
        s = self.pixel_spacing_mm
        if s is not None and bool((s < 0).any()):
            raise ModalityError("MedicalImage2D.pixel_spacing_mm: must be >= 0 (0 = unknown)")

    @property
    def labels(self) -> list[str | None]:
        """Imaging-modality label per image (None when unknown)."""
        if self.imaging_modality is None:
            return [None] * len(self)
        return [modality_label(i) for i in self.imaging_modality.tolist()]

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "MedicalImage2D":
        """Smooth random RGB images, 40 x 56 px (not square: codecs resize), labelled, with spacing."""
        g = generator
        coarse = torch.rand(batch_size, 3, 5, 7, generator=g)
        pixels = torch.nn.functional.interpolate(coarse, size=(40, 56), mode="bilinear", align_corners=False)
        pixels = (pixels + 0.05 * torch.rand(batch_size, 3, 40, 56, generator=g)).clamp(0, 1)
        labels = torch.randint(0, len(IMAGING_MODALITIES), (batch_size,), generator=g)
        spacing = 0.1 + torch.rand(batch_size, 2, generator=g)
        return cls(pixels=pixels, imaging_modality=labels, pixel_spacing_mm=spacing)

    @classmethod
    def from_record(cls, record: dict, *, sample_id: str | None = None) -> "MedicalImage2D":
        """One image from a reader record: ``pixels`` (h, w), (h, w, c) or a single frame of a
        stack, plus header fields; see `mmtok_plugin_medimg.preprocessing.prepare_record`."""
        from mmtok_plugin_medimg.preprocessing import prepare_record

        where = f"sample {sample_id!r}: " if sample_id is not None else ""
        try:
            fields = prepare_record(record)
        except ModalityError as err:
            raise ModalityError(f"{where}{err}") from None
        try:
            return cls(**fields)
        except ModalityError as err:
            raise ModalityError(f"{where}{err}") from None


def images(pixels: Tensor, labels: list[str] | None = None) -> MedicalImage2D:
    """Convenience: a batch from (b, c, h, w) pixels in [0, 1] and optional label names."""
    mod = None if labels is None else torch.tensor([modality_index(x) for x in labels], dtype=torch.long)
    return MedicalImage2D(pixels=pixels, imaging_modality=mod)
