"""Damaged files, interrupted writes and concurrent writers: every case is one line naming the
file and what to do, or a recovery (with a message) that is byte-identical to an uninterrupted
run. Real data: 48 patients of the diabetes study (examples/clinic), as one manifest + table."""

import filecmp
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmtok.cli import main
from mmtok.encode import encode_manifest
from mmtok.errors import MmtokError
from mmtok.io import DamagedFileError, OutputLock
from mmtok.shards import TokenShards
from mmtok.train import TrainConfig, Trainer

CLINIC = Path(__file__).resolve().parents[1] / "examples" / "clinic"
TRAIN = {"model": {"d_model": 16, "num_heads": 2, "encoder_depth": 1, "decoder_depth": 1},
         "masking": {"input_budget": 4, "target_budget": 3}, "batch_size": 8, "max_steps": 4,
         "log_every": 1, "eval_every": 100, "checkpoint_every": 1, "keep_checkpoints": 3,
         "optim": {"lr": 3e-3, "warmup_steps": 1}}


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """The first 48 patients of the clinic example: manifest.json, the table and registry.yaml."""
    root = tmp_path_factory.mktemp("study")
    (root / "data").mkdir()
    shutil.copy(CLINIC / "data" / "patients.csv", root / "data")
    shutil.copy(CLINIC / "registry.yaml", root)
    manifest = json.loads((CLINIC / "manifest.json").read_text())
    manifest["samples"] = manifest["samples"][:48]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def encode_args(study: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", str(study / "manifest.json"), "--registry", str(study / "registry.yaml"),
            "--out", str(out), "--shard-size", "16", "--quiet", *extra]


@pytest.fixture(scope="session")
def reference(study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "tokens"
    assert main(encode_args(study, out)) == 0
    return out


@pytest.fixture
def tokens(reference, tmp_path) -> Path:
    """A private copy of the reference token folder, to damage."""
    out = tmp_path / "tokens"
    shutil.copytree(reference, out)
    return out


def same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def one_line_error(capsys, argv: list[str], *words: str) -> str:
    """Run the CLI: exit 1 and one `mmtok: ...` line on stderr containing ``words``."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("mmtok: warning:")]
    assert len(lines) == 1 and lines[0].startswith("mmtok: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------- damaged safetensors
def truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def lie_about_header_length(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**40) + data[8:])


def lie_about_a_shape(path: Path) -> None:
    """Swap a tensor's shape for one of the same size: valid safetensors, wrong content."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = next(k for k, v in header.items() if k.endswith("/ids") and len(v["shape"]) == 2)
    rows, cols = header[name]["shape"]
    header[name]["shape"] = [cols, rows]
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(raw) == n
    path.write_bytes(data[:8] + raw + data[8 + n:])


@pytest.mark.parametrize("damage", [truncate, lie_about_header_length, lie_about_a_shape])
def test_a_damaged_shard_is_one_line_everywhere_and_resume_redoes_it(damage, tokens, reference, study, capsys,
                                                                     tmp_path):
    shard = tokens / "shards" / "shard-00001.safetensors"
    damage(shard)
    one_line_error(capsys, ["decode", str(tokens), "--sample", "p020", "--stream", "tok_labs",
                            "--out", str(tmp_path / "x.npy")], "shard-00001.safetensors", "--resume")
    with pytest.raises(DamagedFileError, match="shard-00001"):
        TokenShards(tokens).verify()
    one_line_error(capsys, ["train", "--tokens", str(tokens), "--out", str(tmp_path / "run"), "--quiet"],
                   "shard-00001.safetensors")
    # encode --resume re-verifies the shards it would trust and re-encodes the damaged one
    assert main(encode_args(study, tokens, "--resume")) == 0
    assert "shard-00001" in capsys.readouterr().err
    same_tree(reference, tokens)


def test_a_shard_whose_sidecar_is_intact_but_file_was_replaced_is_redone(tokens, reference, study, capsys):
    shutil.copy(tokens / "shards" / "shard-00000.safetensors", tokens / "shards" / "shard-00002.safetensors")
    assert main(encode_args(study, tokens, "--resume")) == 0
    assert "sha256" in capsys.readouterr().err
    same_tree(reference, tokens)


def test_damaged_codec_weights_are_one_line_in_registry_check(study, tmp_path, capsys):
    registry = tmp_path / "registry.yaml"
    codec = tmp_path / "labs"
    from mmtok.plugins import get_plugin_manager

    shutil.copytree(get_plugin_manager().pretrained("tabular/diabetes-labs-fsq").path, codec)
    truncate(codec / "model.safetensors", 100)
    registry.write_text((study / "registry.yaml").read_text().replace("tabular/diabetes-labs-fsq", str(codec)))
    assert main(["registry", "check", "--registry", str(registry)]) == 1
    err = capsys.readouterr().err
    assert "labs/model.safetensors: codec weights is damaged" in err and "Traceback" not in err
    one_line_error(capsys, encode_args(study, tmp_path / "out")[:-1] + ["--registry", str(registry), "--quiet"],
                   "model.safetensors")


# ---------------------------------------------------------------------------- token ids out of range
def test_ids_outside_the_vocabulary_are_refused_when_the_folder_is_opened(tokens, tmp_path, capsys):
    """An id past the vocabulary in a row no mask would pick: training refuses before step 0."""
    shard = tokens / "shards" / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    start = 8 + n + header["tok_vitals/ids"]["data_offsets"][0]
    data[start:start + 4] = struct.pack("<i", 64)  # the vitals vocabulary is [0, 64)
    shard.write_bytes(bytes(data))
    one_line_error(capsys, ["train", "--tokens", str(tokens), "--out", str(tmp_path / "run"), "--quiet"],
                   "shard-00002.safetensors", "tok_vitals", "[0, 64)")


# ---------------------------------------------------------------------------- indexes
def test_a_missing_shard_or_a_torn_index_is_one_line(tokens, tmp_path, capsys):
    args = ["decode", str(tokens), "--sample", "p000", "--stream", "tok_labs", "--out", str(tmp_path / "x.npy")]
    (tokens / "shards" / "shard-00002.safetensors").unlink()
    one_line_error(capsys, args, "shard-00002.safetensors", "missing", "--resume")
    index = json.loads((tokens / "index.json").read_text())
    del index["samples"]
    (tokens / "index.json").write_text(json.dumps(index))
    one_line_error(capsys, args, "index.json", "samples")
    (tokens / "index.json").write_text('{"streams": {')
    one_line_error(capsys, args, "index.json", "cannot read")


def test_encode_resume_cleans_what_a_killed_index_write_left(tokens, reference, study):
    (tokens / ".index.json.abc123.tmp").write_text('{"half')
    (tokens / "index.json").unlink()
    assert main(encode_args(study, tokens, "--resume")) == 0
    same_tree(reference, tokens)


# ---------------------------------------------------------------------------- training runs
@pytest.fixture(scope="session")
def straight(reference, tmp_path_factory) -> Path:
    """An uninterrupted 4-step run: what every recovery must reproduce byte for byte."""
    run = tmp_path_factory.mktemp("straight") / "run"
    Trainer(reference, run, TrainConfig.model_validate(TRAIN), progress=False).fit()
    return run


def interrupted(reference, run: Path) -> None:
    Trainer(reference, run, TrainConfig.model_validate(TRAIN), progress=False).fit(max_steps=3)


def finish_and_compare(reference, run: Path, straight: Path) -> None:
    Trainer(reference, run, TrainConfig.model_validate(TRAIN), progress=False).fit()
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(straight / "checkpoints" / "step-000004" / name)
        b = load_file(run / "checkpoints" / "step-000004" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert records(straight) == records(run)  # the log rewritten from the checkpoint on, nothing doubled


def records(run: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in out]


def break_newest_weights(ck: Path) -> None:
    truncate(ck / "step-000003" / "model.safetensors", 200)


def break_newest_optimizer(ck: Path) -> None:
    lie_about_header_length(ck / "step-000003" / "optimizer.safetensors")


def drop_newest_state(ck: Path) -> None:
    (ck / "step-000003" / "state.json").unlink()


def tear_latest(ck: Path) -> None:
    (ck / "latest.json").write_text('{"checkpoint": "step-0')


def latest_points_nowhere(ck: Path) -> None:
    (ck / "latest.json").write_text('{"checkpoint": "step-000009", "step": 9}')


@pytest.mark.parametrize("damage, said", [
    (break_newest_weights, "step-000003 weights is damaged"),
    (break_newest_optimizer, "optimizer state is damaged"),
    (drop_newest_state, "has no state.json"),
    (tear_latest, "latest.json is damaged"),
    (latest_points_nowhere, "does not exist"),
])
def test_resume_falls_back_to_the_newest_intact_checkpoint(damage, said, reference, straight, tmp_path, capsys):
    run = tmp_path / "run"
    interrupted(reference, run)
    damage(run / "checkpoints")
    capsys.readouterr()
    finish_and_compare(reference, run, straight)
    err = capsys.readouterr().err
    assert said in err, err


def test_a_torn_last_metrics_line_is_dropped_on_resume(reference, straight, tmp_path, capsys):
    run = tmp_path / "run"
    interrupted(reference, run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "lo')  # a writer killed mid-line
    finish_and_compare(reference, run, straight)
    assert "torn last line" in capsys.readouterr().err


def test_no_intact_checkpoint_is_one_line(reference, tmp_path, capsys):
    run = tmp_path / "run"
    interrupted(reference, run)
    for ck in (run / "checkpoints").glob("step-*"):
        truncate(ck / "model.safetensors")
    (tmp_path / "train.json").write_text(json.dumps(TRAIN))  # YAML is a superset of JSON
    one_line_error(capsys, ["train", "--tokens", str(reference), "--out", str(run), "--quiet",
                            "--config", str(tmp_path / "train.json")], "every checkpoint is damaged")
    one_line_error(capsys, ["embed", str(run), "--tokens", str(reference), "--out", str(tmp_path / "e.st")],
                   "no usable checkpoint")


def test_a_config_of_the_wrong_type_is_one_line(reference, tmp_path, capsys):
    (tmp_path / "train.yaml").write_text("- 1\n- 2\n")
    one_line_error(capsys, ["train", "--tokens", str(reference), "--out", str(tmp_path / "run"),
                            "--config", str(tmp_path / "train.yaml")], "train.yaml", "mapping")


# ---------------------------------------------------------------------------- overwrite, locks, bad --out
def test_fit_codec_refuses_an_existing_codec_without_force(study, tmp_path, capsys):
    out = tmp_path / "vitals"
    args = ["fit-codec", str(study / "manifest.json"), "--registry", str(study / "registry.yaml"),
            "--stream", "tok_vitals", "--steps", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0
    before = (out / "model.safetensors").read_bytes()
    one_line_error(capsys, args, "already holds a codec", "--force")
    assert (out / "model.safetensors").read_bytes() == before
    assert main([*args, "--force"]) == 0


def test_encode_overwrite_replaces_a_failed_run(study, reference, tmp_path, capsys):
    out = tmp_path / "tokens"
    out.mkdir()
    (out / "run.json").write_text("{}")  # a run with other settings, e.g. one that failed
    one_line_error(capsys, encode_args(study, out), "--overwrite")
    one_line_error(capsys, encode_args(study, out, "--resume"), "another manifest")
    assert main(encode_args(study, out, "--overwrite")) == 0
    same_tree(reference, out)
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    one_line_error(capsys, encode_args(study, mine, "--overwrite"), "not an `mmtok encode` output")
    assert (mine / "thesis.tex").exists()


def test_an_out_that_is_a_file_is_one_line(study, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    one_line_error(capsys, encode_args(study, tmp_path / "taken"), "not a folder")


def test_a_second_writer_is_refused_naming_the_first(study, reference, tmp_path, capsys):
    out = tmp_path / "tokens"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmtok.io import OutputLock\n"
                               f"with OutputLock({str(out)!r}, 'encode'):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_line_error(capsys, encode_args(study, out), "is being written by `mmtok encode`",
                              f"pid {holder.pid}")
        assert "another --out" in line
        one_line_error(capsys, ["train", "--tokens", str(reference), "--out", str(out)], f"pid {holder.pid}")
        # under torchrun, rank 0's refusal reaches rank 1 too: both exit, nobody waits at a barrier
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "mmtok.cli", *encode_args(study, out)], capture_output=True, text=True,
                             timeout=240)
        assert run.returncode != 0 and "is being written by" in run.stderr and "rank 0 could not prepare" in run.stderr
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "mmtok.cli", "train", "--tokens", str(reference), "--out", str(out), "--quiet"],
                             capture_output=True, text=True, timeout=240)
        assert run.returncode != 0 and "is being written by" in run.stderr and "rank 0 could not lock" in run.stderr
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock: no stale lock
    with OutputLock(out, "encode"):
        pass


def test_two_encoders_started_together_never_mix(study, reference, tmp_path):
    """Two writers on one --out, started together, 12 times: one wins, the other is refused
    (locked, or the folder already holds a run), and the folder is the reference, byte for byte."""
    for round in range(12):
        out = tmp_path / f"round{round}"
        results: list[object] = [None, None]
        barrier = threading.Barrier(2)

        def run(i: int) -> None:
            barrier.wait()
            try:
                encode_manifest(study / "manifest.json", out, registry_path=study / "registry.yaml",
                                shard_size=16, progress=False)
                results[i] = "ok"
            except MmtokError as err:
                results[i] = str(err)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("ok") == 1, results
        loser = next(r for r in results if r != "ok")
        assert "is being written by" in loser or "already holds an encode run" in loser, loser
        same_tree(reference, out)


def test_a_write_error_is_one_line(study, tmp_path):
    """A file size limit hit mid-encode (like a full disk): one line naming the file, exit 1."""
    import resource

    out = tmp_path / "tokens"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))

    run = subprocess.run([sys.executable, "-m", "mmtok.cli", *encode_args(study, out)], capture_output=True,
                         text=True, preexec_fn=limit, timeout=300)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "File too large" in lines[0], run.stderr
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))
    assert os.access(out, os.W_OK)


def test_safetensors_get_the_permissions_of_the_json_beside_them(reference, straight):
    shards = sorted(reference.glob("shards/*.safetensors"))
    assert shards and all(s.stat().st_mode == s.with_suffix(".json").stat().st_mode for s in shards)
    ck = straight / "checkpoints" / "step-000004"
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (ck / name).stat().st_mode == (ck / "state.json").stat().st_mode, name
