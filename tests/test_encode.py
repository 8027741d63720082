"""Manifest validation and `mmtok encode` on a corpus of broken manifests and files: one clear line
per problem (sample and key), never a traceback; `--on-error skip` keeps every good sample."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import mmtok
from mmtok.manifest import Manifest, ManifestError

from helpers import fake_dist

PLUGIN = """
    from dataclasses import dataclass
    from typing import ClassVar
    import torch
    from jaxtyping import Float
    from torch import Tensor
    from mmtok import Modality, CodecSpec, hookimpl
    from mmtok.codecs import ImageCodec

    @dataclass(frozen=True, eq=False)
    class FiveBand(Modality):
        name: ClassVar[str] = "five_band"
        flux: Float[Tensor, "b 5 h w"]
        @classmethod
        def example(cls, batch_size=2, generator=None):
            return cls(flux=torch.randn(batch_size, 5, 8, 8, generator=generator))

    @hookimpl
    def mmtok_modalities():
        return [FiveBand]

    @hookimpl
    def mmtok_codecs():
        return [CodecSpec("five-band-fsq", "five_band", ImageCodec,
                          {"channels": 5, "size": [8, 8], "patch": [4, 4]})]
"""
GOOD = [f"g{i}" for i in range(6)]
BAD = {  # sample id -> (modality key, words the one-line message must contain)
    "missing": ("five_band", "file not found"),
    "bands": ("five_band", "FiveBand.flux"),
    "nan": ("five_band", "NaN/inf"),
    "row": ("vital_signs", "row 'zzz' not found"),
    "escape": ("five_band", "escapes the manifest's folder"),
    "truncated": ("five_band", "cannot read data/truncated.npy"),
    "unknown": ("five_bnd", "no modality named 'five_bnd'"),
    "extra": ("five_band.colour", "Extra inputs are not permitted"),
    "dup": ("id", "duplicate id"),
}


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A fake installed plugin, a fitted codec, a registry and a manifest with good and bad samples."""
    site = tmp_path / "site"
    site.mkdir()
    fake_dist(site, "mmtok-plugin-fiveband", "fiveband", PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    mmtok.plugins.reset_plugin_manager()

    root = tmp_path / "corpus"
    (root / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for sid in GOOD:
        np.save(root / "data" / f"{sid}.npy", rng.normal(size=(5, 8, 8)).astype(np.float32))
    np.save(root / "data" / "bands.npy", np.zeros((4, 8, 8), np.float32))
    nan = np.zeros((5, 8, 8), np.float32)
    nan[2, 3, 3] = np.inf
    np.save(root / "data" / "nan.npy", nan)
    np.save(root / "data" / "truncated.npy", np.zeros((5, 8, 8), np.float32))
    with open(root / "data" / "truncated.npy", "r+b") as fh:
        fh.truncate(100)
    np.save(tmp_path / "outside.npy", np.zeros((5, 8, 8), np.float32))
    (root / "data" / "vitals.csv").write_text(
        "id,bp\n" + "".join(f"{sid},{90 + i}\n" for i, sid in enumerate(GOOD)))

    codec = mmtok.get_plugin_manager().build_codec("five-band-fsq")
    train = codec.modality(flux=torch.tensor(rng.normal(size=(32, 5, 8, 8)), dtype=torch.float32))
    mmtok.fit_codec(codec, train, steps=5, progress=False)
    codec.save_pretrained(root / "codecs" / "five-band")
    (root / "registry.yaml").write_text(textwrap.dedent("""
        streams:
          tok_five: {modality: five_band, codec: five-band-fsq, vocab_size: 1000, num_tokens: 4,
                     checkpoint: codecs/five-band}
          tok_vitals: {modality: vital_signs, codec: vitals-quantile, vocab_size: 64, num_tokens: 1,
                       checkpoint: tabular/diabetes-vitals-quantile}
    """))

    def sample(sid, **mods):
        return {"id": sid, "modalities": mods}

    samples = [sample(sid, five_band=f"data/{sid}.npy", vital_signs={"table": "vitals", "row": sid})
               for sid in GOOD[:4]]
    samples += [sample(GOOD[4], five_band=f"data/{GOOD[4]}.npy"),  # lacks vitals
                sample(GOOD[5], vital_signs={"table": "vitals", "row": GOOD[5]})]  # lacks the image
    samples += [
        sample("missing", five_band="data/nope.npy"),
        sample("bands", five_band="data/bands.npy"),
        sample("nan", five_band="data/nan.npy"),
        sample("row", vital_signs={"table": "vitals", "row": "zzz"}),
        sample("escape", five_band="../outside.npy"),
        sample("truncated", five_band="data/truncated.npy"),
        sample("unknown", five_bnd="data/g0.npy"),
        sample("extra", five_band={"path": "data/g0.npy", "colour": "red"}),
        sample("dup", five_band="data/g1.npy"),
        sample("dup", five_band="data/g2.npy"),
    ]
    manifest = {"tables": {"vitals": {"path": "data/vitals.csv", "key": "id"}}, "samples": samples}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return root, env


def cli(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "mmtok.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_validate_reports_every_problem_once_per_line(corpus):
    root, env = corpus
    problems = [str(p) for p in Manifest.load(root / "manifest.json").validate()]
    for sid, (key, words) in BAD.items():
        hits = [p for p in problems if p.startswith(f"sample {sid!r}, {key}:") and words in p]
        assert len(hits) == 1, (sid, problems)
    assert not any(p.startswith(f"sample '{g}'") for g in GOOD for p in problems)
    run = cli(["validate", "manifest.json", "--registry", "registry.yaml"], env, root)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("manifest.json: ")]
    assert len(lines) == len(BAD)
    assert all("\n" not in line for line in lines)


def test_validate_reports_a_codec_that_cannot_be_built_once(corpus):
    """A stream whose checkpoint is missing is one problem, before the samples' problems, not one
    per sample; a shape another stream's codec can't take is still one problem per sample."""
    root, env = corpus
    np.save(root / "data" / "big.npy", np.zeros((5, 16, 16), np.float32))  # a FiveBand, not 8 x 8
    (root / "broken.yaml").write_text(textwrap.dedent("""
        streams:
          tok_five: {modality: five_band, codec: five-band-fsq, vocab_size: 1000, num_tokens: 4,
                     checkpoint: codecs/five-band}
          tok_vitals: {modality: vital_signs, codec: vitals-quantile, vocab_size: 64, num_tokens: 1,
                       checkpoint: codecs/never-fitted}
    """))
    samples = [{"id": sid, "modalities": {"five_band": f"data/{sid}.npy",
                                          "vital_signs": {"table": "vitals", "row": sid}}}
               for sid in GOOD]
    samples += [{"id": f"big{i}", "modalities": {"five_band": "data/big.npy"}} for i in range(2)]
    (root / "many.json").write_text(json.dumps(
        {"tables": {"vitals": {"path": "data/vitals.csv", "key": "id"}}, "samples": samples}))
    run = cli(["validate", "many.json", "--registry", "broken.yaml"], env, root)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    hits = [line for line in lines if "never-fitted" in line]
    assert len(hits) == 1, run.stderr
    assert lines[0] == hits[0] and lines[0].startswith("broken.yaml: stream 'tok_vitals' (vital_signs): ")
    assert f"skipped for the {len(GOOD)} sample(s) with vital_signs" in lines[0]
    shape = [line for line in lines if line.startswith("many.json: ")]
    assert [line.split(",")[0] for line in shape] == ["many.json: sample 'big0'", "many.json: sample 'big1'"]
    assert all("five_band: " in line and "(5, 16, 16)" in line for line in shape), shape
    assert lines[-1] == f"1 problem(s) in broken.yaml, 2 problem(s) in {len(GOOD) + 2} samples"
    assert len(lines) == 4


def test_encode_fail_stops_with_one_line(corpus):
    root, env = corpus
    run = cli(["encode", "manifest.json", "--out", "out", "--quiet"], env, root)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("mmtok: sample ")


def test_encode_skip_keeps_every_good_sample_and_lists_the_bad(corpus):
    root, env = corpus
    run = cli(["encode", "manifest.json", "--out", "out", "--on-error", "skip", "--quiet",
               "--shard-size", "4", "--batch-size", "3"], env, root)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    index = json.loads((root / "out" / "index.json").read_text())
    assert [s["id"] for s in index["samples"]] == GOOD
    skipped = {s["id"]: s["problems"] for s in index["skipped"]}
    assert set(skipped) == set(BAD)
    for sid, (key, words) in BAD.items():
        assert any(p["key"] == key and words in p["reason"] for p in skipped[sid]), (sid, skipped[sid])
    streams = {s["id"]: s["streams"] for s in index["samples"]}
    assert streams["g0"] == ["tok_five", "tok_vitals"]
    assert streams["g4"] == ["tok_five"] and streams["g5"] == ["tok_vitals"]
    assert index["counts"]["tok_five"]["samples"] == 5 and index["counts"]["tok_vitals"]["samples"] == 5
    # codebook usage merged from the shards' sidecars (3 shards) equals a count over the tokens
    shards = mmtok.TokenShards(root / "out")
    for key in ("tok_five", "tok_vitals"):
        ids = torch.cat([shards.stream(s, key).ids for s in GOOD if key in streams[s]])
        assert index["counts"][key]["codes_used"] == len(torch.unique(ids)), key
    # the tokens of every good sample equal encoding it on its own
    mmtok.plugins.reset_plugin_manager()
    registry = mmtok.Registry.load(root / "registry.yaml")
    codec = registry.codec("tok_five")
    shards = mmtok.TokenShards(root / "out")
    for sid in GOOD[:5]:
        alone = codec.encode(codec.modality(flux=torch.tensor(np.load(root / "data" / f"{sid}.npy"))[None]))
        assert torch.equal(shards.stream(sid, "tok_five").ids, alone.ids)
    # decode round trip through the CLI
    run = cli(["decode", "out", "--sample", "g2", "--stream", "tok_five", "--out", "g2.npy"], env, root)
    assert run.returncode == 0, run.stderr
    assert np.load(root / "g2.npy").shape == (5, 8, 8)
    run = cli(["decode", "out", "--sample", "nan", "--stream", "tok_five", "--out", "x.npy"], env, root)
    assert run.returncode == 1 and "was skipped when encoding" in run.stderr and "NaN/inf" in run.stderr


@pytest.mark.parametrize("text, words", [
    ("{not json", "invalid JSON at line 1"),
    ('{"samples": []}', "samples: List should have at least 1 item"),
    ('[1, 2]', "expected a JSON object"),
    ('{"samples": [{"id": "a", "modalities": {"x": "a.npy"}}], "extra": 1}', "extra: Extra inputs"),
])
def test_broken_manifest_files(tmp_path, text, words):
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(ManifestError, match=words):
        Manifest.load(path)
    for command in (["validate", str(path)], ["encode", str(path), "--out", str(tmp_path / "o")]):
        run = subprocess.run([sys.executable, "-m", "mmtok.cli", *command],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.returncode == 1 and "Traceback" not in run.stderr and words in run.stderr


def test_encode_refuses_streams_without_checkpoint(tmp_path):
    (tmp_path / "registry.yaml").write_text(
        "streams:\n  tok_s: {modality: scalars, codec: scalar-quantile, vocab_size: 64, num_tokens: 4}\n")
    np.save(tmp_path / "a.npy", np.zeros(4))
    (tmp_path / "manifest.json").write_text(json.dumps({"samples": [{"id": "a", "modalities": {"scalars": "a.npy"}}]}))
    run = subprocess.run([sys.executable, "-m", "mmtok.cli", "encode", "manifest.json", "--out", "o"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "has no checkpoint" in run.stderr and "mmtok fit-codec" in run.stderr


def test_fit_codec_cli_writes_a_checkpoint_the_registry_can_use(tmp_path):
    from pathlib import Path

    clinic = Path(__file__).resolve().parents[1] / "examples" / "clinic"
    run = subprocess.run([sys.executable, "-m", "mmtok.cli", "fit-codec", str(clinic / "manifest.json"),
                          "--registry", str(clinic / "registry.yaml"), "--stream", "tok_labs",
                          "--out", str(tmp_path / "labs"), "--steps", "30", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "held-out data, 265 train / 66 held-out samples" in run.stdout
    metrics = json.loads((tmp_path / "labs" / "metrics.json").read_text())
    assert metrics["val_samples"] == 66 and metrics["codes_used"] > 1
    (tmp_path / "registry.yaml").write_text(
        "streams:\n  tok_labs: {modality: lab_results, codec: labs-fsq, vocab_size: 1000, "
        "num_tokens: 3, checkpoint: labs}\n")
    assert mmtok.Registry.load(tmp_path / "registry.yaml").check() == []


def test_symlinks_cannot_escape_the_manifest_folder(tmp_path):
    (tmp_path / "outside.npy").write_bytes(b"")
    root = tmp_path / "m"
    (root / "data").mkdir(parents=True)
    (root / "data" / "link.npy").symlink_to(tmp_path / "outside.npy")
    (root / "linkdir").symlink_to(tmp_path)
    (root / "manifest.json").write_text(json.dumps({"samples": [
        {"id": "a", "modalities": {"scalars": "data/link.npy"}},
        {"id": "b", "modalities": {"scalars": "linkdir/outside.npy"}},
        {"id": "c", "modalities": {"scalars": "data/../../outside.npy"}}]}))
    problems = [str(p) for p in Manifest.load(root / "manifest.json").validate()]
    assert len(problems) == 3 and all("escapes the manifest's folder" in p for p in problems), problems
