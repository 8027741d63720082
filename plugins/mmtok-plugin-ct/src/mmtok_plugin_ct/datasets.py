"""Sub-volume datasets from whole CT cases: the retrieval benchmark's samples.

A `CTCase` is one volume with its mask, resampled to a common spacing. Crops of ``size`` voxels
are the samples: each gets its windowed volume, its region-group map and a templated findings
report (`mmtok_plugin_ct.reports`). Held-out crops come from slabs that no training crop
touches (`crop_boxes` with ``z_range``), so train and test never share a voxel.
"""

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from mmtok import MmtokError, PluginManager, get_plugin_manager
from mmtok_plugin_ct.modalities import AnatomyMask, CTVolume, check_aligned
from mmtok_plugin_ct.preprocessing import WINDOWS, resample, window_hu
from mmtok_plugin_ct.regions import group_labels
from mmtok_plugin_ct.reports import findings_report

__all__ = ["CTCase", "load_case", "load_case_files", "CropSet", "crop_boxes", "make_crops"]


@dataclasses.dataclass
class CTCase:
    """One case at a common spacing. hu: (d, h, w) float; labels: (d, h, w) long (fine ids)."""

    name: str
    hu: Tensor
    labels: Tensor
    spacing_mm: tuple[float, float, float]


def load_case(name: str, volume: CTVolume, mask: AnatomyMask, spacing_mm: list[float]) -> CTCase:
    """Resample a volume (trilinear) and its mask (nearest) to ``spacing_mm``."""
    check_aligned(volume, mask)
    hu = resample(volume.hu[:1], volume.spacing_mm[0], spacing_mm, mode="trilinear")[0, 0]
    labels = resample(mask.labels[:1], mask.spacing_mm[0], spacing_mm, mode="nearest")[0, 0]
    return CTCase(name, hu, labels, tuple(float(s) for s in spacing_mm))


def load_case_files(name: str, volume_path: Path, mask_path: Path, spacing_mm: list[float],
                    reader: str | None = None, manager: PluginManager | None = None) -> CTCase:
    """A case from files through the readers of ``manager`` (default: the installed plugins);
    ``reader`` forces one, e.g. "dicom"."""
    manager = manager or get_plugin_manager()
    read = manager.reader(reader).read if reader else manager.reader_for(volume_path).read
    volume = CTVolume.from_record(read(Path(volume_path)), sample_id=name)
    mask = AnatomyMask.from_record(manager.reader_for(mask_path).read(Path(mask_path)), sample_id=name)
    return load_case(name, volume, mask, spacing_mm)


def crop_boxes(case: CTCase, size: tuple[int, int, int], *, stride: tuple[int, int, int],
               z_range: tuple[int, int] | None = None, min_body: float = 0.5) -> list[tuple[int, int, int]]:
    """Corner (z, y, x) of every crop on a ``stride`` grid that lies inside ``z_range`` (slices)
    and is at least ``min_body`` body (HU > -500)."""
    z0, z1 = z_range or (0, case.hu.shape[0])
    body = (case.hu[z0:z1] > -500).float()[None, None]
    if any(n < k for n, k in zip(body.shape[2:], size)):
        return []
    frac = torch.nn.functional.avg_pool3d(body, kernel_size=size, stride=stride)[0, 0]  # every box at once
    out = [(z0 + int(z) * stride[0], int(y) * stride[1], int(x) * stride[2])
           for z, y, x in torch.nonzero(frac >= min_body).tolist()]
    return out


@dataclasses.dataclass
class CropSet:
    """hu: (n, 1, d, h, w) Hounsfield units; volumes: the same windowed to [0, 1]; regions:
    (n, 1, d, h, w) group ids; labels: the fine ids; reports: n strings; origin: (case name,
    z, y, x) per crop; spacing_mm: of every crop."""

    hu: Tensor
    volumes: Tensor
    labels: Tensor
    regions: Tensor
    reports: list[str]
    origin: list[tuple[str, int, int, int]]
    spacing_mm: tuple[float, float, float]

    def __len__(self) -> int:
        return len(self.reports)

    def select(self, index: list[int]) -> "CropSet":
        """The crops at ``index``."""
        return CropSet(self.hu[index], self.volumes[index], self.labels[index], self.regions[index],
                       [self.reports[i] for i in index], [self.origin[i] for i in index], self.spacing_mm)

    def volume(self) -> CTVolume:
        """The crops as one `CTVolume` batch."""
        return CTVolume(hu=self.hu, spacing_mm=torch.tensor([self.spacing_mm]).expand(len(self), 3).clone())

    def mask(self) -> AnatomyMask:
        return AnatomyMask(labels=self.labels, spacing_mm=torch.tensor([self.spacing_mm]).expand(len(self), 3).clone())


def make_crops(case: CTCase, boxes: list[tuple[int, int, int]], size: tuple[int, int, int],
               window: str = "soft_tissue") -> CropSet:
    if not boxes:
        raise MmtokError(f"{case.name}: no crop of {size} fits the requested range")
    hu, labels, reports = [], [], []
    for z, y, x in boxes:
        sl = (slice(z, z + size[0]), slice(y, y + size[1]), slice(x, x + size[2]))
        hu.append(case.hu[sl])
        labels.append(case.labels[sl])
        reports.append(findings_report(labels[-1]))
    hu, labels = torch.stack(hu)[:, None], torch.stack(labels)[:, None]
    return CropSet(hu, window_hu(hu, *WINDOWS[window]), labels, group_labels(labels), reports,
                   [(case.name, *b) for b in boxes], case.spacing_mm)

