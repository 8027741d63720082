"""The plugin is discovered through its entry point, installs as a wheel (shipped model and data
inside), resolves the registry's ``medimg-modalities`` bundle, passes the conformance kit, and
`mmtok encode` / `mmtok decode` run on the example manifest mixing DICOM, PNG / JPEG, SVS and NIfTI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mmtok
from mmtok.testing import check_codec, check_modality

ROOT = Path(__file__).resolve().parents[3]
PLUGIN = ROOT / "plugins" / "mmtok-plugin-medimg"  # its registry.yaml: the plugin's streams and bundle
EXAMPLE = ROOT / "examples" / "medimg"
READERS = ["dicom-image", "image", "slide", "nifti-slice", "medmnist"]
CODECS = ["medical-image-fsq", "medimg-vae-continuous", "medimg-vae-fsq"]


def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "mmtok.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_discovered_through_entry_point():
    manager = mmtok.get_plugin_manager()
    info = {p.name: p for p in manager.plugins}["medimg"]
    assert info.ok, info.errors
    assert info.package == "mmtok-plugin-medimg"
    assert info.provides["modalities"] == ["medical_image"]
    assert info.provides["readers"] == READERS
    assert info.provides["codecs"] == CODECS
    assert info.provides["bundles"] == ["medimg-modalities"]
    assert info.provides["pretrained"] == ["medimg/disentangled-vae-fsq"]
    assert info.provides["commands"] == ["medimg"]
    for name, reader in (("scan.DCM", "dicom-image"), ("a.png", "image"), ("b.JPG", "image"), ("slide.svs", "slide"),
                         ("x.tiff", "slide")):
        assert manager.reader_for(name).name == reader


def test_modality_and_codecs_conform():
    from mmtok_plugin_medimg import MedicalImage2D

    check_modality(MedicalImage2D)
    manager = mmtok.get_plugin_manager()
    for name in CODECS:
        torch.manual_seed(0)
        check_codec(manager.build_codec(name))
    check_codec(manager.load_pretrained("medimg/disentangled-vae-fsq"))


def test_patch_codec_brings_any_image_to_its_geometry():
    """Grey and RGB images of any size and aspect -> 3 x 64 x 64 (or 1 x 28 x 28 when configured)."""
    from mmtok_plugin_medimg import MedicalImage2D

    manager = mmtok.get_plugin_manager()
    codec = manager.build_codec("medical-image-fsq")
    grey = MedicalImage2D(pixels=torch.rand(2, 1, 100, 37))
    assert codec.preprocess(grey).shape == (2, 3, 64, 64)
    small = manager.build_codec("medical-image-fsq", {"channels": 1, "size": [28, 28], "patch": [7, 7]})
    stream = small.encode(MedicalImage2D(pixels=torch.rand(3, 3, 50, 50)))
    assert stream.num_tokens == 16
    assert small.decode(stream).pixels.shape == (3, 1, 28, 28)


def test_registry_resolves_the_bundle():
    out = _cli("registry", "check", "--registry", str(PLUGIN / "registry.yaml"), cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tok_medical_image" in out.stdout and "tok_medimg_latent" in out.stdout


def test_encode_and_decode_the_example_manifest(tmp_path):
    """DICOM (single / multi-frame, JPEG 2000), PNG / JPEG, SVS regions and NIfTI slices -> shards; the
    patch codec is fitted for a few steps (run.py fits it properly), the VAE stream is the shipped model."""
    registry = (EXAMPLE / "registry.yaml").read_text().replace("checkpoint: codecs/tok_medical_image",
                                                              f"checkpoint: {tmp_path / 'patch'}")
    (tmp_path / "registry.yaml").write_text(registry)
    reg = str(tmp_path / "registry.yaml")
    out = _cli("fit-codec", "manifest.json", "--registry", reg, "--stream", "tok_medical_image", "--out",
               str(tmp_path / "patch"), "--steps", "5", "--batch-size", "8", "--quiet", cwd=EXAMPLE)
    assert out.returncode == 0, out.stdout + out.stderr
    out = _cli("encode", "manifest.json", "--registry", reg, "--out", str(tmp_path / "tok"), "--quiet", cwd=EXAMPLE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| tok_medical_image | 28 | 1792 |" in out.stdout and "| tok_medimg_latent | 28 | 112 |" in out.stdout
    kinds = {Path(s["modalities"]["medical_image"]["path"]).suffix
             for s in json.loads((EXAMPLE / "manifest.json").read_text())["samples"]}
    assert kinds == {".dcm", ".png", ".jpeg", ".svs", ".nii"}
    for sample, stream in (("emri_frame3", "tok_medimg_latent"), ("he_region_1", "tok_medical_image"),
                           ("mr_anatomical_slice12", "tok_medimg_latent")):
        out = _cli("decode", str(tmp_path / "tok"), "--sample", sample, "--stream", stream, "--out",
                   str(tmp_path / f"{sample}.npy"), "--manifest", "manifest.json", cwd=EXAMPLE)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "MedicalImage2D.pixels, shape (3, 64, 64)" in out.stdout
        assert "reconstruction error vs manifest.json: rmse" in out.stdout
        assert np.load(tmp_path / f"{sample}.npy").shape == (3, 64, 64)


def test_a_frame_option_out_of_range_is_one_line_naming_the_sample(tmp_path):
    manifest = {"samples": [{"id": "echo", "modalities": {"medical_image": {
        "path": "data/emri_small.dcm", "options": {"frame": 12}}}},
        {"id": "nifti", "modalities": {"medical_image": {"path": "data/mr_anatomical.nii", "reader": "nifti-slice",
                                                          "options": {"slice": 3, "plane": "axial"}}}}]}
    (EXAMPLE / ".bad_manifest.json").write_text(json.dumps(manifest))
    try:
        out = _cli("validate", ".bad_manifest.json", cwd=EXAMPLE)
    finally:
        (EXAMPLE / ".bad_manifest.json").unlink()
    assert out.returncode != 0
    assert "sample 'echo', medical_image" in out.stdout + out.stderr and "12" in out.stdout + out.stderr
    assert "takes no option(s) ['plane']" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_classify_with_the_shipped_model_on_files_training_never_saw():
    """Files that are held-out sources of the shipped model's data set (never trained on), DICOM and
    JPEG: one line each with the predicted modality and its centroid distance, and most are right."""
    from mmtok_plugin_medimg.datasets import build_dataset

    data = build_dataset()
    held_out = {s for s, sp in zip(data.source, data.split) if sp == "test"}
    trained = {s for s, sp in zip(data.source, data.split) if sp == "train"}
    files = {"data/ct_small.dcm": ("CT_small", "ct"), "data/xr_leg_rg3.dcm": ("RG3_J2KI", "xray"),
             "data/path_class7.jpeg": ("pathmnist/class7", "pathology"),
             "data/breast_us_class1.jpeg": ("breastmnist/class1", "ultrasound"),
             "data/derma_class5.jpeg": ("dermamnist/class5", "dermatoscopy")}
    assert {src for src, _ in files.values()} <= held_out - trained
    out = _cli("medimg", "classify", *files, cwd=EXAMPLE)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(files)
    right = 0
    for line, (f, (_, truth)) in zip(lines, files.items()):
        assert line.startswith(f + ": ") and "distance " in line
        right += line.split(": ")[1].split()[0] == truth
    assert right >= 3, out.stdout


def test_wheel_installs_and_is_discovered(tmp_path):
    """`pip wheel` gives mmtok_plugin_medimg-*.whl; installed (not editable), `mmtok plugins` lists it, and
    the data and the shipped model come with it."""
    root = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "dist"), str(root)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    assert wheel.name.startswith("mmtok_plugin_medimg-0.1.0-")
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    listed = _cli("plugins", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    med = {r["name"]: r for r in json.loads(listed.stdout)}["medimg"]
    assert med["provides"]["modalities"] == ["medical_image"] and med["provides"]["bundles"] == ["medimg-modalities"]
    package = site / "mmtok_plugin_medimg"
    for name in ("data/DATA.md", "data/CT_small.dcm", "pretrained/disentangled-vae-fsq/config.json",
                 "pretrained/disentangled-vae-fsq/model.safetensors"):
        assert (package / name).is_file(), name


@pytest.mark.parametrize("size", [28, 64])
def test_vae_codec_at_28_and_64_px(size):
    from mmtok_plugin_medimg import MedicalImage2D

    codec = mmtok.get_plugin_manager().build_codec("medimg-vae-continuous", {"vae": {"image_size": size}})
    x = MedicalImage2D(pixels=torch.rand(2, 1, 40, 30))
    stream = codec.encode(x)
    assert stream.grid == (2,) and stream.values.shape == (2, 2, 8)
    out = codec.decode(stream, imaging_modality=torch.tensor([0, 5]))
    assert out.pixels.shape == (2, 3, size, size) and out.labels == ["xray", "pathology"]
    with pytest.raises(mmtok.CodecError, match="no modality centroids"):  # untrained: no head to choose
        codec.decode(stream)
