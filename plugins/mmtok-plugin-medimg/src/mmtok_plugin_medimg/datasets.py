"""The plugin's real-image data set: `build_dataset(size, channels) -> MedImageSet`.

A table (`SOURCES`) says, for every file in the package's ``data/`` folder (see data/DATA.md),
which reader reads it, which imaging modality it is, how it turns into images (the whole image
resized, seeded crops at 25-60 % of the short side, the frames of a cine loop, the slices of a
volume, the 49 tiles of a MedMNIST 7 x 7 montage, the images of a MedMNIST ``.npz``) and how it
is split. Each image goes through the io readers, `prepare_record` (per-modality windowing to
[0, 1]) and `to_model_input` (channels, antialiased resize with aspect-keeping zero padding).

The split is by source, never by image: a source is one file, volume, loop, montage tile or
MedMNIST image, and all its images share a split. Rules (the table's ``split``):

* ``"auto"``: within each (modality, group) the source ids are sorted and every third one,
  starting with the second (sorted positions 1, 4, 7, ...), is held out for test (~33 %).
  Group "files" holds the single-file sources of a modality; a MedMNIST collection (class
  images + montage tiles) is its own group.
* ``"npz"``: MedMNIST images keep the ``.npz`` file's own train / test split.
* ``"region"``: a modality with a single source image: training crops come only from the first
  ``train_frac`` of the image along ``axis``, test crops only from the part after a guard band,
  so no test crop shares a pixel with a training crop (no "whole" image is made).
* ``"block"``: a frame stack / volume as the only source: the last ``test_frac`` frames are
  held out, ``guard`` frames before them are dropped (frames are strongly correlated; this is
  the weakest split and no source in `SOURCES` uses it at present).

`check_split` verifies all of this on a built set; `build_dataset` calls it before returning.
"""

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmtok import MmtokError
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES, modality_index
from mmtok_plugin_medimg.preprocessing import prepare_record, to_model_input
from mmtok_plugin_medimg.readers import read_dicom, read_image, read_medmnist, read_nifti_slice, read_slide

__all__ = ["DATA_DIR", "SOURCES", "Source", "RegionSplit", "BlockSplit", "MedImageSet", "build_dataset",
           "check_split", "auto_split"]

#: the folder of real files the plugin ships (provenance, licences and sha256: DATA.md there)
DATA_DIR = Path(__file__).parent / "data"

#: base seed of the crop positions (each source's generator is seeded with (SEED, crc32(source id)))
SEED = 0
#: crop side as a fraction of the short side (of the image, or of the smaller region of a region split)
CROP_SCALES = (0.25, 0.6)


@dataclass(frozen=True)
class RegionSplit:
    """Spatial split of one image: rows (axis 0) or columns (axis 1) ``[0, train_frac * L)`` give
    the training crops, ``[(train_frac + guard_frac) * L, L)`` the test crops."""

    axis: int = 0
    train_frac: float = 0.6
    guard_frac: float = 0.05
    test_crops: int = 20


@dataclass(frozen=True)
class BlockSplit:
    """Frame / slice split of one stack: the last ``ceil(test_frac * n)`` frames are test, the
    ``guard`` frames before them are dropped, the rest are training frames."""

    test_frac: float = 0.3
    guard: int = 2


@dataclass(frozen=True)
class Source:
    """One row of `SOURCES`: a file under ``data/`` and how it becomes images.

    reader: "dicom" | "image" | "slide" | "nifti" | "medmnist" | "npz_frames" (the eCT npz of
    stored values + rescale); options: the reader's keyword options; layout: "image" (one 2-D
    image), "frames" / "slices" (``indices`` of a stack / volume), "tiles" (a ``grid`` x ``grid``
    montage, one source per tile), "medmnist" (``take`` = images per split, evenly spaced);
    crops: crops per image (region split: training crops); background: "dark" / "light" makes a
    crop count only if >= ``min_foreground`` of its pixels differ by > 0.05 from the image's
    background level (10th / 90th grey percentile).
    """

    file: str
    reader: str
    modality: str
    source_id: str
    split: str = "auto"
    options: dict = field(default_factory=dict)
    layout: str = "image"
    indices: tuple[int, ...] | None = None
    crops: int = 0
    whole: bool = True
    background: str | None = None
    min_foreground: float = 0.4
    region: RegionSplit | None = None
    block: BlockSplit | None = None
    take: dict | None = None
    grid: int = 7
    group: str | None = None


_DERMA = [Source(f"medmnist/dermamnist_224_rgb_Class{c}.jpeg", "image", "dermatoscopy", f"dermamnist/class{c}",
                 group="dermamnist") for c in (0, 1, 2, 4, 5, 6)]  # Class3 is montage tile 1 (same image)
_PATH = [Source(f"medmnist/pathmnist_224_rgb_Class{c}.jpeg", "image", "pathology", f"pathmnist/class{c}",
                group="pathmnist") for c in range(9)]
_BREAST = [Source(f"medmnist/breastmnist_224_gray_Class{c}.jpeg", "image", "ultrasound", f"breastmnist/class{c}",
                  group="breastmnist") for c in range(2)]

#: the data set's table: every file of data/ that `build_dataset` uses
SOURCES: list[Source] = [
    # xray: 2 CR files + PneumoniaMNIST (28 x 28) images
    Source("RG1_J2KI.dcm", "dicom", "xray", "RG1_J2KI", crops=15),
    Source("RG3_J2KI.dcm", "dicom", "xray", "RG3_J2KI", crops=15, background="light"),
    Source("medmnist/pneumoniamnist_subset_28.npz", "medmnist", "xray", "pneumoniamnist", split="npz",
           layout="medmnist", take={"train": 80, "test": 30}),
    # ct: 2 slices, a 2-frame enhanced CT series, a 10-slice volume
    Source("693_J2KR.dcm", "dicom", "ct", "693_J2KR", crops=12, background="dark"),
    Source("CT_small.dcm", "dicom", "ct", "CT_small", crops=15),
    Source("eCT_Supplemental_frames.npz", "npz_frames", "ct", "eCT_Supplemental_frames", layout="frames",
           indices=(0, 1), crops=6, background="dark", options={"window": (40.0, 80.0)}),  # brain window
    Source("ct_totalseg_10slices.nii.gz", "nifti", "ct", "ct_totalseg_10slices", layout="slices",
           indices=tuple(range(10)), crops=2, background="dark"),
    # mr: 3 slices, a 10-frame series, a 3-D volume
    Source("MR-SIEMENS-DICOM-WithOverlays.dcm", "dicom", "mr", "MR-SIEMENS-DICOM-WithOverlays", crops=20,
           background="dark"),
    Source("MR2_J2KR.dcm", "dicom", "mr", "MR2_J2KR", crops=15, background="dark"),
    Source("MR_small.dcm", "dicom", "mr", "MR_small", crops=5),
    Source("emri_small.dcm", "dicom", "mr", "emri_small", layout="frames", indices=tuple(range(10))),
    Source("anatomical.nii", "nifti", "mr", "anatomical", layout="slices", indices=tuple(range(5, 20))),
    # ultrasound: Doppler still, echo cine (24 frames), BreastMNIST
    Source("US1_J2KR.dcm", "dicom", "ultrasound", "US1_J2KR", crops=15, background="dark"),
    Source("echo_color3d_24f_half.dcm", "dicom", "ultrasound", "echo_color3d_24f_half", layout="frames",
           indices=tuple(range(24))),
    *_BREAST,
    Source("medmnist/breastmnist_highres_sample.jpeg", "image", "ultrasound", "breastmnist", layout="tiles",
           group="breastmnist"),
    # nuclear: one whole-body bone scan -> region split along rows
    Source("JPEG2000_UNC.dcm", "dicom", "nuclear", "JPEG2000_UNC", split="region", crops=40, background="dark",
           min_foreground=0.3, region=RegionSplit(axis=0, train_frac=0.6, guard_frac=0.05, test_crops=20)),
    # pathology: H&E slide region (SVS), IHC, PathMNIST
    Source("cmu_small_region.svs", "slide", "pathology", "cmu_small_region", crops=30, background="light"),
    Source("ihc.png", "image", "pathology", "ihc", crops=15),
    *_PATH,
    Source("medmnist/pathmnist_224_rgb_sample16224.jpeg", "image", "pathology", "pathmnist/sample16224",
           group="pathmnist"),
    Source("medmnist/pathmnist_highres_sample.jpeg", "image", "pathology", "pathmnist", layout="tiles",
           group="pathmnist"),
    # dermatoscopy: DermaMNIST only
    *_DERMA,
    Source("medmnist/dermamnist_224_rgb_sample6760.jpeg", "image", "dermatoscopy", "dermamnist/sample6760",
           group="dermamnist"),
    Source("medmnist/dermamnist_128_rgb_sample6763.jpeg", "image", "dermatoscopy", "dermamnist/sample6763",
           group="dermamnist"),
    Source("medmnist/dermamnist_highres_sample.jpeg", "image", "dermatoscopy", "dermamnist", layout="tiles",
           group="dermamnist"),
    # fundus: a green-channel crop (train) + one colour fundus photo -> region split along rows
    Source("microaneurysms.png", "image", "fundus", "microaneurysms", crops=4),
    Source("retina.jpg", "image", "fundus", "retina", split="region", crops=35, background="dark",
           region=RegionSplit(axis=0, train_frac=0.6, guard_frac=0.05, test_crops=20)),
    # clinical_photo: one smartphone skin photo -> region split along columns
    Source("skin_clinical_photo_half.jpg", "image", "clinical_photo", "skin_clinical_photo_half", split="region",
           crops=40, region=RegionSplit(axis=1, train_frac=0.6, guard_frac=0.05, test_crops=20)),
]


# ------------------------------------------------------------------------------ the data set

@dataclass
class MedImageSet:
    """Images ready for a model, with their split.

    pixels: (n, channels, size, size) float32 in [0, 1]; labels: (n,) int64 index into
    `IMAGING_MODALITIES`; source: source id per image; split: "train" / "test"; kind: "whole",
    "crop", "frame", "slice" or "tile"; box: (row, col, height, width) of the image in its source
    image's pixels (None: the whole image / frame / slice); index: frame / slice / tile / MedMNIST
    index in its file (None: a single image); rules: source id -> {"modality", "rule" ("auto",
    "npz", "region", "block"), "guard" (pixels or frames, region / block), "file"}.
    """

    pixels: Tensor
    labels: Tensor
    source: list[str]
    split: list[str]
    kind: list[str]
    box: list[tuple[int, int, int, int] | None]
    index: list[int | None]
    rules: dict[str, dict]

    def __len__(self) -> int:
        return len(self.source)

    def subset(self, split: str) -> "MedImageSet":
        """The images of one split ("train" / "test"), same fields."""
        if split not in ("train", "test"):
            raise MmtokError(f"MedImageSet.subset: split must be 'train' or 'test', found {split!r}")
        keep = [i for i, s in enumerate(self.split) if s == split]
        pick = torch.tensor(keep, dtype=torch.long)
        sources = {self.source[i] for i in keep}
        return MedImageSet(self.pixels[pick], self.labels[pick], [self.source[i] for i in keep],
                           [self.split[i] for i in keep], [self.kind[i] for i in keep], [self.box[i] for i in keep],
                           [self.index[i] for i in keep], {k: v for k, v in self.rules.items() if k in sources})

    def present_modalities(self) -> list[str]:
        """Labels of the modalities with images, in vocabulary order."""
        return [IMAGING_MODALITIES[i] for i in sorted(set(self.labels.tolist()))]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per present modality: {"train_images", "test_images", "train_sources", "test_sources"}
        (a region- or block-split source counts once in each split)."""
        out = {}
        labels = self.labels.tolist()
        for m in self.present_modalities():
            k = IMAGING_MODALITIES.index(m)
            row = {}
            for split in ("train", "test"):
                idx = [i for i, (y, s) in enumerate(zip(labels, self.split)) if y == k and s == split]
                row[f"{split}_images"] = len(idx)
                row[f"{split}_sources"] = len({self.source[i] for i in idx})
            out[m] = row
        return out

    def how_split(self, modality: str) -> str:
        """One line saying how a modality's images were split."""
        parts = []
        ids = {m: [] for m in ("auto", "npz", "region", "block")}
        for sid, info in sorted(self.rules.items()):
            if info["modality"] == modality:
                ids[info["rule"]].append(sid)
        test = {self.source[i] for i, s in enumerate(self.split) if s == "test"}
        files = [s for s in ids["auto"] if "/" not in s]
        if files:
            held = [s for s in files if s in test]
            kept = [s for s in files if s not in test]
            parts.append(f"whole files: test {', '.join(held) or 'none'}; train {', '.join(kept) or 'none'}")
        groups = sorted({s.split("/")[0] for s in ids["auto"] if "/" in s})
        for g in groups:
            members = [s for s in ids["auto"] if s.startswith(g + "/")]
            parts.append(f"{g}: {sum(s in test for s in members)} of {len(members)} images held out")
        for name in sorted({s.split("/")[0] for s in ids["npz"]}):
            parts.append(f"{name}: the npz's own train / test split")
        for sid in ids["region"]:
            r = self.rules[sid]
            axis = "rows" if r["axis"] == 0 else "columns"
            parts.append(f"{sid}: one image split by region ({axis}: first {r['train_frac']:.0%} train, "
                         f"last {1 - r['train_frac'] - r['guard_frac']:.0%} test, {r['guard']} px guard band)")
        for sid in ids["block"]:
            parts.append(f"{sid}: last frames held out, {self.rules[sid]['guard']} frames dropped between "
                         "(correlated frames)")
        return "; ".join(parts)

    def describe_counts(self) -> str:
        """Markdown table: modality | train images | test images | train sources | test sources |
        how split (absent vocabulary modalities are listed as having no source)."""
        counts = self.counts()
        lines = ["| modality | train images | test images | train sources | test sources | how split |",
                 "| --- | ---: | ---: | ---: | ---: | --- |"]
        total = [0, 0, 0, 0]
        for m in IMAGING_MODALITIES:
            if m not in counts:
                lines.append(f"| {m} | 0 | 0 | 0 | 0 | no source in data/ (the class stays in the vocabulary) |")
                continue
            c = counts[m]
            values = [c["train_images"], c["test_images"], c["train_sources"], c["test_sources"]]
            total = [a + b for a, b in zip(total, values)]
            lines.append(f"| {m} | " + " | ".join(str(v) for v in values) + f" | {self.how_split(m)} |")
        lines.append("| **total** | " + " | ".join(f"**{v}**" for v in total) + " | |")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ readers

def _read_npz_frame(path, frame: int = 0, window: tuple[float, float] | None = None) -> dict:
    """One frame of an npz of stored values + per-frame rescale (the eCT file of data/):
    ``pixels`` (frames, h, w), ``rescale_slope`` / ``rescale_intercept`` (frames,),
    ``pixel_spacing_mm`` (2,). A record like `read_dicom`'s (CT: stored values before rescale);
    ``window`` = (center, width) in rescaled units stands in for the VOI window the npz lacks."""
    with np.load(str(path), allow_pickle=False) as d:
        stack = d["pixels"]
        if not 0 <= frame < stack.shape[0]:
            raise MmtokError(f"{Path(path).name}: frame {frame} out of range 0..{stack.shape[0] - 1}")
        record = {"pixels": stack[frame], "photometric": "MONOCHROME2", "bits_stored": 16, "frames": 1,
                  "rescale_slope": float(d["rescale_slope"][frame]),
                  "rescale_intercept": float(d["rescale_intercept"][frame]),
                  "pixel_spacing_mm": d["pixel_spacing_mm"].astype(np.float64), "imaging_modality": "ct"}
    if window is not None:
        record["window_center"], record["window_width"] = float(window[0]), float(window[1])
    return record


READERS = {"dicom": read_dicom, "image": read_image, "slide": read_slide, "nifti": read_nifti_slice,
           "medmnist": read_medmnist, "npz_frames": _read_npz_frame}


def _prepared(src: Source, path: Path, **options) -> Tensor:
    """(1, c, h, w) in [0, 1] from one reader call + `prepare_record`; the reader's modality label,
    when it gives one, must agree with the table."""
    if src.reader not in READERS:
        raise MmtokError(f"SOURCES {src.source_id!r}: reader must be one of {sorted(READERS)}, found {src.reader!r}")
    record = READERS[src.reader](path, **{**src.options, **options})
    found = record.get("imaging_modality")
    if found is not None and modality_index(found) != modality_index(src.modality):
        raise MmtokError(f"{src.file}: the table says imaging modality {src.modality!r}, the file says {found!r}")
    return prepare_record(record)["pixels"]


# ------------------------------------------------------------------------------------- crops

def _background_level(image: Tensor, background: str | None) -> float | None:
    """The grey level of an image's background: its 10th percentile (dark) or 90th (light)."""
    if background is None:
        return None
    if background not in ("dark", "light"):
        raise MmtokError(f"Source.background must be 'dark', 'light' or None, found {background!r}")
    grey = image.mean(dim=1).flatten()[::7]  # a subsample is enough for a percentile
    return float(torch.quantile(grey, 0.1 if background == "dark" else 0.9))


def _foreground(x: Tensor, background: str | None, level: float | None) -> float:
    """Fraction of pixels of (1, c, h, w) that are not background: grey more than 0.05 above
    (dark) or below (light) the background ``level``."""
    if background is None:
        return 1.0
    grey = x.mean(dim=1)
    mask = grey > level + 0.05 if background == "dark" else grey < level - 0.05
    return float(mask.float().mean())


def _crop_boxes(image: Tensor, n: int, rng: np.random.Generator, area: tuple[int, int, int, int], base: int,
                src: Source) -> list[tuple[int, int, int, int]]:
    """``n`` square boxes (row, col, side, side) inside ``area`` = (row0, col0, row1, col1), side
    uniform in `CROP_SCALES` x ``base``, accepted when `_foreground` >= ``src.min_foreground``
    (at most 50 n draws; fewer boxes if the area has too little foreground)."""
    r0, c0, r1, c1 = area
    level = _background_level(image, src.background)
    boxes = []
    for _ in range(50 * n):
        if len(boxes) == n:
            break
        side = int(round(rng.uniform(*CROP_SCALES) * base))
        side = max(8, min(side, r1 - r0, c1 - c0))
        r = int(rng.integers(r0, r1 - side + 1))
        c = int(rng.integers(c0, c1 - side + 1))
        if _foreground(image[..., r:r + side, c:c + side], src.background, level) >= src.min_foreground:
            boxes.append((r, c, side, side))
    return boxes


def _cut(image: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    r, c, h, w = box
    return image[..., r:r + h, c:c + w]


def _region_areas(h: int, w: int, region: RegionSplit) -> tuple[tuple, tuple, int]:
    """(train area, test area, guard in pixels) of a region split; areas as (row0, col0, row1, col1)."""
    length = h if region.axis == 0 else w
    train_end = int(math.floor(region.train_frac * length))
    test_start = int(math.ceil((region.train_frac + region.guard_frac) * length))
    if not 0 < train_end < test_start < length:
        raise MmtokError(f"RegionSplit {region}: no room for a train part, a guard band and a test part in {length} px")
    if region.axis == 0:
        return (0, 0, train_end, w), (test_start, 0, h, w), test_start - train_end
    return (0, 0, h, train_end), (0, test_start, h, w), test_start - train_end


# ------------------------------------------------------------------------------------- split

def _unit_ids(src: Source) -> list[str]:
    """Source ids a table row contributes (known without reading the file, except MedMNIST npz)."""
    if src.layout == "tiles":
        return [f"{src.source_id}/tile{k:02d}" for k in range(src.grid * src.grid)]
    return [src.source_id]


def auto_split(sources: list[Source] = SOURCES) -> dict[str, str]:
    """The fixed split of every "auto" source: source id -> "train" / "test". Within each
    (modality, group) the ids are sorted and sorted positions 1, 4, 7, ... are test."""
    groups: dict[tuple[str, str], set[str]] = {}
    for src in sources:
        if src.split == "auto":
            groups.setdefault((src.modality, src.group or "files"), set()).update(_unit_ids(src))
    out = {}
    for ids in groups.values():
        for i, sid in enumerate(sorted(ids)):
            out[sid] = "test" if i % 3 == 1 else "train"
    return out


def _block_split(indices: tuple[int, ...], block: BlockSplit) -> dict[int, str]:
    """frame index -> "train" / "test" (guard frames are left out)."""
    order = sorted(indices)
    n_test = max(1, math.ceil(block.test_frac * len(order)))
    n_train = len(order) - n_test - block.guard
    if n_train < 1:
        raise MmtokError(f"BlockSplit {block}: {len(order)} frames leave no training frame")
    return {**{k: "train" for k in order[:n_train]}, **{k: "test" for k in order[-n_test:]}}


# ------------------------------------------------------------------------------------- build

def _images_of(src: Source, auto: dict[str, str], data_dir: Path, guards: dict[str, int]):
    """Yield (tensor (1, c, h, w), source id, split, kind, box, index) for one table row; a region
    split puts its guard band (pixels) in ``guards``."""
    path = data_dir / src.file
    rng = np.random.default_rng([SEED, zlib.crc32(src.source_id.encode())])

    def whole_and_crops(image, sid, split, kind, index):
        h, w = image.shape[-2:]
        if src.whole:
            yield image, sid, split, kind, None, index
        for box in _crop_boxes(image, src.crops, rng, (0, 0, h, w), min(h, w), src):
            yield _cut(image, box), sid, split, "crop", box, index

    if src.layout == "medmnist":
        with np.load(str(path), allow_pickle=False) as d:
            sizes = {s: d[f"{s}_images"].shape[0] for s in (src.take or {})}
        for split, n in (src.take or {}).items():
            if split not in ("train", "test"):
                raise MmtokError(f"SOURCES {src.source_id!r}: take keys must be 'train' / 'test', found {split!r}")
            for k in np.unique(np.linspace(0, sizes[split] - 1, min(n, sizes[split])).round().astype(int)):
                image = _prepared(src, path, split=split, index=int(k))
                yield image, f"{src.source_id}/{split}{int(k):04d}", split, "whole", None, int(k)
        return
    if src.layout == "tiles":
        montage = _prepared(src, path)
        h, w = montage.shape[-2:]
        th, tw = h // src.grid, w // src.grid
        for k, sid in enumerate(_unit_ids(src)):
            box = ((k // src.grid) * th, (k % src.grid) * tw, th, tw)
            yield _cut(montage, box), sid, auto[sid], "tile", box, k
        return
    if src.layout in ("frames", "slices"):
        if src.indices is None:
            raise MmtokError(f"SOURCES {src.source_id!r}: layout {src.layout!r} needs indices")
        key = "frame" if src.layout == "frames" else "slice"
        kind = key
        if src.split == "block":
            splits = _block_split(src.indices, src.block or BlockSplit())
        else:
            splits = {k: auto[src.source_id] for k in src.indices}
        for k in src.indices:
            if k not in splits:
                continue  # a guard frame of a block split
            image = _prepared(src, path, **{key: k})
            yield from whole_and_crops(image, src.source_id, splits[k], kind, k)
        return
    if src.layout != "image":
        raise MmtokError(f"SOURCES {src.source_id!r}: layout must be image / frames / slices / tiles / medmnist, "
                         f"found {src.layout!r}")
    image = _prepared(src, path)
    if src.split == "region":
        region = src.region or RegionSplit()
        h, w = image.shape[-2:]
        train_area, test_area, guards[src.source_id] = _region_areas(h, w, region)
        base = min(min(a[2] - a[0], a[3] - a[1]) for a in (train_area, test_area))
        for split, area, n in (("train", train_area, src.crops), ("test", test_area, region.test_crops)):
            for box in _crop_boxes(image, n, rng, area, base, src):
                yield _cut(image, box), src.source_id, split, "crop", box, None
        return
    yield from whole_and_crops(image, src.source_id, auto[src.source_id], "whole", None)


def _rule(src: Source) -> dict:
    """How a row's sources are split (stored in `MedImageSet.rules`; a region split adds its guard
    band in pixels when the image size is known)."""
    info = {"modality": src.modality, "rule": src.split, "file": src.file}
    if src.split == "region":
        region = src.region or RegionSplit()
        info.update(axis=region.axis, train_frac=region.train_frac, guard_frac=region.guard_frac)
    if src.split == "block":
        info.update(guard=(src.block or BlockSplit()).guard)
    return info


def build_dataset(size: int = 64, channels: int = 3, sources: list[Source] | None = None,
                  data_dir: Path | None = None) -> MedImageSet:
    """The data set of `SOURCES` (or ``sources``) as (n, channels, size, size) images in [0, 1]
    with a split by source (see the module docstring). Deterministic: crop positions come from
    generators seeded per source id. Raises `MmtokError` if a check of `check_split` fails."""
    sources = SOURCES if sources is None else sources
    data_dir = DATA_DIR if data_dir is None else Path(data_dir)
    known = set()
    for src in sources:
        if src.split not in ("auto", "npz", "region", "block"):
            raise MmtokError(f"SOURCES {src.source_id!r}: split must be auto / npz / region / block, "
                             f"found {src.split!r}")
        if src.split == "region" and src.layout != "image":
            raise MmtokError(f"SOURCES {src.source_id!r}: a region split needs layout 'image'")
        if src.split == "block" and src.layout not in ("frames", "slices"):
            raise MmtokError(f"SOURCES {src.source_id!r}: a block split needs layout 'frames' or 'slices'")
        for sid in _unit_ids(src):
            if sid in known:
                raise MmtokError(f"SOURCES: source id {sid!r} appears twice")
            known.add(sid)
    auto = auto_split(sources)
    guards: dict[str, int] = {}
    pixels, labels, source, split, kind, box, index, rules = [], [], [], [], [], [], [], {}
    for src in sources:
        label = modality_index(src.modality)
        for image, sid, s, k, b, i in _images_of(src, auto, data_dir, guards):
            pixels.append(to_model_input(image, size=(size, size), channels=channels))
            labels.append(label)
            source.append(sid)
            split.append(s)
            kind.append(k)
            box.append(b)
            index.append(i)
            rules.setdefault(sid, _rule(src))
        if src.split == "region":
            rules[src.source_id]["guard"] = guards[src.source_id]
    data = MedImageSet(torch.cat(pixels).float().contiguous(), torch.tensor(labels, dtype=torch.long), source,
                       split, kind, box, index, rules)
    check_split(data)
    return data


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 0) -> bool:
    """True when boxes (row, col, h, w) come closer than ``margin`` pixels (0: share a pixel)."""
    return (a[0] < b[0] + b[2] + margin and b[0] < a[0] + a[2] + margin
            and a[1] < b[1] + b[3] + margin and b[1] < a[1] + a[3] + margin)


def check_split(data: MedImageSet) -> None:
    """Raise `MmtokError` unless the test images share nothing with training: a source id is in
    both splits only under a region or block rule; region split: no test crop comes within the
    guard band of a training crop; block split: no frame in both, and ``guard`` frames between."""
    by_source: dict[str, dict[str, list[int]]] = {}
    for i, (sid, s) in enumerate(zip(data.source, data.split)):
        if s not in ("train", "test"):
            raise MmtokError(f"MedImageSet: split of image {i} must be 'train' or 'test', found {s!r}")
        by_source.setdefault(sid, {"train": [], "test": []})[s].append(i)
    for sid, parts in by_source.items():
        if not (parts["train"] and parts["test"]):
            continue
        rule = data.rules.get(sid, {}).get("rule")
        if rule == "region":
            guard = int(data.rules[sid]["guard"])
            for i in parts["test"]:
                for j in parts["train"]:
                    bi, bj = data.box[i], data.box[j]
                    if bi is None or bj is None:
                        raise MmtokError(f"source {sid!r}: a region-split source has a whole image in a split")
                    if _overlap(bi, bj, guard):
                        raise MmtokError(f"source {sid!r}: test crop {bi} comes within the {guard} px guard band "
                                         f"of training crop {bj}")
        elif rule == "block":
            guard = int(data.rules[sid]["guard"])
            train = {data.index[j] for j in parts["train"]}
            test = {data.index[i] for i in parts["test"]}
            if max(train) + guard >= min(test):
                raise MmtokError(f"source {sid!r}: training frames up to {max(train)} and test frames from "
                                 f"{min(test)} are not separated by {guard} guard frames")
        else:
            raise MmtokError(f"source {sid!r} (rule {rule!r}) has images in both train and test")
