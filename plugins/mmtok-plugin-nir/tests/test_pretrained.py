"""The pretrained codecs shipped in the wheel (scripts/fit_pretrained.py): they load offline, are the
checkpoints their metrics.json describes, and encode the example manifest (examples/spectra: held-out
Corn and Tablet spectra) with no fit step, reproducing the held-out error the script measured."""

import json
from pathlib import Path

import pytest
import torch

import mmtok
from mmtok.plugins import get_plugin_manager
from mmtok_plugin_nir.plugin import PRETRAINED, PRETRAINED_DIR

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "spectra"


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_codecs_load_and_are_what_their_metrics_describe(name):
    folder = PRETRAINED_DIR / PRETRAINED[name][0]
    metrics = json.loads((folder / "metrics.json").read_text())
    codec = get_plugin_manager().load_pretrained(name)
    assert metrics["pretrained"] == name and metrics["codec"] == codec.name
    assert codec.fingerprint() == metrics["fingerprint"]  # the very weights that were measured
    assert metrics["fitted_on"]["samples"] > 0 and metrics["fitted_on"]["data"]
    assert sum(f.stat().st_size for f in folder.iterdir()) < 1_000_000  # small enough for a wheel


@pytest.mark.skipif(not (EXAMPLE / "manifest.json").is_file(), reason="examples/spectra is not in this checkout")
def test_example_manifest_encodes_straight_after_install(tmp_path):
    registry = mmtok.Registry.load(EXAMPLE / "registry.yaml")
    assert registry.check() == []
    out = tmp_path / "tokens"
    mmtok.encode_manifest(EXAMPLE / "manifest.json", out, registry_path=EXAMPLE / "registry.yaml", progress=False)
    shards = mmtok.TokenShards(out)
    assert len(shards) == 80 and not shards.index["skipped"]
    manifest, manager = mmtok.Manifest.load(EXAMPLE / "manifest.json"), get_plugin_manager()
    codec = registry.codec("tok_nir_spectrum")
    corn = [s for s in manifest.samples if s.id.startswith("corn-")]
    assert len(corn) == 60  # the Corn test rows on 3 instruments: held out when the codec was fitted
    err, ref = 0.0, 0.0
    for s in corn:
        m = manifest.load_modality(s, "nir_spectrum", manager)
        target = codec.reconstruction_target(m)
        decoded = codec.decode_like(shards.stream(s.id, "tok_nir_spectrum"), m).values
        err += float(((decoded - target) ** 2).sum())
        ref += target.numel()
    rmse = (err / ref) ** 0.5
    measured = json.loads((PRETRAINED_DIR / "corn-tablet-spectrum-fsq" / "metrics.json").read_text())
    assert rmse == pytest.approx(measured["test"]["corn"]["rmse"], rel=1e-3)  # what fit_pretrained.py measured
    assert rmse < 0.05  # SNV units: 3 % of the spectrum's spread
    props = registry.codec("tok_nir_properties")
    m = manifest.load_modality(corn[0], "nir_properties", manager)
    decoded = props.decode(shards.stream(corn[0].id, "tok_nir_properties")).values
    assert torch.allclose(decoded, m.values, rtol=0.02)  # within a quantile bin of the lab values
