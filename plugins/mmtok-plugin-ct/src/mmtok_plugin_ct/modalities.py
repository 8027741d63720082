"""CT modalities: `CTVolume` (Hounsfield units), `AnatomyMask` (region ids on the same grid),
`ReportText` (a report as UTF-8 bytes: first line the impression, each further line a finding /
reasoning step).

Volumes and masks are stored in the canonical voxel layout of `mmtok_plugin_ct.orientation`
(``d, h, w`` = S, A, R; ``axcodes="SAR"``); readers reorient whatever the file holds. Shapes are
per sample: raw volumes differ in size, the codecs resample and crop them to a fixed grid.
"""

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float, Int
from nibabel import orientations
from torch import Tensor

from mmtok import Modality, ModalityError
from mmtok_plugin_ct.orientation import CANONICAL, OrientationError, to_canonical

__all__ = ["CTVolume", "AnatomyMask", "ReportText", "check_aligned", "HU_RANGE"]

#: plausible Hounsfield range: air is -1000, padding outside the field of view goes to -3024,
#: dense metal to a few 10^4; values far outside are not HU (raw MR / PET intensities, bad rescale)
HU_RANGE = (-4096.0, 40000.0)


def _canonical(record: dict, key: str, sample_id: str | None, cls: str) -> tuple[np.ndarray, np.ndarray]:
    """(array in SAR layout, spacing (3,)) from a reader record: ``affine`` (4, 4) reorients,
    otherwise the array must already be canonical (``axcodes == "SAR"``) with ``spacing_mm``."""
    where = f"sample {sample_id!r}: " if sample_id is not None else ""
    data = np.asarray(record[key])
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ModalityError(f"{where}{cls}.{key}: expected a 3D volume, found {data.ndim}D shape "
                            f"{data.shape}{' (a 4D series is not one CT volume)' if data.ndim == 4 else ''}")
    codes = str(np.asarray(record.get("axcodes", "")).reshape(()) if "axcodes" in record else "")
    try:
        if "affine" in record and codes != CANONICAL:
            data, spacing, _ = to_canonical(data, np.asarray(record["affine"], dtype=np.float64))
            return data, spacing
        if "spacing_mm" not in record:
            raise OrientationError("needs 'spacing_mm' (or an 'affine')")
        spacing = np.asarray(record["spacing_mm"], dtype=np.float64).reshape(-1)
        if codes and codes != CANONICAL:
            ornt = orientations.axcodes2ornt(tuple(codes))
            transform = orientations.ornt_transform(ornt, orientations.axcodes2ornt(tuple(CANONICAL)))
            data = orientations.apply_orientation(data, transform)
            spacing = spacing[transform[:, 0].astype(int).argsort()]
        elif not codes:
            raise OrientationError("needs an 'affine' or 'axcodes' to know the voxel orientation")
    except (OrientationError, ValueError) as err:
        raise ModalityError(f"{where}{cls}: orientation: {err}") from None
    return np.ascontiguousarray(data), spacing


def _check_spacing(name: str, spacing: Tensor) -> None:
    if not bool((spacing > 0).all()):
        raise ModalityError(f"{name}.spacing_mm: expected positive voxel sizes, found "
                            f"{spacing[(spacing <= 0).any(dim=1)][0].tolist()}")


def _check_axcodes(name: str, codes: str) -> None:
    if codes != CANONICAL:
        raise ModalityError(f"{name}.axcodes: volumes are stored in the canonical {CANONICAL!r} layout "
                            f"(readers reorient), found {codes!r}")


@dataclass(frozen=True, eq=False)
class CTVolume(Modality):
    """CT volumes in Hounsfield units. hu: (b, 1, d, h, w); spacing_mm: (b, 3) voxel size along
    d, h, w; axcodes: world direction of d, h, w (always "SAR")."""

    name: ClassVar[str] = "ct_volume"
    hu: Float[Tensor, "b 1 d h w"]
    spacing_mm: Float[Tensor, "b 3"]
    axcodes: str = CANONICAL

    def check(self) -> None:
        super().check()
        _check_spacing("CTVolume", self.spacing_mm)
        _check_axcodes("CTVolume", self.axcodes)
        lo, hi = float(self.hu.min()), float(self.hu.max())
        if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
            raise ModalityError(f"CTVolume.hu: expected Hounsfield units in [{HU_RANGE[0]:.0f}, "
                                f"{HU_RANGE[1]:.0f}], found values in [{lo:.1f}, {hi:.1f}] "
                                "(not a CT, or the rescale slope / intercept was not applied)")

    @classmethod
    def from_record(cls, record: dict, *, sample_id: str | None = None) -> "CTVolume":
        key = "hu" if "hu" in record else "data"
        if key not in record:
            raise ModalityError(f"sample {sample_id!r}: CTVolume needs 'hu' (or a reader's 'data'); "
                                f"found {sorted(record)}")
        data, spacing = _canonical(record, key, sample_id, "CTVolume")
        return cls.from_arrays({"hu": data[None].astype(np.float32), "spacing_mm": spacing},
                               sample_id=sample_id)

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "CTVolume":
        hu = torch.randn(batch_size, 1, 8, 32, 32, generator=generator) * 300 - 200
        return cls(hu=hu, spacing_mm=torch.tensor([[3.0, 1.5, 1.5]]).expand(batch_size, 3).clone())


@dataclass(frozen=True, eq=False)
class AnatomyMask(Modality):
    """Integer region ids aligned voxel for voxel with a `CTVolume`. labels: (b, 1, d, h, w);
    label_set names the ids ("totalsegmentator-total": 117 classes; "region-groups": the 20
    groups of `mmtok_plugin_ct.regions`)."""

    name: ClassVar[str] = "anatomy_mask"
    labels: Int[Tensor, "b 1 d h w"]
    spacing_mm: Float[Tensor, "b 3"]
    axcodes: str = CANONICAL
    label_set: str = "totalsegmentator-total"

    def check(self) -> None:
        super().check()
        _check_spacing("AnatomyMask", self.spacing_mm)
        _check_axcodes("AnatomyMask", self.axcodes)
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or hi > 255:
            raise ModalityError(f"AnatomyMask.labels: expected region ids in [0, 255], found [{lo}, {hi}]")

    @classmethod
    def from_record(cls, record: dict, *, sample_id: str | None = None) -> "AnatomyMask":
        key = next((k for k in ("labels", "seg", "data") if k in record), None)
        if key is None:
            raise ModalityError(f"sample {sample_id!r}: AnatomyMask needs 'labels' (or 'seg' / a reader's "
                                f"'data'); found {sorted(record)}")
        data, spacing = _canonical(record, key, sample_id, "AnatomyMask")
        if data.dtype.kind == "f":
            if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
                raise ModalityError(f"sample {sample_id!r}: AnatomyMask.labels: expected integer region ids, "
                                    "found non-integer values (is this an image rather than a mask?)")
        elif data.dtype.kind not in "iub":
            raise ModalityError(f"sample {sample_id!r}: AnatomyMask.labels: expected integers, found {data.dtype}")
        return cls.from_arrays({"labels": data[None].astype(np.int64), "spacing_mm": spacing},
                               sample_id=sample_id)

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "AnatomyMask":
        labels = torch.randint(0, 118, (batch_size, 1, 8, 32, 32), generator=generator)
        return cls(labels=labels, spacing_mm=torch.tensor([[3.0, 1.5, 1.5]]).expand(batch_size, 3).clone())


def check_aligned(volume: CTVolume, mask: AnatomyMask) -> None:
    """Raise `ModalityError` unless the mask lies on the volume's voxel grid (shape and spacing)."""
    if volume.hu.shape[2:] != mask.labels.shape[2:]:
        raise ModalityError(f"AnatomyMask.labels: expected the CT volume's grid {tuple(volume.hu.shape[2:])} "
                            f"(d, h, w), found {tuple(mask.labels.shape[2:])}")
    if not torch.allclose(volume.spacing_mm, mask.spacing_mm, rtol=1e-3, atol=1e-4):
        raise ModalityError(f"AnatomyMask.spacing_mm: expected the CT volume's {volume.spacing_mm[0].tolist()}, "
                            f"found {mask.spacing_mm[0].tolist()}")


@dataclass(frozen=True, eq=False)
class ReportText(Modality):
    """Report text as UTF-8 bytes, zero-padded. utf8: (b, n) byte values; length: (b,) bytes used.

    Line 0 is the impression, each further line one finding / reasoning step.
    """

    name: ClassVar[str] = "report_text"
    token_key: ClassVar[str] = "tok_report"
    utf8: Int[Tensor, "b n"]
    length: Int[Tensor, " b"]

    def check(self) -> None:
        super().check()
        n = self.utf8.shape[1]
        if bool((self.length < 1).any()):
            i = int(torch.nonzero(self.length < 1)[0])
            raise ModalityError(f"ReportText: sample {i} is an empty report (expected at least one "
                                "non-blank line)")
        if bool((self.length > n).any()):
            raise ModalityError(f"ReportText.length: expected at most {n} bytes, found {int(self.length.max())}")
        if int(self.utf8.min()) < 0 or int(self.utf8.max()) > 255:
            raise ModalityError("ReportText.utf8: expected byte values in [0, 255]")
        self.texts()  # valid UTF-8

    def texts(self) -> list[str]:
        """The reports as Python strings."""
        out = []
        raw = self.utf8.to(torch.uint8).cpu().numpy()
        for i, n in enumerate(self.length.tolist()):
            try:
                out.append(bytes(raw[i, :n]).decode("utf-8"))
            except UnicodeDecodeError as err:
                raise ModalityError(f"ReportText.utf8: sample {i} is not valid UTF-8 ({err.reason})") from None
        return out

    @classmethod
    def from_texts(cls, texts: list[str], max_bytes: int | None = None) -> "ReportText":
        """A batch from strings (blank lines and surrounding spaces dropped)."""
        encoded = [normalize_report(t).encode("utf-8") for t in texts]
        n = max(max_bytes or 0, max((len(e) for e in encoded), default=1), 1)
        utf8 = torch.zeros(len(encoded), n, dtype=torch.long)
        for i, e in enumerate(encoded):
            if len(e) > n:
                raise ModalityError(f"ReportText: sample {i} has {len(e)} bytes, more than max_bytes={n}")
            utf8[i, :len(e)] = torch.tensor(list(e), dtype=torch.long)
        return cls(utf8=utf8, length=torch.tensor([len(e) for e in encoded], dtype=torch.long))

    @classmethod
    def from_record(cls, record: dict, *, sample_id: str | None = None) -> "ReportText":
        key = next((k for k in ("text", "report", "data") if k in record), None)
        if key is None:
            raise ModalityError(f"sample {sample_id!r}: ReportText needs 'text' (or 'report'); found {sorted(record)}")
        value: Any = record[key]
        value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
        if not isinstance(value, str):
            raise ModalityError(f"sample {sample_id!r}: ReportText.{key}: expected a string, found "
                                f"{type(value).__name__}")
        if not normalize_report(value):
            raise ModalityError(f"sample {sample_id!r}: ReportText: empty report (no non-blank line)")
        try:  # padded to a multiple of 256 bytes, so that most reports collate into one batch
            n = len(normalize_report(value).encode("utf-8"))
            return cls.from_texts([value], max_bytes=-(-n // 256) * 256)
        except ModalityError as err:
            raise ModalityError(f"sample {sample_id!r}: {err}") from None

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "ReportText":
        texts = ["CT slab showing liver and right kidney.\nliver: large portion, right anterior.",
                 "CT slab showing spleen.\nspleen: small portion, left posterior."]
        return cls.from_texts([texts[i % 2] for i in range(batch_size)], max_bytes=96)


def normalize_report(text: str) -> str:
    """Strip each line, drop blank ones, join with newlines."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())
