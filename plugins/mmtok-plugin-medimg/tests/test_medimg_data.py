"""The plugin's real data: data/ files against DATA.md's sha256, and `build_dataset`'s images and
split by source (deterministic, shapes, ranges, no source shared between train and test except
region splits, whose crops keep a guard band apart)."""

import copy
import hashlib
import re

import numpy as np
import pydicom
import pytest
import torch

from mmtok import MmtokError
from mmtok_plugin_medimg import datasets as D
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return D.build_dataset(size=64, channels=3)


def _data_md_sha256() -> dict[str, str]:
    """path -> sha256 from the ```sha256 block of DATA.md (sha256sum format)."""
    text = (D.DATA_DIR / "DATA.md").read_text()
    block = re.search(r"```sha256\n(.*?)```", text, re.S)
    assert block, "DATA.md has no ```sha256 block"
    out = {}
    for line in block.group(1).strip().splitlines():
        digest, path = line.split()
        out[path.removeprefix("./")] = digest
    return out


def test_data_files_match_data_md():
    listed = _data_md_sha256()
    shipped = {p.relative_to(D.DATA_DIR).as_posix() for p in D.DATA_DIR.rglob("*") if p.is_file()} - {"DATA.md"}
    assert shipped == set(listed), f"not in DATA.md: {shipped - set(listed)}; missing files: {set(listed) - shipped}"
    for path, digest in listed.items():
        assert hashlib.sha256((D.DATA_DIR / path).read_bytes()).hexdigest() == digest, path
    assert {s.file for s in D.SOURCES} <= shipped
    total = sum((D.DATA_DIR / p).stat().st_size for p in shipped)
    assert total < 9_000_000, f"data/ grew to {total / 1e6:.1f} MB"


def test_derived_echo_is_a_valid_multiframe_dicom():
    ds = pydicom.dcmread(D.DATA_DIR / "echo_color3d_24f_half.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert (int(ds.NumberOfFrames), ds.Rows, ds.Columns, ds.Modality) == (24, 240, 320, "US")
    assert ds.pixel_array.shape == (24, 240, 320, 3)
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID != ds.SOPInstanceUID


def test_build_is_deterministic(data):
    again = D.build_dataset(size=64, channels=3)
    assert torch.equal(data.pixels, again.pixels)
    assert (data.source, data.split, data.kind, data.box) == (again.source, again.split, again.kind, again.box)


@pytest.mark.parametrize("size, channels", [(64, 3), (28, 1)])
def test_shapes_and_values(data, size, channels):
    d = data if (size, channels) == (64, 3) else D.build_dataset(size=size, channels=channels)
    n = len(d)
    assert d.pixels.shape == (n, channels, size, size) and d.pixels.dtype == torch.float32
    assert float(d.pixels.min()) >= 0.0 and float(d.pixels.max()) <= 1.0
    assert d.labels.dtype == torch.int64 and d.labels.shape == (n,)
    assert all(len(x) == n for x in (d.source, d.split, d.kind, d.box, d.index))
    assert set(d.kind) == {"whole", "crop", "frame", "slice", "tile"}
    assert 600 <= n <= 1200
    assert d.source == data.source and d.split == data.split  # same images at every size
    assert (d.pixels.flatten(1).std(1) > 0.005).float().mean() > 0.95  # images, not blank padding


def test_every_present_modality_has_train_and_test(data):
    present = data.present_modalities()
    assert set(present) == set(IMAGING_MODALITIES) - {"oct"}  # no OCT exists here
    for m, c in data.counts().items():
        assert c["train_images"] > 0 and c["test_images"] > 0, m
        assert 40 <= c["train_images"] + c["test_images"] <= 150, (m, c)
    assert "oct" in data.describe_counts()


def test_no_source_in_both_splits_except_region_split(data):
    train = {s for s, p in zip(data.source, data.split) if p == "train"}
    test = {s for s, p in zip(data.source, data.split) if p == "test"}
    shared = train & test
    assert shared, "the single-source modalities are region-split, so they appear in both"
    assert all(data.rules[s]["rule"] == "region" for s in shared)
    assert {data.rules[s]["modality"] for s in shared} == {"nuclear", "fundus", "clinical_photo"}


def test_region_split_crops_keep_the_guard_band(data):
    for sid, rule in data.rules.items():
        if rule["rule"] != "region":
            continue
        axis, guard = rule["axis"], rule["guard"]
        assert guard > 0
        boxes = {"train": [], "test": []}
        for s, p, b in zip(data.source, data.split, data.box):
            if s == sid:
                assert b is not None, "no whole image of a region-split source"
                boxes[p].append(b)
        assert len(boxes["train"]) >= 15 and len(boxes["test"]) >= 10
        train_end = max(b[axis] + b[2 + axis] for b in boxes["train"])
        test_start = min(b[axis] for b in boxes["test"])
        assert test_start - train_end >= guard, (sid, train_end, test_start, guard)


def test_check_split_catches_leaks(data):
    D.check_split(data)
    # a test crop moved onto a training crop of a region-split source
    leak = copy.copy(data)
    leak.box = list(data.box)
    i = next(k for k, (s, p) in enumerate(zip(data.source, data.split)) if s == "retina" and p == "test")
    j = next(k for k, (s, p) in enumerate(zip(data.source, data.split)) if s == "retina" and p == "train")
    r, c, h, w = data.box[j]
    leak.box[i] = (r + h + 1, c, h, w)  # 1 px below a training crop: inside the guard band
    with pytest.raises(MmtokError, match="guard band"):
        D.check_split(leak)
    # one image of a held-out file relabelled as training
    leak = copy.copy(data)
    leak.split = list(data.split)
    k = data.source.index("CT_small")
    assert data.split[k] == "test"
    leak.split[k] = "train"
    with pytest.raises(MmtokError, match="both train and test"):
        D.check_split(leak)


def test_auto_rule_holds_out_every_third_sorted_source():
    split = D.auto_split()
    assert split["RG3_J2KI"] == "test" and split["RG1_J2KI"] == "train"
    by_group: dict[str, list[str]] = {}
    for sid, s in split.items():
        by_group.setdefault(sid.split("/")[0] if "/" in sid else "files", []).append(s)
    for group in ("pathmnist", "dermamnist", "breastmnist"):
        share = by_group[group].count("test") / len(by_group[group])
        assert 0.3 <= share <= 0.36, (group, share)
    assert "dermamnist/class3" not in split  # the same image as montage tile 1, used once


def test_block_split_keeps_frames_apart():
    table = [D.Source("emri_small.dcm", "dicom", "mr", "emri_small", split="block", layout="frames",
                      indices=tuple(range(10)), block=D.BlockSplit(test_frac=0.3, guard=2))]
    d = D.build_dataset(size=28, channels=1, sources=table)
    train = [i for i, s in zip(d.index, d.split) if s == "train"]
    test = [i for i, s in zip(d.index, d.split) if s == "test"]
    assert train == [0, 1, 2, 3, 4] and test == [7, 8, 9]
    leak = copy.copy(d)
    leak.split = ["test" if i == 4 else s for i, s in zip(d.index, d.split)]
    leak.index = list(d.index)
    with pytest.raises(MmtokError, match="guard frames"):
        D.check_split(leak)


def test_table_modality_must_match_the_file():
    table = [D.Source("CT_small.dcm", "dicom", "mr", "CT_small")]
    with pytest.raises(MmtokError, match="the file says 'ct'"):
        D.build_dataset(size=28, sources=table)


def test_counts_add_up(data):
    counts = data.counts()
    assert sum(c["train_images"] + c["test_images"] for c in counts.values()) == len(data)
    for m, c in counts.items():
        k = IMAGING_MODALITIES.index(m)
        for split in ("train", "test"):
            idx = [i for i in range(len(data)) if data.labels[i] == k and data.split[i] == split]
            assert c[f"{split}_images"] == len(idx)
            assert c[f"{split}_sources"] == len({data.source[i] for i in idx})
    train, test = data.subset("train"), data.subset("test")
    assert len(train) + len(test) == len(data) and set(train.split) == {"train"}
    assert np.isclose(len(test) / len(data), 0.34, atol=0.08)
    table = data.describe_counts()
    assert len(table.splitlines()) == 2 + len(IMAGING_MODALITIES) + 1
    total = table.splitlines()[-1]
    assert f"**{len(train)}**" in total and f"**{len(test)}**" in total
