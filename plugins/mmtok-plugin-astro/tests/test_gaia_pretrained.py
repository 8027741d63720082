"""The real Gaia DR3 sources (nulls kept absent, never filled in), the pretrained codecs shipped
in the wheel (load, reproduce, encode), and the multisurvey example's partial streams."""

import hashlib
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mmtok
from mmtok import Manifest, ModalityError, Registry, TokenShards
from mmtok.cli import main as mmtok_main
from mmtok_plugin_astro import (GAIA_CSV, GaiaAstrometry, GaiaPhotometry, HSCImage, center_crop,
                                gaia_split, load_gaia, load_hsc_cutouts, plugin, read_gaia_catalog)

PLUGIN = Path(__file__).resolve().parents[1]
EXAMPLE = PLUGIN.parents[1] / "examples" / "multisurvey"
NULL_PARALLAX = "Gaia DR3 6636090339112400000"  # row 1: a 2-parameter solution, no parallax / pm


def _fit_script():
    spec = importlib.util.spec_from_file_location("astro_fit_pretrained", PLUGIN / "scripts" / "fit_pretrained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the real Gaia sources
def test_gaia_catalog_columns_and_nulls():
    cat = read_gaia_catalog()
    assert len(cat["designation"]) == 50
    # 19-digit ids stay exact (float64 would not keep them)
    assert cat["source_id"].dtype == np.int64
    assert [f"Gaia DR3 {s}" for s in cat["source_id"]] == list(cat["designation"])
    assert int(np.isnan(cat["parallax"]).sum()) == 6 and int(np.isnan(cat["pmra"]).sum()) == 6
    assert not np.isnan(cat["phot_bp_mean_mag"]).any()
    assert cat["phot_g_mean_mag"].min() == pytest.approx(15.2231, abs=1e-3)
    assert cat["phot_g_mean_mag"].max() == pytest.approx(21.2608, abs=1e-3)


def test_gaia_batches_and_split():
    names = {}
    for modality, n_all, n_train in ((GaiaPhotometry, 50, 40), (GaiaAstrometry, 44, 34)):
        ids, batch = load_gaia(modality)
        assert len(ids) == n_all and batch.values.shape == (n_all, 3)
        assert torch.isfinite(batch.values).all()
        train, test = load_gaia(modality, "train")[0], load_gaia(modality, "test")[0]
        assert (len(train), len(test)) == (n_train, 10) and not set(train) & set(test)
        names[modality.name] = set(ids)
    assert NULL_PARALLAX in names["gaia_photometry"] and NULL_PARALLAX not in names["gaia_astrometry"]
    assert gaia_split("test").sum() == 10 and (gaia_split("train") ^ gaia_split("test")).all()


def test_null_is_refused_with_sample_and_column():
    cat = read_gaia_catalog()
    i = list(cat["designation"]).index(NULL_PARALLAX)
    row = {c: cat[c][i] for c in GaiaAstrometry.columns}
    with pytest.raises(ModalityError, match=r"sample 'g1': GaiaAstrometry: column\(s\) \['parallax', "
                                            r"'pmra', 'pmdec'\] are null.*leave 'gaia_astrometry' out"):
        GaiaAstrometry.from_record(row, sample_id="g1")
    with pytest.raises(ModalityError, match=r"sample 'g1': GaiaPhotometry: column\(s\) \['phot_bp_mean_mag'\] "
                                            r"are null"):
        GaiaPhotometry.from_record({"phot_g_mean_mag": 20.1, "phot_bp_mean_mag": "",
                                    "phot_rp_mean_mag": 19.0}, sample_id="g1")
    with pytest.raises(ModalityError, match=r"GaiaAstrometry.from_catalog: 6 row\(s\) \[1, 3, 8, 26, 47, 48\]"):
        GaiaAstrometry.from_catalog(cat)


def test_manifest_entry_for_a_null_source_is_a_problem_naming_it(tmp_path):
    shutil.copyfile(GAIA_CSV, tmp_path / "gaia.csv")
    manifest = {"tables": {"gaia": {"path": "gaia.csv", "key": "designation"}},
                "samples": [{"id": "bad", "modalities": {"gaia_astrometry": {"table": "gaia", "row": NULL_PARALLAX}}},
                            {"id": "good", "modalities": {"gaia_photometry": {"table": "gaia", "row": NULL_PARALLAX}}}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    problems = Manifest.load(tmp_path / "manifest.json").validate()
    assert [(p.sample, p.key) for p in problems] == [("bad", "gaia_astrometry")]
    assert "['parallax', 'pmra', 'pmdec'] are null" in problems[0].reason


# ---------------------------------------------------------------- pretrained codecs
def test_pretrained_load_and_match_their_metrics():
    manager = mmtok.get_plugin_manager()
    assert sorted(manager.names("pretrained")) >= sorted(plugin.PRETRAINED)
    total = 0
    for name, (directory, _) in plugin.PRETRAINED.items():
        path = Path(manager.pretrained(name).path)
        assert path == plugin.PRETRAINED_DIR / directory
        metrics = json.loads((path / "metrics.json").read_text())
        codec = manager.load_pretrained(name)
        assert metrics["pretrained"] == name and codec.fingerprint() == metrics["fingerprint"]
        assert _sha256(path / "model.safetensors") == metrics["model_sha256"]
        total += sum(p.stat().st_size for p in path.iterdir())
    assert total < 3_000_000  # a few MB at most


def test_fit_script_reproduces_the_shipped_quantile_codecs(tmp_path):
    fit = _fit_script()  # quantile codecs: exact float64 quantiles, the same on any thread count

    def same(a, b):  # the weights are compared bit for bit; a float32 error metric may differ in
        # its last bits with the reduction order (thread count): floats agree to 1e-5 relative
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-5)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(map(same, a, b))
        return a == b

    def recipe(path):  # metrics.json without the torch version / machine it was written on
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("torch", "machine")}
    for directory in ("gaia-cone-photometry", "gaia-cone-astrometry", "hsc-cosmos-catalog"):
        codec, metrics = fit.fit_one(directory)
        digest = mmtok.write_pretrained(codec, tmp_path / directory, metrics)  # as the script writes
        shipped = plugin.PRETRAINED_DIR / directory
        assert digest == _sha256(shipped / "model.safetensors"), directory
        assert same(recipe(tmp_path / directory / "metrics.json"), recipe(shipped / "metrics.json")), directory
        assert (tmp_path / directory / "config.json").read_bytes() == (shipped / "config.json").read_bytes()
    # the FSQ codec takes ~25 s to refit: check that its recorded recipe is the script's
    hsc = json.loads((plugin.PRETRAINED_DIR / "hsc-cosmos-fsq24" / "metrics.json").read_text())
    assert (hsc["steps"], hsc["seed"], hsc["config_overrides"]) == (fit.HSC_STEPS, fit.SEED,
                                                                   fit.CODECS["hsc-cosmos-fsq24"][1])
    assert set(hsc["train_samples"]).isdisjoint(hsc["test_samples"])
    assert all(s.startswith("hsc_cosmos-") for s in hsc["test_samples"])


def test_pretrained_gaia_codec_round_trips_real_held_out_sources():
    codec = mmtok.get_plugin_manager().load_pretrained("astro/gaia-cone-photometry")
    ids, test = load_gaia(GaiaPhotometry, "test")
    stream = codec.encode(test)
    assert stream.ids.shape == (10, 3) and int(stream.ids.max()) < 8
    err = (codec.decode(stream).values - test.values).abs()
    assert float(err.max()) < 1.5  # 8 bins over G 15-21 mag: about 0.3 mag RMSE (metrics.json)


def test_pretrained_hsc_codec_crops_the_centre_of_larger_cutouts():
    codec = mmtok.get_plugin_manager().load_pretrained("astro/hsc-cosmos-fsq24")
    cut = load_hsc_cutouts(48)["hsc_cosmos_35"]  # real, with variance and mask
    stream = codec.encode(cut)
    centre = center_crop(cut, 24)
    assert stream.ids.shape == (1, 9) and torch.equal(codec.encode(centre).ids, stream.ids)
    out = codec.decode(stream, **codec.passthrough_fields(cut))
    assert out.flux.shape == (1, 5, 24, 24) and torch.equal(out.mask, centre.mask)
    with pytest.raises(ModalityError, match=r"HSCImage.flux is 16x16 pixels, .*never pads"):
        codec.encode(center_crop(cut, 16))


# ---------------------------------------------------------------- the multisurvey example
def test_example_registry_resolves_every_checkpoint():
    registry = Registry.load(EXAMPLE / "registry.yaml")
    assert registry.check() == []
    assert all(e.checkpoint.startswith("astro/") for e in registry.streams.values())


def _example_subset(tmp_path: Path, ids: list[str]) -> Path:
    """The example's manifest restricted to ``ids``, with the files they use, in tmp_path."""
    manifest = json.loads((EXAMPLE / "manifest.json").read_text())
    (tmp_path / "data").mkdir()
    for table in manifest["tables"].values():
        shutil.copyfile(EXAMPLE / table["path"], tmp_path / table["path"])
    samples = [s for s in manifest["samples"] if s["id"] in ids]
    for s in samples:
        for entry in s["modalities"].values():
            if isinstance(entry, str):
                shutil.copyfile(EXAMPLE / entry, tmp_path / entry)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "samples": samples}))
    shutil.copyfile(EXAMPLE / "registry.yaml", tmp_path / "registry.yaml")
    return tmp_path / "manifest.json"


def test_example_encodes_partial_streams_with_shipped_checkpoints(tmp_path, capsys):
    first_hsc = ["hsc_cosmos_35-0", "hsc_cosmos-0", "cut_hsc-centre"]
    gaia = ["gaia-6636090334814214528", "gaia-6636090339112400000"]  # with / without parallax
    path = _example_subset(tmp_path, first_hsc + gaia)
    assert mmtok_main(["validate", str(path), "--registry", str(tmp_path / "registry.yaml")]) == 0
    assert "5 samples" in capsys.readouterr().out
    out = tmp_path / "tokens"
    assert mmtok_main(["encode", str(path), "--out", str(out), "--quiet"]) == 0
    shards = TokenShards(out)
    present = {s["id"]: sorted(s["streams"]) for s in shards.index["samples"]}
    assert present == {"hsc_cosmos_35-0": ["tok_hsc"], "hsc_cosmos-0": ["tok_catalog", "tok_hsc"],
                       "cut_hsc-centre": ["tok_hsc"],
                       "gaia-6636090334814214528": ["tok_gaia_astrometry", "tok_gaia_phot"],
                       "gaia-6636090339112400000": ["tok_gaia_phot"]}
    # the tokens are the shipped codecs' own encoding of the real data
    manager = mmtok.get_plugin_manager()
    manifest = Manifest.load(path)
    by_id = {s.id: s for s in manifest.samples}
    registry = Registry.load(tmp_path / "registry.yaml")
    for sid, key, modality in (("hsc_cosmos-0", "tok_hsc", "hsc_image"),
                               ("gaia-6636090334814214528", "tok_gaia_astrometry", "gaia_astrometry")):
        m = manifest.load_modality(by_id[sid], modality, manager)
        expected = registry.codec(key, manager).encode(m).ids
        assert torch.equal(shards.stream(sid, key).ids.reshape(expected.shape), expected), (sid, key)
    assert isinstance(manifest.load_modality(by_id["cut_hsc-centre"], "hsc_image", manager), HSCImage)


def test_example_manifest_matches_the_plugin_data():
    manifest = json.loads((EXAMPLE / "manifest.json").read_text())
    gaia = [s for s in manifest["samples"] if s["id"].startswith("gaia-")]
    assert len(manifest["samples"]) == 64 and len(gaia) == 50
    assert sum("gaia_astrometry" in s["modalities"] for s in gaia) == 44
    assert not any("hsc_image" in s["modalities"] for s in gaia)  # another sky field
    assert _sha256(EXAMPLE / "data" / GAIA_CSV.name) == _sha256(GAIA_CSV)
    test = gaia_split("test")
    assert [s["metadata"]["codec_split"] == "test" for s in gaia] == list(test)
