"""CT codecs on real data: the default 64x512x512 geometry, mask composition, report words,
and `mmtok encode` / `mmtok decode` on the example manifest (NIfTI + DICOM)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmtok
from mmtok import ModalityError
from mmtok_plugin_ct import AnatomyMask, CTVolume, ReportText, read_dicom_series, read_nifti
from mmtok_plugin_ct.text import SEP, step_index, step_regions, tokenize

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "ct"
DATA = EXAMPLE / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs the repository's examples/ct")


def test_default_geometry_on_a_real_dicom_series():
    """The seed's 64x512x512 input at 3x0.75x0.75 mm: 16x32x32 = 16384 tokens per volume."""
    vol = CTVolume.from_record(read_dicom_series(DATA / "dicom_series"))
    codec = mmtok.get_plugin_manager().build_codec("ct-volume-fsq").eval()
    codec.fit_statistics(vol)
    stream = codec.encode(vol)
    assert stream.grid == (16, 32, 32) and stream.ids.shape == (1, 16384) and stream.vocab_size == 1000
    out = codec.decode(stream)
    assert out.hu.shape == (1, 1, 64, 512, 512)
    assert out.spacing_mm.tolist() == [[3.0, 0.75, 0.75]]
    assert -160.0 - 1e-3 <= float(out.hu.min()) and float(out.hu.max()) <= 240.0 + 1e-3  # soft-tissue window


def test_mask_codec_composition_and_majority():
    labels = torch.zeros(1, 1, 4, 16, 32, dtype=torch.long)
    labels[..., :16] = 5  # liver fills the left patch
    labels[0, 0, :2, :, 16:] = 1  # spleen half of the right one
    m = AnatomyMask(labels=labels, spacing_mm=torch.ones(1, 3))
    manager = mmtok.get_plugin_manager()
    geometry = {"size": [4, 16, 32], "patch": [4, 16, 16], "spacing_mm": [1.0, 1.0, 1.0]}
    comp = manager.build_codec("anatomy-mask-composition", geometry)
    values = comp.encode(m).values
    assert values.shape == (1, 2, 20)
    assert values[0, 0, 1] == 1.0  # group 1 = liver
    assert values[0, 1, 0] == 0.5 and values[0, 1, 2] == 0.5  # background / spleen
    ids = manager.build_codec("anatomy-mask-regions", geometry).encode(m).ids
    assert ids[0, 0] == 1
    real = AnatomyMask.from_record(read_nifti(DATA / "example_seg_dicom.nii.gz"))
    codec = manager.build_codec("anatomy-mask-regions", {"size": [16, 224, 224], "patch": [4, 16, 16],
                                                          "spacing_mm": [3.0, 1.5, 1.5]})
    decoded = codec.decode(codec.encode(real))
    target = codec.reconstruction_target(real)
    agree = float((decoded.labels == target).float().mean())
    assert 0.8 < agree < 1.0  # blocky, but mostly right


def test_report_words_round_trip_and_steps():
    reports = [(EXAMPLE / "reports" / f).read_text() for f in ("abdomen_nifti.txt", "abdomen_dicom.txt")]
    batch = ReportText.from_texts(reports)
    codec = mmtok.get_plugin_manager().build_codec("report-words", {"vocab_size": 128, "num_tokens": 192})
    codec.fit_statistics(batch)
    stream = codec.encode(batch)
    back = codec.decode(stream).texts()
    assert [tokenize(t) for t in back] == [tokenize(t) for t in reports]  # lines kept too
    assert back[1].splitlines()[1] == "liver : moderate portion , about 5 % of the slab , right mid part of the field ."
    steps = step_index(stream.ids)
    assert int(steps.max()) == len(reports[0].strip().splitlines()) - 1
    assert bool((steps[stream.ids == SEP] == -1).all())
    regions = step_regions(reports, 8)
    assert regions[0, :3].tolist() == [-1, 1, 13]  # impression, liver, bowel
    short = mmtok.get_plugin_manager().build_codec("report-words", {"num_tokens": 8, "truncate": False})
    short.fit_statistics(batch)
    with pytest.raises(ModalityError, match="more than num_tokens=8"):
        short.encode(batch)
    unfitted = mmtok.get_plugin_manager().build_codec("report-words")
    with pytest.raises(mmtok.MmtokError, match="vocabulary not fitted"):
        unfitted.encode(batch)


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"ct_example_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_held_out_slab_shares_no_voxel_with_training():
    """examples/ct/ct_data.py: the boxes `split_crops` cuts for training and for the held-out slab
    of the NIfTI case cover disjoint voxels (crop counts of the README), and a crop holds the
    voxels of its box."""
    data = _example("ct_data")
    make_crops = data.make_crops
    data.make_crops = lambda case, boxes, size: (case, boxes)  # the boxes only (reports take a minute)
    (nifti, train), (same, test), (dicom, cross) = data.split_crops()
    assert nifti is same and dicom.name == "abdomen_dicom"
    covered = {}
    for name, boxes in (("train", train), ("test", test)):
        covered[name] = torch.zeros(nifti.hu.shape, dtype=torch.bool)
        for z, y, x in boxes:
            covered[name][z:z + data.CROP[0], y:y + data.CROP[1], x:x + data.CROP[2]] = True
    assert not (covered["train"] & covered["test"]).any()
    assert (len(train), len(test), len(cross)) == (5974, 101, 286)
    crops = make_crops(nifti, test, data.CROP)
    for i, (case, z, y, x) in enumerate(crops.origin):
        box = (slice(z, z + data.CROP[0]), slice(y, y + data.CROP[1]), slice(x, x + data.CROP[2]))
        assert case == "abdomen_nifti" and torch.equal(crops.hu[i, 0], nifti.hu[box]), i
    assert len(set(crops.reports)) == 99


def test_example_end_to_end(tmp_path):
    """Fit (briefly) -> `mmtok encode` the NIfTI and the DICOM case -> `mmtok decode` with the
    reconstruction error -> the ct-encoder bundle trained on crop tokens with its head ->
    retrieval on held-out crops (a few steps: the pipeline, not the numbers)."""
    errors = _example("fit_codecs").main(["--out", str(tmp_path), "--steps", "20"])
    assert errors["tok_ct_volume"]["samples"] == 2
    assert errors["tok_ct_volume"]["rmse"] < 200  # HU inside a 400 HU window, after 20 steps
    out = subprocess.run([sys.executable, "-m", "mmtok.cli", "decode", str(tmp_path / "tokens"),
                          "--sample", "abdomen_dicom", "--stream", "tok_ct_volume", "--out",
                          str(tmp_path / "dicom.npy"), "--manifest", str(EXAMPLE / "manifest.json")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "shape (1, 32, 224, 224)" in out.stdout
    assert "reconstruction error vs manifest.json: rmse" in out.stdout
    result = _example("bundle").main(["--out", str(tmp_path / "bundle"), "--registry",
                                      str(tmp_path / "registry_crops.yaml"), "--steps", "3", "--every", "60"])
    assert result["held_out"]["n"] == 101
    metrics = [json.loads(line) for line in (tmp_path / "bundle" / "run-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert any("head/ct-alignment" in m for m in metrics)
