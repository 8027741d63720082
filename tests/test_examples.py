"""The shipped registry.yaml resolves, and the README's main job runs on the real data."""

import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

import mmtok

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_registry_checks_clean():
    assert mmtok.Registry.load(ROOT / "registry.yaml").check() == []


def test_diabetes_example_encodes_and_reports(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "diabetes" / "run.py"),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for key in ("tok_demographics", "tok_vitals", "tok_labs"):
        assert f"| {key} |" in run.stdout
    with safe_open(str(tmp_path / "tokens.safetensors"), "pt") as f:
        assert f.get_tensor("tok_labs/ids").shape == (442, 3)
        assert '"vocab_size": 1000' in f.metadata()["tok_labs"]
