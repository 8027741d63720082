"""`mmtok encode` killed with SIGKILL mid-run and resumed gives byte-identical output; under
`torchrun --nproc_per_node=2` (gloo, CPU) the merged output equals the single-process one.
Real data: the clinic example (442 diabetes patients, three streams, some missing)."""

import filecmp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLINIC = ROOT / "examples" / "clinic"
ARGS = ["encode", str(CLINIC / "manifest.json"), "--registry", str(CLINIC / "registry.yaml"),
        "--shard-size", "2", "--batch-size", "2", "--quiet"]


def encode(out, *extra, check=True):
    run = subprocess.run([sys.executable, "-m", "mmtok.cli", *ARGS, "--out", str(out), *extra],
                         capture_output=True, text=True, timeout=600)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def test_sigkill_then_resume_is_byte_identical(tmp_path):
    reference = tmp_path / "reference"
    encode(reference)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mmtok.cli", *ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("*.json"))) < 20:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "shards").glob("*.json")))
    assert 20 <= done < 221, done  # killed mid-run (221 shards in all)
    assert not (out / "index.json").exists()
    again = encode(out, check=False)  # without --resume the folder is protected
    assert again.returncode == 1 and "--resume" in again.stderr
    encode(out, "--resume")
    same_tree(reference, out)


# `mmtok encode`, with every shard write recorded in $SHARD_LOG/rank-$RANK (run by torchrun)
RECORDING_ENCODE = """
import os
import sys

import mmtok.encode
from mmtok.cli import main

write = mmtok.encode.write_shard


def write_and_record(directory, i, *args):
    with open(os.path.join(os.environ["SHARD_LOG"], "rank-" + os.environ["RANK"]), "a") as fh:
        fh.write(f"{i}\\n")
    write(directory, i, *args)


mmtok.encode.write_shard = write_and_record
sys.exit(main(sys.argv[1:]))
"""


def test_torchrun_two_ranks_equals_one_process(tmp_path):
    """The merged output equals the single-process one, and each rank wrote its own shards
    (rank r: r, r + 2, ...), each shard once."""
    single = tmp_path / "single"
    encode(single)
    multi = tmp_path / "multi"
    script, log = tmp_path / "recording_encode.py", tmp_path / "log"
    script.write_text(RECORDING_ENCODE)
    log.mkdir()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(script), *ARGS, "--out", str(multi)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "SHARD_LOG": str(log)})
    assert run.returncode == 0, run.stderr[-3000:]
    same_tree(single, multi)
    n = len(list((single / "shards").glob("*.json")))
    written = {r: [int(line) for line in (log / f"rank-{r}").read_text().split()] for r in (0, 1)}
    assert n == 221 and written == {0: list(range(0, n, 2)), 1: list(range(1, n, 2))}, written
