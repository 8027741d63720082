"""The pretrained CT codecs shipped in the wheel (scripts/fit_pretrained.py): they are discovered
and load offline, are the checkpoints their metrics.json describes, and encode the CT example
(examples/ct: a NIfTI and a DICOM case) with no fit step, reproducing the reconstruction error
the script measured and beating the mean-HU baseline by far (an untrained codec does not)."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import mmtok
from mmtok import Manifest, Registry, TokenShards
from mmtok.fit import reconstruction_errors
from mmtok_plugin_ct.plugin import PRETRAINED, PRETRAINED_DIR
from mmtok_plugin_ct.text import tokenize

PLUGIN = Path(__file__).resolve().parents[1]
EXAMPLE = PLUGIN.parents[1] / "examples" / "ct"
needs_example = pytest.mark.skipif(not (EXAMPLE / "manifest.json").is_file(),
                                   reason="examples/ct is not in this checkout")


def _metrics(name: str) -> dict:
    return json.loads((PRETRAINED_DIR / PRETRAINED[name][0] / "metrics.json").read_text())


def _fit_script():
    spec = importlib.util.spec_from_file_location("ct_fit_pretrained", PLUGIN / "scripts" / "fit_pretrained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_codecs_load_and_are_what_their_metrics_describe(name):
    manager = mmtok.get_plugin_manager()
    assert name in manager.names("pretrained")
    folder = PRETRAINED_DIR / PRETRAINED[name][0]
    assert Path(manager.pretrained(name).path) == folder
    metrics = _metrics(name)
    codec = manager.load_pretrained(name)
    assert metrics["pretrained"] == name and metrics["codec"] == codec.name
    assert codec.fingerprint() == metrics["fingerprint"]  # the very weights that were measured
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == metrics["model_sha256"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    assert metrics["fitted_on"]["files"] and metrics["torch"]


def test_shipped_files_are_small_and_the_recipe_is_the_scripts():
    total = sum(p.stat().st_size for p in PRETRAINED_DIR.rglob("*") if p.is_file())
    assert total < 1_000_000  # 0.75 MB: the CT codec's 181,400 float32 weights
    fit = _fit_script()
    assert {f"ct/{d}" for d in fit.CODECS} == set(PRETRAINED)
    for directory, (codec_name, overrides) in fit.CODECS.items():
        m = _metrics(f"ct/{directory}")
        assert (m["codec"], m["config_overrides"], m["seed"]) == (codec_name, overrides, fit.SEED)
    ct = _metrics("ct/abdomen-ct-fsq")
    assert (ct["steps"], ct["batch_size"]) == (fit.CT_STEPS, fit.CT_BATCH)
    counts = ct["fitted_on"]["counts"]
    assert counts == {"train": 5974, "held_out_slab": 101, "unseen_patient": 286}
    assert ct["fitted_on"]["samples"] == counts["train"]
    # the mask codec has no state: nothing was fitted, its checkpoint is its config
    mask = mmtok.get_plugin_manager().load_pretrained("ct/abdomen-mask-regions")
    assert not mask.state_dict() and _metrics("ct/abdomen-mask-regions")["steps"] == 0


@needs_example
def test_example_registry_resolves_and_matches_the_shipped_codecs():
    registry = Registry.load(EXAMPLE / "registry.yaml")
    assert registry.check() == []
    manager = mmtok.get_plugin_manager()
    assert sorted(e.checkpoint for e in registry.streams.values()) == sorted(PRETRAINED)
    for key, entry in registry.streams.items():
        shipped = manager.load_pretrained(entry.checkpoint)
        assert (entry.vocab_size, entry.num_tokens) == (shipped.vocab_size, shipped.num_tokens), key
        assert registry.codec(key).fingerprint() == shipped.fingerprint()


def test_registry_refuses_a_geometry_the_checkpoint_was_not_saved_at(tmp_path):
    (tmp_path / "registry.yaml").write_text(
        "streams:\n  tok_ct_volume:\n    modality: ct_volume\n    codec: ct-volume-fsq\n"
        "    config: {size: [64, 512, 512], spacing_mm: [3.0, 0.75, 0.75]}\n"
        "    vocab_size: 1000\n    num_tokens: 16384\n    checkpoint: ct/abdomen-ct-fsq\n")
    problems = Registry.load(tmp_path / "registry.yaml").check()
    assert len(problems) == 1 and "config differs from checkpoint" in problems[0].message
    assert "size" in problems[0].message and "spacing_mm" in problems[0].message


@needs_example
def test_example_manifest_encodes_straight_after_install(tmp_path):
    out = tmp_path / "tokens"
    mmtok.encode_manifest(EXAMPLE / "manifest.json", out, registry_path=EXAMPLE / "registry.yaml", progress=False)
    shards = TokenShards(out)
    assert len(shards) == 2 and not shards.index["skipped"]
    registry, manager = Registry.load(EXAMPLE / "registry.yaml"), mmtok.get_plugin_manager()
    manifest = Manifest.load(EXAMPLE / "manifest.json")
    ct, mask, words = (registry.codec(k) for k in ("tok_ct_volume", "tok_anatomy_mask", "tok_report"))
    claims = {k: _metrics(f"ct/{d}")["example_manifest"]["cases"]
              for k, d in (("ct", "abdomen-ct-fsq"), ("mask", "abdomen-mask-regions"), ("words", "abdomen-report-words"))}
    held_out = _metrics("ct/abdomen-ct-fsq")["test"]
    untrained = manager.build_codec("ct-volume-fsq", ct.config.model_dump(exclude={"modality"}))  # seeded (fixture)
    for s in manifest.samples:
        # CT: HU on the codec's grid, clipped to the soft-tissue window (-160 .. 240)
        volume = manifest.load_modality(s, "ct_volume", manager)
        stream = shards.stream(s.id, "tok_ct_volume")
        assert stream.ids.numel() == 1568 and int(stream.ids.max()) < 1000
        target = ct.reconstruction_target(volume)
        decoded = ct.decode(stream, **ct.passthrough_fields(volume)).hu
        assert decoded.shape == target.shape == (1, 1, 32, 224, 224) and torch.isfinite(decoded).all()
        rmse, nrmse, _ = reconstruction_errors(target, decoded)
        mean_hu_rmse = float((target - target.mean()).pow(2).mean().sqrt())  # predicting the mean HU
        assert rmse == pytest.approx(claims["ct"][s.id]["rmse"], rel=1e-2), s.id  # what fit_pretrained.py measured
        assert rmse < 0.6 * mean_hu_rmse, (s.id, rmse, mean_hu_rmse)
        untrained_rmse = reconstruction_errors(target, untrained.decode(untrained.encode(volume)).hu)[0]
        assert untrained_rmse > 0.9 * mean_hu_rmse  # the check above is one an unfitted codec fails
        if s.id == "abdomen_dicom":  # the unseen patient: as good as the held-out crops of that patient
            assert rmse < 1.1 * held_out["unseen_patient"]["rmse"]
        # mask: a blocky map of each patch's dominant region, wrong on the fraction metrics.json says
        labels = manifest.load_modality(s, "anatomy_mask", manager)
        regions = mask.regions(labels)
        back = mask.decode(shards.stream(s.id, "tok_anatomy_mask")).labels
        off = float((back != regions).float().mean())
        assert off == pytest.approx(claims["mask"][s.id]["voxel_mismatch"], abs=1e-6) and off < 0.2
        # report: words back, out-of-vocabulary rate as measured
        report = manifest.load_modality(s, "report_text", manager)
        ids = shards.stream(s.id, "tok_report").ids.long().reshape(1, -1)
        assert torch.equal(ids, words.preprocess(report))
        assert float(words.reconstruction_loss(ids, ids)) == pytest.approx(claims["words"][s.id]["oov_rate"])
        # every word comes back, except those the training reports never had: those are <unk> (the
        # training slab lies below T12, so e.g. the "11" of "T11" is one)
        source = tokenize(report.texts()[0])[:words.config.num_tokens]
        back = [words.words()[i] for i in ids[0].tolist() if i != 0]  # id 0: padding
        assert len(back) == len(source)
        assert all(b == w or (b == "<unk>" and w not in words.word_index()) for b, w in zip(back, source))
