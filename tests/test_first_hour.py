"""What a new user meets first: one registry rule for every command, help text to live in, the
"predict X from Y" masking preset, a split by group, plain errors for empty samples."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmtok
from mmtok.cli import build_parser, main
from mmtok.model import MaskingConfig, StreamLayout, StreamSpec
from mmtok.model.masking import MaskSampler
from mmtok.registry import find_registry, recorded_registry
from mmtok.shards import held_out

ROOT = Path(__file__).resolve().parents[1]
CLINIC = ROOT / "examples" / "clinic"


def test_encode_from_the_repository_root_uses_the_registry_next_to_the_manifest(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # ./registry.yaml exists here, but the manifest's own registry wins
    out = tmp_path / "tokens"
    assert main(["encode", "examples/clinic/manifest.json", "--out", str(out), "--quiet"]) == 0
    assert main(["encode", "examples/clinic/manifest.json", "--out", str(tmp_path / "t2")]) == 0
    err = capsys.readouterr().err
    assert "registry: examples/clinic/registry.yaml (next to the manifest)" in err
    index = json.loads((out / "index.json").read_text())
    assert not os.path.isabs(index["registry"])  # recorded relative to the token folder ...
    moved = tmp_path / "moved" / "tokens"  # ... so the folder can move with it
    moved.parent.mkdir()
    shutil.copytree(out, moved)
    assert recorded_registry(moved) != recorded_registry(out)
    shutil.copytree(CLINIC, tmp_path / "moved" / "clinic")
    (tmp_path / "moved" / "examples").mkdir()
    shutil.move(str(tmp_path / "moved" / "clinic"), str(tmp_path / "moved" / "examples" / "clinic"))
    index["registry"] = os.path.relpath(tmp_path / "moved" / "examples" / "clinic" / "registry.yaml", moved)
    (moved / "index.json").write_text(json.dumps(index))
    choice = find_registry(tokens=moved)
    assert choice.path.resolve() == (tmp_path / "moved" / "examples" / "clinic" / "registry.yaml").resolve()
    assert "encoded with" in choice.reason
    # the token folder's registry is the default of decode
    assert main(["decode", str(out), "--sample", "p000", "--stream", "tok_labs", "--out", str(tmp_path / "l.npy")]) == 0
    assert "was encoded with" in capsys.readouterr().err


def test_the_rule_order_and_a_missing_registry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    manifest = tmp_path / "data" / "manifest.json"
    with pytest.raises(mmtok.RegistryError, match="no registry found .*pass --registry"):
        find_registry(manifest=manifest)
    (tmp_path / "registry.yaml").write_text("streams: {}\n")
    assert find_registry(manifest=manifest).reason == "current folder"
    (tmp_path / "data" / "registry.yaml").write_text("streams: {}\n")
    assert find_registry(manifest=manifest).reason == "next to the manifest"
    assert find_registry("registry.yaml", manifest=manifest).reason == "--registry"
    with pytest.raises(mmtok.RegistryError, match="given by --registry"):
        find_registry("nope.yaml")


def test_the_root_registry_resolves_with_only_the_plugin_its_header_names():
    header = (ROOT / "registry.yaml").read_text().splitlines()[:4]
    assert any("mmtok-plugin-tabular" in line for line in header)
    others = "ct,nir,hsi,medimg,astro"
    env = {**os.environ, "MMTOK_DISABLE_PLUGINS": others}
    run = subprocess.run([sys.executable, "-m", "mmtok.cli", "registry", "check"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "3 streams, 1 bundle, all resolved" in run.stdout
    for plugin in ("ct", "nir", "hsi", "medimg"):  # each plugin's streams and bundle in its own file
        path = ROOT / "plugins" / f"mmtok-plugin-{plugin}" / "registry.yaml"
        assert mmtok.Registry.load(path).check() == [], plugin


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield name, child
                yield from _subparsers(child)


def test_every_command_help_describes_each_option_in_plain_text():
    import argparse

    parser = build_parser()
    for name, child in _subparsers(parser):  # plugin commands too: no markup
        text = child.format_help()
        assert "``" not in text and "`" not in text, (name, text)
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    builtin = ["plugins", "registry", "validate", "encode", "decode", "fit-codec", "train", "embed", "impute",
               "new-plugin"]
    for name in builtin:
        text = top[name].format_help()
        for action in top[name]._actions:
            assert action.help or action.choices, (name, action.dest)
        if name != "registry":
            assert "examples:" in text, name
    assert "(default: 2000)" in top["fit-codec"].format_help()
    assert "(default: None)" not in top["encode"].format_help()


def test_target_stream_is_never_an_input_and_always_a_target():
    layout = StreamLayout({"a": StreamSpec(vocab_size=10, grid=(5,)), "label": StreamSpec(vocab_size=3, grid=(1,)),
                           "c": StreamSpec(vocab_size=10, grid=(4,))})
    sampler = MaskSampler(layout, MaskingConfig(input_budget=4, target_budget=3, target_streams=["label"]))
    present = torch.rand(256, 3, generator=torch.Generator().manual_seed(0)) < 0.7
    inputs, targets = sampler(present, sampler.draw(256, 0)).selection(layout.total)
    slot = layout.slots("label").start
    assert not inputs[:, slot].any()
    assert torch.equal(targets[:, slot], present[:, 1])
    # without the preset the label is sometimes an input
    plain = MaskSampler(layout, MaskingConfig(input_budget=4, target_budget=3))
    inputs, _ = plain(present, plain.draw(256, 0)).selection(layout.total)
    assert inputs[:, slot].any()
    with pytest.raises(mmtok.MmtokError, match="unknown stream"):
        MaskSampler(layout, MaskingConfig(target_streams=["nope"]))
    config = mmtok.TrainConfig().with_target_streams(["label"])
    assert config.masking.target_streams == ["label"]


def test_val_group_holds_out_whole_groups():
    ids = [f"rec{r}-beat{b}" for r in range(40) for b in range(5)]
    sides = {}
    for sid in ids:
        sides.setdefault(sid.split("-")[0], set()).add(held_out(sid, 0.3, group=r"^(rec\d+)-"))
    assert all(len(v) == 1 for v in sides.values())
    assert 0 < sum(v == {True} for v in sides.values()) < 40
    with pytest.raises(mmtok.MmtokError, match="does not match"):
        held_out("other", 0.3, group=r"^(rec\d+)-")


def test_a_sample_without_modalities_gets_mmtoks_message(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"samples": [{"id": "a", "modalities": {}}]}))
    problems = mmtok.Manifest.load(path).problems
    assert [str(p) for p in problems] == [
        "sample 'a', modalities: the sample has no modalities; give at least one entry "
        "{\"<modality name>\": <file or table row>}, or leave the sample out"]


def test_codec_from_pretrained_takes_a_shipped_name_or_a_folder(tmp_path):
    codec = mmtok.Codec.from_pretrained("tabular/diabetes-labs-fsq")
    assert type(codec).__name__ == "TableCodec" and codec.num_tokens == 3
    same = type(codec).from_pretrained("tabular/diabetes-labs-fsq")
    assert same.fingerprint() == codec.fingerprint()
    codec.save_pretrained(tmp_path / "labs")
    assert mmtok.Codec.from_pretrained(tmp_path / "labs").fingerprint() == codec.fingerprint()
    with pytest.raises(mmtok.CodecError, match="nor an installed pretrained codec .*tabular/diabetes-labs-fsq"):
        mmtok.Codec.from_pretrained("tabular/no-such-codec")


def test_the_python_api_names_the_readme_promises():
    for name in ("load_run", "embed_tokens", "impute_tokens", "encode_manifest", "Registry", "Manifest",
                 "TokenShards", "TokenDataset", "TrainConfig", "Trainer", "evaluate_run", "TimeSeries"):
        assert callable(getattr(mmtok, name)), name


def test_fit_codec_deterministic_gives_the_same_checkpoint_twice(tmp_path):
    fingerprints = []
    for i in range(2):
        run = subprocess.run([sys.executable, "-m", "mmtok.cli", "fit-codec", str(CLINIC / "manifest.json"),
                              "--stream", "tok_labs", "--out", str(tmp_path / f"c{i}"), "--steps", "30",
                              "--deterministic", "--quiet"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        fingerprints.append(json.loads((tmp_path / f"c{i}" / "config.json").read_text())["fingerprint"])
    assert fingerprints[0] == fingerprints[1]
