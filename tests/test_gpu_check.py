"""benchmarks/gpu_check.sh: its dry run passes every step here, its report lists failed steps as
failed, and the setup step's entry-point metadata makes plugins discoverable without pip."""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["setup", "env", "device_tests", "bench_train", "bench_encode", "bench_ct_attention", "bench_nir"]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_passes_every_step(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("MMTOK_TEST_DEVICE", None)
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["dry_run"] is True and results["ok"] is True
    assert [s["name"] for s in results["steps"]] == STEPS
    assert {s["name"]: s["status"] for s in results["steps"]} == dict.fromkeys(STEPS, "passed")
    for s in results["steps"]:
        assert Path(s["log"]).is_file() and s["seconds"] >= 0 and s["timeout_s"] > 0, s
        if s["name"].startswith("bench_"):
            assert isinstance(s["result"], dict) and s["headline"], s["name"]  # the benchmark's JSON, kept
    tests = next(s for s in results["steps"] if s["name"] == "device_tests")
    assert tests["pytest"]["tests"] > 10 and tests["pytest"]["failures"] == tests["pytest"]["errors"] == 0
    assert results["env"]["requested_device"] == "cpu"
    md = (out / "results.md").read_text()
    assert "| step | status | seconds | timeout s | headline |" in md
    for name in STEPS:
        assert f"| {name} | passed |" in md
    assert "# GPU check: all steps passed" in res.stdout


def test_report_lists_failed_timed_out_and_silent_steps(tmp_path):
    report = _module("gpu_check_report")
    (tmp_path / "bench_ok.json").write_text(json.dumps({"contenders": []}))
    (tmp_path / "bench_bad.log").write_text("starting\nTraceback (most recent call last):\nRuntimeError: CUDA error\n")
    (tmp_path / "tests.xml").write_text('<testsuites><testsuite tests="2" failures="0" errors="0" skipped="2">'
                                        '<testcase classname="t" name="a"><skipped/></testcase>'
                                        '<testcase classname="t" name="b"><skipped/></testcase></testsuite></testsuites>')
    steps = tmp_path / "steps.jsonl"
    for name, rc, extra in [("bench_ok", 0, ["--json", str(tmp_path / "bench_ok.json")]),
                            ("bench_bad", 1, ["--log", str(tmp_path / "bench_bad.log")]),
                            ("bench_slow", 124, []),
                            ("bench_silent", 0, ["--json", str(tmp_path / "never_written.json")]),
                            ("device_tests", 0, ["--junit", str(tmp_path / "tests.xml")])]:
        assert report.main(["record", "--steps", str(steps), "--name", name, "--rc", str(rc), "--start", "1",
                            "--end", "3.5", "--timeout", "60", *extra, "--", "python", "x.py"]) == 0
    assert report.main(["report", "--out", str(tmp_path)]) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    status = {s["name"]: s["status"] for s in results["steps"]}
    assert status == {"bench_ok": "passed", "bench_bad": "failed", "bench_slow": "timeout",
                      "bench_silent": "failed", "device_tests": "failed"}
    assert results["ok"] is False and results["steps"][0]["seconds"] == 2.5
    assert results["steps"][0]["command"] == ["python", "x.py"]
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# GPU check: FAILED")
    assert "| bench_ok | passed | 2.5 | 60 |" in md
    assert "| bench_bad | **failed** | 2.5 | 60 |" in md and "RuntimeError: CUDA error" in md
    assert "| bench_slow | **timeout** |" in md
    assert "never_written.json was not written" in md
    assert "every device test was skipped" in md and "0 passed, 0 failed, 2 skipped" in md


def test_report_survives_a_changed_benchmark_json(tmp_path):
    report = _module("gpu_check_report")
    (tmp_path / "t.json").write_text(json.dumps({"contenders": [{"name": "mmtok"}]}))  # no timing
    report.main(["record", "--steps", str(tmp_path / "steps.jsonl"), "--name", "bench_train", "--rc", "0",
                 "--json", str(tmp_path / "t.json"), "--", "x"])
    assert report.main(["report", "--out", str(tmp_path)]) == 0
    step = json.loads((tmp_path / "results.json").read_text())["steps"][0]
    assert step["status"] == "passed" and step["headline"][0].startswith("(no headline: KeyError")
    assert step["result"] == {"contenders": [{"name": "mmtok"}]}


def test_status_of_exit_codes():
    report = _module("gpu_check_report")
    assert [report.status_of(rc) for rc in (0, 1, 2, 124, 137)] == ["passed", "failed", "failed", "timeout",
                                                                    "timeout"]


def test_entry_point_metadata_finds_every_plugin(tmp_path):
    """What the setup step writes where mmtok is on PYTHONPATH but not pip-installed: a dist-info
    per project, whose ``mmtok`` entry points importlib.metadata reads (pyproject.toml is the source)."""
    gpu_env = _module("gpu_env")
    plugins = sorted(ROOT.glob("plugins/*/pyproject.toml"))
    for pp in [ROOT / "pyproject.toml", *plugins]:
        gpu_env.write_dist_info(tmp_path, gpu_env.read_project(pp))
    found = {d.metadata["Name"]: d for d in importlib.metadata.distributions(path=[str(tmp_path)])}
    assert sorted(found) == sorted(["mmtok", *(f"mmtok-plugin-{p.parent.name.split('-')[-1]}" for p in plugins)])
    eps = {ep.name: ep.value for d in found.values() for ep in d.entry_points if ep.group == "mmtok"}
    assert set(eps) == set(gpu_env.PLUGINS) and eps["ct"] == "mmtok_plugin_ct.plugin"
    assert found["mmtok"].version == importlib.metadata.version("mmtok")
    # the installed plugins' own metadata names the same entry points
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="mmtok")}
    assert {k: installed[k] for k in eps if k in installed} == {k: eps[k] for k in eps if k in installed}


def test_pyproject_fallback_parser_matches_tomllib(monkeypatch):
    """Python 3.10 has no tomllib: the pattern-based reader gives the same three things."""
    gpu_env = _module("gpu_env")
    pp = ROOT / "plugins" / "mmtok-plugin-nir" / "pyproject.toml"
    real = gpu_env.read_project(pp)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib -> ImportError
    assert gpu_env.read_project(pp) == real == {"name": "mmtok-plugin-nir", "version": "0.1.0",
                                                "entry_points": {"nir": "mmtok_plugin_nir.plugin"}}
