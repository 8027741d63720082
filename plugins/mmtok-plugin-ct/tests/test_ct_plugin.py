"""The plugin passes mmtok's conformance kit and is discovered through its entry point."""

import mmtok
from mmtok.testing import check_plugin
from mmtok_plugin_ct import plugin

MODALITIES = ["ct_volume", "anatomy_mask", "report_text"]
CODECS = ["ct-volume-fsq", "ct-volume-continuous", "anatomy-mask-regions", "anatomy-mask-composition",
          "report-words", "report-wordllama"]
PRETRAINED = ["ct/abdomen-ct-fsq", "ct/abdomen-report-words", "ct/abdomen-mask-regions"]
SMALL = {"size": [8, 32, 32], "patch": [4, 16, 16], "spacing_mm": [3.0, 1.5, 1.5]}


def test_conformance_kit():
    """Every codec at a small grid (the default 64x512x512 one is checked in test_ct_codecs)."""
    small = {c: SMALL for c in CODECS if not c.startswith("report-")}
    checked = check_plugin(plugin, batch_size=2, codec_overrides=small)
    assert checked == [*(f"modality:{m}" for m in MODALITIES), *(f"codec:{c}" for c in CODECS),
                       *(f"pretrained:{p}" for p in PRETRAINED), "reader:nifti", "reader:dicom", "reader:report-text", "bundle:ct-encoder"]


def test_discovered_through_entry_point():
    manager = mmtok.get_plugin_manager()
    info = {p.name: p for p in manager.plugins}["ct"]
    assert info.ok, info.errors
    assert info.package == "mmtok-plugin-ct"
    assert info.provides["modalities"] == MODALITIES
    assert info.provides["codecs"] == CODECS
    assert info.provides["readers"] == ["nifti", "dicom", "report-text"]
    assert info.provides["heads"] == ["ct-alignment"]
    assert info.provides["bundles"] == ["ct-encoder"]
    assert info.provides["pretrained"] == PRETRAINED
    assert info.provides["sample_checks"] == ["ct-mask-on-volume-grid"]
    assert manager.reader_for("scan.nii.gz").name == "nifti"
    assert manager.reader_for("SCAN.NII").name == "nifti"
    assert manager.reader_for("report.txt").name == "report-text"


def test_wheel_installs_and_is_discovered(tmp_path):
    """`pip wheel` gives mmtok_plugin_ct-*.whl; installed (not editable), `mmtok plugins` lists
    the CT modalities, codecs, readers, head and bundle, and the label table and the pretrained
    codecs ship with it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "dist"), str(root)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    assert wheel.name.startswith("mmtok_plugin_ct-0.1.0-")
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    listed = subprocess.run([sys.executable, "-m", "mmtok.cli", "plugins", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    ct = {r["name"]: r for r in json.loads(listed.stdout)}["ct"]
    assert not ct["errors"]
    assert ct["provides"]["modalities"] == MODALITIES and ct["provides"]["codecs"] == CODECS
    assert ct["provides"]["heads"] == ["ct-alignment"] and ct["provides"]["bundles"] == ["ct-encoder"]
    assert ct["provides"]["pretrained"] == PRETRAINED
    code = ("import mmtok, mmtok_plugin_ct as c\nfrom mmtok_plugin_ct.regions import totalseg_label_names\n"
            "print(c.__file__)\nprint(len(totalseg_label_names()))\nm = mmtok.get_plugin_manager()\n"
            "print(m.pretrained('ct/abdomen-ct-fsq').path)\nprint(m.load_pretrained('ct/abdomen-ct-fsq').num_tokens)\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    module_file, labels, pretrained_dir, tokens = run.stdout.split("\n")[:4]
    assert module_file.startswith(str(site)) and labels == "117"
    assert pretrained_dir.startswith(str(site)) and tokens == "1568"  # the checkpoints ship in the wheel
