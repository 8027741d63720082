"""docs/tutorial.md runs as written: every `<!-- write: PATH -->` block is written to PATH and
every bash block runs, in order, in an empty folder. One substitution: the plugin is installed
with ``pip install --target`` into the test's folder (not into the environment running the
suite, where its entry point would show up in every other test), and PYTHONPATH points there.

The numbers the tutorial prints must be the ones in its results block."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r"(?:<!-- (write: (?P<path>\S+)|results) -->\n)?```(?P<lang>\w+)\n(?P<body>.*?)```", re.S)
INSTALL = "pip install -e './mmtok-plugin-ecg[dev]'"


def blocks():
    for m in BLOCK.finditer(TUTORIAL.read_text()):
        yield m.group("path"), m.group("lang"), m.group("body"), m.group(0).startswith("<!-- results")


def results_table(report: dict, probe: str) -> str:
    """The results block of the tutorial, from report.json."""
    ev = report["streams"][0]
    lines = [f"{ev['held_out']} held-out beats, {ev['train']} training beats",
             "method     accuracy  balanced-accuracy  log-loss"]
    for method, m in ev["classification"].items():
        loss = "" if m["log_loss"] is None else f"{m['log_loss']:.3f}"
        lines.append(f"{method:<10} {m['accuracy']:.3f}     {m['balanced_accuracy']:.3f}              {loss}")
    recall = ev["classification"]["model"]["per_class_recall"]
    lines.append("model recall per class: " + ", ".join(
        f"{c}: {recall[c]:.3f} ({ev['support'][c]} beats)" for c in sorted(recall, key=int)))
    return "\n".join([*lines, f"step 7, {probe}"]) + "\n"




def test_the_tutorial_runs_end_to_end_and_prints_its_numbers(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, MMTOK_ROOT=str(ROOT), OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    work = tmp_path / "work"
    work.mkdir()
    expected, printed_lines = None, []
    for path, lang, body, is_results in blocks():
        if is_results:
            expected = body
        elif path is not None:
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(body)
        elif lang == "bash":
            body = body.replace(INSTALL, f"{sys.executable} -m pip install -q --no-deps --no-build-isolation "
                                         f"--no-index --target {site} ./mmtok-plugin-ecg")
            run = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=work, env=env, capture_output=True,
                                 text=True, timeout=1200)
            assert run.returncode == 0, f"$ {body}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
            printed_lines += run.stdout.splitlines()
    report = json.loads((work / "report.json").read_text())
    probe = next(line for line in printed_lines if line.startswith("linear probe"))
    printed = results_table(report, probe)
    if os.environ.get("MMTOK_WRITE_TUTORIAL"):  # refresh the results block after changing the tutorial
        text = TUTORIAL.read_text()
        TUTORIAL.write_text(text.replace(f"<!-- results -->\n```text\n{expected}```",
                                         f"<!-- results -->\n```text\n{printed}```"))
        return
    same_numbers(printed, expected)


NUMBER = re.compile(r"\d+\.\d+|\d+")


def same_numbers(printed: str, expected: str) -> None:
    """The data-only lines (split sizes, majority, unigram) exactly; the lines that rest on a
    training run (model, probe) to 0.05, which float rounding on another CPU stays within."""
    hint = f"the tutorial's numbers are out of date; rerun with MMTOK_WRITE_TUTORIAL=1:\n{printed}"
    got, want = printed.splitlines(), expected.splitlines()
    assert len(got) == len(want), hint
    for a, b in zip(got, want):
        if a.startswith(("model", "step 7")):
            xs, ys = [float(x) for x in NUMBER.findall(a)], [float(y) for y in NUMBER.findall(b)]
            assert NUMBER.sub("#", a) == NUMBER.sub("#", b) and len(xs) == len(ys), hint
            assert all(abs(x - y) <= 0.05 * max(1.0, abs(y)) for x, y in zip(xs, ys)), hint
        else:
            assert a == b, hint
