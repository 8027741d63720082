"""A regular (non-editable) `pip install ./plugins/mmtok-plugin-tabular` ships everything:
modalities discovered, pretrained codecs loadable from the installed package data."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installed_tabular_wheel_is_discovered_with_its_pretrained_codecs(tmp_path):
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(ROOT / "plugins" / "mmtok-plugin-tabular")],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    listed = subprocess.run([sys.executable, "-m", "mmtok.cli", "plugins", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    tab = {r["name"]: r for r in json.loads(listed.stdout)}["tabular"]
    assert tab["package"] == "mmtok-plugin-tabular" and tab["version"] == "0.1.0" and not tab["errors"]
    assert {"patient_demographics", "vital_signs", "lab_results", "table"} <= set(
        tab["provides"]["modalities"])
    code = (
        "import mmtok, mmtok_plugin_tabular as t\n"
        "m = mmtok.get_plugin_manager()\n"
        "c = m.load_pretrained('tabular/diabetes-labs-fsq')\n"
        "print(t.__file__)\n"
        "print(c.encode(t.load_diabetes('test').labs).ids.shape)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    module_file, shape = run.stdout.split("\n")[:2]
    assert module_file.startswith(str(site))  # the installed copy, not the source tree
    assert shape == "torch.Size([100, 3])"
