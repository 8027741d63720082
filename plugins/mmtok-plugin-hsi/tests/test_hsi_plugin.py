"""The plugin is discovered through its entry point, installs as a wheel, resolves the
registry's ``hsi-guided`` bundle, and `mmtok encode` / `mmtok decode` run on the example
manifest (real Houston 2013 pixels as .mat, ENVI and .npz; a third without LiDAR)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mmtok

ROOT = Path(__file__).resolve().parents[3]
PLUGIN = ROOT / "plugins" / "mmtok-plugin-hsi"  # its registry.yaml: the plugin's streams and bundle
EXAMPLE = ROOT / "examples" / "hsi"
MODALITIES = ["hsi_cube", "infrared_image", "autofluorescence_image", "thickness_map", "elevation_map"]


def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "mmtok.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_discovered_through_entry_point():
    manager = mmtok.get_plugin_manager()
    info = {p.name: p for p in manager.plugins}["hsi"]
    assert info.ok, info.errors
    assert info.package == "mmtok-plugin-hsi"
    assert info.provides["modalities"] == MODALITIES
    assert info.provides["readers"] == ["matlab", "envi"]
    assert info.provides["heads"] == ["hsi-guidance"]
    assert info.provides["bundles"] == ["hsi-guided"]
    assert info.provides["commands"] == ["hsi"]
    assert manager.reader_for("scene.MAT").name == "matlab"
    assert manager.reader_for("scene.hdr").name == "envi"


def test_registry_resolves_the_bundle():
    registry = mmtok.Registry.load(PLUGIN / "registry.yaml")
    bundle = registry.bundle("hsi-guided") if hasattr(registry, "bundle") else registry.bundles["hsi-guided"]
    assert "tok_hsi_cube" in str(bundle) and "hsi-guidance" in str(bundle)
    out = _cli("registry", "check", "--registry", str(PLUGIN / "registry.yaml"), cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tok_hsi_cube" in out.stdout and "tok_elevation_map" in out.stdout


def test_encode_and_decode_the_example_manifest(tmp_path):
    """Codecs fitted for a few steps (the example's run.py fits them properly): the pipeline, not the quality."""
    registry = (EXAMPLE / "registry.yaml").read_text()
    for stream in ("tok_hsi_cube", "tok_elevation_map"):
        registry = registry.replace(f"checkpoint: codecs/{stream}", f"checkpoint: {tmp_path / stream}")
    (tmp_path / "registry.yaml").write_text(registry)
    reg = str(tmp_path / "registry.yaml")
    for stream in ("tok_hsi_cube", "tok_elevation_map"):
        out = _cli("fit-codec", "manifest.json", "--registry", reg, "--stream", stream, "--out", str(tmp_path / stream),
                   "--steps", "5", "--batch-size", "16", "--quiet", cwd=EXAMPLE)
        assert out.returncode == 0, out.stdout + out.stderr
    out = _cli("encode", "manifest.json", "--registry", reg, "--out", str(tmp_path / "tok"), "--quiet", cwd=EXAMPLE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| tok_hsi_cube | 96 | 1152 |" in out.stdout and "| tok_elevation_map | 64 | 64 |" in out.stdout
    index = json.loads((tmp_path / "tok" / "index.json").read_text())
    formats = {s["id"]: s["metadata"]["format"] for s in json.loads((EXAMPLE / "manifest.json").read_text())["samples"]}
    assert len(index["samples"]) == 96 and set(formats.values()) == {"mat", "envi", "npz"}
    picks = [next(i for i, f in formats.items() if f == fmt) for fmt in ("envi", "npz")]  # .mat: encoded above
    for sample in picks:
        out = _cli("decode", str(tmp_path / "tok"), "--sample", sample, "--stream", "tok_hsi_cube", "--out",
                   str(tmp_path / f"{sample}.npy"), "--manifest", "manifest.json", cwd=EXAMPLE)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "HSICube.reflectance, shape (144, 1, 1)" in out.stdout
        assert "reconstruction error vs manifest.json: rmse" in out.stdout and "relative rmse" in out.stdout


def test_wheel_installs_and_is_discovered(tmp_path):
    """`pip wheel` gives mmtok_plugin_hsi-*.whl; installed (not editable), `mmtok plugins` lists the
    HSI modalities, codecs, readers, head and bundle, and the real data ships with it."""
    root = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "dist"), str(root)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    assert wheel.name.startswith("mmtok_plugin_hsi-0.1.0-")
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    listed = _cli("plugins", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    hsi = {r["name"]: r for r in json.loads(listed.stdout)}["hsi"]
    assert hsi["provides"]["modalities"] == MODALITIES and hsi["provides"]["bundles"] == ["hsi-guided"]
    for name in ("indian_pines.npz", "jasper_ridge.npz", "HSI_TrSet.mat", "DATA.md"):
        assert (site / "mmtok_plugin_hsi" / "data" / name).is_file(), name
