"""Manifest validation and `mmtok encode` on a corpus of broken manifests and files: one clear line
per problem (sample and key), never a traceback; `--on-error skip` keeps every good sample."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
    per sample; a shape another stream's codec can't take is a problem of each such sample, and
    the samples that share it word for word are one line with their count."""
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
    (root / "codecs" / "never-fitted").mkdir(parents=True)  # a folder without config.json: no codec
    run = cli(["validate", "many.json", "--registry", "broken.yaml"], env, root)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    hits = [line for line in lines if "never-fitted" in line]
    assert len(hits) == 1, run.stderr
    assert lines[0] == hits[0] and lines[0].startswith("broken.yaml: stream 'tok_vitals' (vital_signs): ")
    assert f"skipped for the {len(GOOD)} sample(s) with vital_signs" in lines[0]
    shape = [line for line in lines if line.startswith("many.json: ")]
    assert len(shape) == 1 and shape[0].startswith("many.json: 2 samples ('big0', 'big1'), five_band: "
                                                   "stream 'tok_five': "), shape
    assert "(5, 16, 16)" in shape[0]
    assert lines[-1] == f"1 problem(s) in broken.yaml, 2 problem(s) in {len(GOOD) + 2} samples"
    assert len(lines) == 3


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
    np.save(tmp_path / "outside.npy", np.ones(3, np.float32))  # readable: only the path check refuses it
    root = tmp_path / "m"
    (root / "data").mkdir(parents=True)
    (root / "data" / "link.npy").symlink_to(tmp_path / "outside.npy")
    (root / "linkdir").symlink_to(tmp_path)
    np.save(root / "data" / "ok.npy", np.ones(3, np.float32))  # read first: data/ is then
    (root / "manifest.json").write_text(json.dumps({"samples": [  # on the one-open fast path
        {"id": "ok", "modalities": {"scalars": "data/ok.npy"}},
        {"id": "a", "modalities": {"scalars": "data/link.npy"}},
        {"id": "b", "modalities": {"scalars": "linkdir/outside.npy"}},
        {"id": "c", "modalities": {"scalars": "data/../../outside.npy"}}]}))
    problems = [str(p) for p in Manifest.load(root / "manifest.json").validate()]
    assert len(problems) == 3 and all("escapes the manifest's folder" in p for p in problems), problems
    assert not any("'ok'" in p for p in problems)


# ---------------------------------------------------------------------------- real chest X-rays
XRAY_GOOD = [f"x{i}" for i in range(6)]


@pytest.fixture
def xrays(tmp_path):
    """Real PneumoniaMNIST images (tests/data), one .npy per sample as float32 in [0, 1], an
    `image-patch` codec fitted on them (28 x 28, 7 x 7 patches) and a registry with a second
    stream (vital signs) that none of these samples has."""
    from pathlib import Path

    with np.load(Path(__file__).parent / "data" / "pneumoniamnist_subset.npz") as d:
        images = d["train_images"][:16]  # uint8 (16, 28, 28)
    root = tmp_path / "xrays"
    (root / "data").mkdir(parents=True)
    for sid, img in zip(XRAY_GOOD, images):
        np.save(root / "data" / f"{sid}.npy", (img / 255).astype(np.float32)[None])
    codec = mmtok.get_plugin_manager().build_codec("image-patch", {"channels": 1, "size": [28, 28], "patch": [7, 7]})
    train = codec.modality(flux=torch.tensor(images[:, None] / 255, dtype=torch.float32))
    mmtok.fit_codec(codec, train, steps=3, progress=False)
    codec.save_pretrained(root / "codecs" / "xray")
    (root / "registry.yaml").write_text(textwrap.dedent("""
        streams:
          tok_xray: {modality: image, codec: image-patch, vocab_size: 1000, num_tokens: 16, checkpoint: codecs/xray,
                     config: {channels: 1, size: [28, 28], patch: [7, 7]}}
          tok_vitals: {modality: vital_signs, codec: vitals-quantile, vocab_size: 64, num_tokens: 1,
                       checkpoint: tabular/diabetes-vitals-quantile}
    """))

    def write_manifest(name, sids):
        samples = [{"id": sid, "modalities": {"image": f"data/{sid}.npy"}} for sid in sids]
        (root / name).write_text(json.dumps({"samples": samples}))

    return root, images, write_manifest


def _main(args, capsys):
    from mmtok.cli import main

    rc = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_validate_and_encode_agree_on_int_and_bool_files(xrays, capsys):
    """An int32 or a bool copy of a real image where float flux is expected: `validate` refuses
    it, and `encode` refuses it too, with the same words (checked per sample before batching;
    concatenation with float samples would have promoted it)."""
    root, images, write_manifest = xrays
    np.save(root / "data" / "as_int.npy", images[6][None].astype(np.int32))
    np.save(root / "data" / "as_bool.npy", (images[7] > 127)[None])
    sids = [*XRAY_GOOD[:3], "as_int", *XRAY_GOOD[3:], "as_bool"]  # one batch of 8 in the old encode
    write_manifest("manifest.json", sids)
    manifest = root / "manifest.json"
    rc, _, err = _main(["validate", str(manifest)], capsys)
    lines = err.splitlines()
    assert lines.pop(0) == f"registry: {root / 'registry.yaml'} (next to the manifest)"  # the one rule
    assert rc == 1 and len(lines) == 3, err
    validated = {p.sample: p.reason for p in Manifest.load(manifest).validate()}
    assert set(validated) == {"as_int", "as_bool"}
    assert "Image.flux: expected Float" in validated["as_int"] and "found int64 tensor" in validated["as_int"]
    assert "found bool tensor" in validated["as_bool"]
    args = ["encode", str(manifest), "--registry", str(root / "registry.yaml"), "--quiet", "--batch-size", "8"]
    rc, _, err = _main([*args, "--out", str(root / "fail")], capsys)
    assert rc == 1 and err == f"mmtok: sample 'as_int', image: {validated['as_int']}\n"
    rc, out, err = _main([*args, "--out", str(root / "skip"), "--on-error", "skip"], capsys)
    assert rc == 0, err
    index = json.loads((root / "skip" / "index.json").read_text())
    assert {s["id"]: s["problems"] for s in index["skipped"]} == {
        sid: [{"key": "image", "reason": reason}] for sid, reason in validated.items()}
    assert [s["id"] for s in index["samples"]] == XRAY_GOOD
    assert err.splitlines() == [f"skipped sample {sid!r}, image: {validated[sid]}" for sid in ("as_int", "as_bool")]


def test_skip_covers_a_codec_refusing_a_sample_and_nothing_encoded_fails(xrays, capsys):
    """`--on-error skip` skips the samples a codec refuses (real images cropped to 24 x 24 for a
    28 x 28 codec), keeps the others with the tokens they get alone, reports the stream nobody has
    as empty and the shared reason once; a run that encodes nothing exits 1 and says why."""
    root, images, write_manifest = xrays
    for i in range(2):
        np.save(root / "data" / f"crop{i}.npy", (images[8 + i, :24, :24] / 255).astype(np.float32)[None])
    write_manifest("manifest.json", [*XRAY_GOOD[:2], "crop0", *XRAY_GOOD[2:], "crop1"])
    registry = str(root / "registry.yaml")
    args = ["encode", str(root / "manifest.json"), "--registry", registry, "--quiet"]
    rc, _, err = _main([*args, "--out", str(root / "fail")], capsys)
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith("mmtok: sample 'crop0', image: stream 'tok_xray': ") and "(1, 24, 24)" in err
    rc, out, err = _main([*args, "--out", str(root / "skip"), "--on-error", "skip"], capsys)
    assert rc == 0, err
    index = json.loads((root / "skip" / "index.json").read_text())
    assert [s["id"] for s in index["samples"]] == XRAY_GOOD
    assert [s["id"] for s in index["skipped"]] == ["crop0", "crop1"]
    assert "| tok_vitals | 0 | 0 | empty |" in out and "| tok_xray | 6 | 96 |" in out
    assert err.count("\n") == 1 and err.startswith("skipped 2 samples ('crop0', 'crop1'), image: stream 'tok_xray': ")
    codec = mmtok.Registry.load(registry).codec("tok_xray")
    shards = mmtok.TokenShards(root / "skip")
    for sid in XRAY_GOOD:
        alone = codec.encode(codec.modality(flux=torch.tensor(np.load(root / "data" / f"{sid}.npy"))[None]))
        assert torch.equal(shards.stream(sid, "tok_xray").ids, alone.ids)
    # nothing left to encode: a non-zero exit with the reason, not an empty success
    write_manifest("crops.json", ["crop0", "crop1"])
    rc, _, err = _main(["encode", str(root / "crops.json"), "--registry", registry, "--quiet", "--on-error", "skip",
                        "--out", str(root / "none")], capsys)
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith("mmtok: nothing was encoded: all 2 sample(s) were skipped: 2 samples ('crop0', 'crop1'), "
                          "image: stream 'tok_xray': ")


def test_a_table_wide_problem_is_one_line_with_a_count(tmp_path, capsys):
    """The real clinic example with the table's `bp` column deleted: validate, encode --on-error
    skip and fit-codec report it once, with the table and the 294 samples affected, not 294 lines
    that blame the first sample."""
    import csv
    import shutil
    from pathlib import Path

    clinic = tmp_path / "clinic"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "clinic", clinic)
    rows = list(csv.reader((clinic / "data" / "patients.csv").open()))
    j = rows[0].index("bp")
    with (clinic / "data" / "patients.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([r[:j] + r[j + 1:] for r in rows])
    manifest, registry = str(clinic / "manifest.json"), str(clinic / "registry.yaml")
    problem = ("294 samples ('p001', 'p002', 'p004' and 291 more), vital_signs: table 'patients' "
               "(data/patients.csv): VitalSigns: missing column(s) ['bp']; needs ['bp'], found ")
    rc, _, err = _main(["validate", manifest, "--registry", registry], capsys)
    assert rc == 1 and err.splitlines()[0].startswith(f"{manifest}: {problem}")
    assert err.splitlines()[1:] == ["294 problem(s) in 442 samples"]
    rc, out, err = _main(["encode", manifest, "--registry", registry, "--out", str(tmp_path / "t"), "--quiet",
                          "--on-error", "skip"], capsys)
    assert rc == 0 and err.count("\n") == 1 and err.startswith(f"skipped {problem}"), err
    assert "| tok_vitals | 0 | 0 | empty |" in out
    rc, _, err = _main(["fit-codec", manifest, "--registry", registry, "--stream", "tok_vitals",
                        "--out", str(tmp_path / "c"), "--quiet"], capsys)
    assert rc == 1 and err.count("\n") == 1 and err.startswith(f"{manifest}: {problem}"), err


@pytest.mark.parametrize("text, words", [
    ('{"samples": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply to parse"),
    ('{"samples": [{"id": "a", "modalities": {"scalars": "a\\u0000b.npy"}}]}', "sample 'a', scalars: path "
     "'a\\x00b.npy' contains a NUL byte"),
])
def test_hostile_manifests_are_one_line(tmp_path, capsys, text, words):
    (tmp_path / "manifest.json").write_text(text)
    rc, _, err = _main(["validate", str(tmp_path / "manifest.json"), "--quiet"], capsys)
    assert rc == 1 and words in err.splitlines()[0], err
    with pytest.raises(ManifestError, match="NUL byte|embedded null"):
        Manifest.load(tmp_path / "manifest\0.json")


def test_encode_with_dataloader_workers_writes_the_same_folder(xrays, tmp_path):
    """``workers 2`` (chunks read in DataLoader worker processes, records sent back as read) writes
    the same shards, sidecars and skipped samples as reading in the main process."""
    from mmtok.encode import encode_manifest

    root, _, write_manifest = xrays
    np.save(root / "data" / "wide.npy", np.zeros((1, 28, 30), np.float32))  # the codec refuses it
    nan = np.load(root / "data" / f"{XRAY_GOOD[0]}.npy")
    nan[0, 3, 4] = np.nan  # fails its batch's check: the batch is then built sample by sample
    np.save(root / "data" / "nan.npy", nan)
    write_manifest("manifest.json", [*XRAY_GOOD[:3], "wide", "missing", "nan", *XRAY_GOOD[3:]])

    def run(workers):
        out = tmp_path / f"w{workers}"
        summary = encode_manifest(root / "manifest.json", out, registry_path=root / "registry.yaml", progress=False,
                                  shard_size=3, streams=["tok_xray"], workers=workers, on_error="skip")
        return summary, {p.relative_to(out): p.read_bytes() for p in (out / "shards").iterdir()}

    alone, files = run(0)
    assert alone.samples == 6 and sorted(s["id"] for s in alone.skipped) == ["missing", "nan", "wide"]
    with_workers, files_workers = run(2)
    assert files_workers == files and with_workers.skipped == alone.skipped


def test_shards_written_in_line_or_on_the_writer_thread_are_identical_and_a_failed_write_is_raised(
        xrays, tmp_path, monkeypatch):
    """The shard writer serialises on its thread only where a core is spare (else in line, the thread
    then only writes and fsyncs); both ways the token folder is byte-identical, and a write that
    fails on the thread fails the run with its own error."""
    import mmtok.encode as encode
    from mmtok.encode import encode_manifest

    root, _, write_manifest = xrays
    write_manifest("manifest.json", XRAY_GOOD)

    def run(out, spare: bool):
        monkeypatch.setattr(encode._ShardWriter, "spare_core", staticmethod(lambda device: spare))
        encode_manifest(root / "manifest.json", out, registry_path=root / "registry.yaml", progress=False,
                        shard_size=2, streams=["tok_xray"])

    def files(out):
        return {p.relative_to(out): p.read_bytes() for p in (out / "shards").iterdir()}

    run(tmp_path / "inline", False)
    run(tmp_path / "thread", True)
    assert len(files(tmp_path / "inline")) == 6  # 3 shards: safetensors + sidecar each
    assert files(tmp_path / "inline") == files(tmp_path / "thread")

    def refuse(path, write):
        raise mmtok.MmtokError(f"{Path(path).name}: disk full (test)")

    import mmtok.shards

    monkeypatch.setattr(mmtok.shards, "atomic_write", refuse)  # both ways, the thread does the writing
    for spare in (False, True):
        with pytest.raises(mmtok.MmtokError, match="shard-00000.safetensors: disk full"):
            run(tmp_path / f"failed-{spare}", spare)
        assert not list((tmp_path / f"failed-{spare}" / "shards").glob("shard-*")), "nothing half-written"
