"""`mmtok new-plugin` scaffolds a package that installs with pip, is discovered, and passes
its own generated conformance tests (end to end, in subprocesses)."""

import json
import os
import subprocess
import sys

import pytest

from mmtok.errors import MmtokError
from mmtok.scaffold import new_plugin


def run(args, env=None, cwd=None):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_new_plugin_installs_is_discovered_and_passes_its_tests(tmp_path):
    out = run([sys.executable, "-m", "mmtok.cli", "new-plugin", "demo", "--dir", str(tmp_path / "x")])
    assert out.returncode == 0, out.stderr
    pkg = tmp_path / "x" / "mmtok-plugin-demo"
    assert (pkg / "pyproject.toml").is_file()
    site = tmp_path / "site"
    pip = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
               "--no-index", "--target", str(site), str(pkg)])
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    listed = run([sys.executable, "-m", "mmtok.cli", "plugins", "--json"], env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["demo"]["package"] == "mmtok-plugin-demo" and rows["demo"]["version"] == "0.1.0"
    assert rows["demo"]["errors"] == []
    assert rows["demo"]["provides"] == {"modalities": ["demo_signal"], "codecs": ["demo-fsq"]}
    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
                env=env, cwd=tmp_path)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout


def test_new_plugin_refuses_bad_names_and_existing_dirs(tmp_path):
    with pytest.raises(MmtokError, match="lowercase"):
        new_plugin("Bad-Name", tmp_path)
    new_plugin("ok", tmp_path)
    with pytest.raises(MmtokError, match="not empty"):
        new_plugin("ok", tmp_path)
