"""The Python half of ``benchmarks/gpu_check.sh``: step records, the environment step and the
summary (``results.json`` + ``results.md``).

    python3 -I benchmarks/gpu_check_report.py record --steps OUT/steps.jsonl --name NAME --rc RC \\
        --start T0 --end T1 --timeout S --log OUT/NAME.log [--json OUT/NAME.json] [--status S] [--note T] -- CMD...
    python3 benchmarks/gpu_check_report.py env --device cuda|cpu --out OUT/env.json
    python3 -I benchmarks/gpu_check_report.py report --out OUT [--dry-run]

``record`` appends one JSON line per step (status from the exit code: 0 passed, 124 / 137 timeout,
else failed; or ``--status`` given). ``report`` reads those lines, each step's benchmark JSON and
the device tests' JUnit XML, writes ``results.json`` (every step: status, seconds, timeout, log,
command, headline numbers, the benchmark's whole JSON) and ``results.md`` (a table: step, status,
seconds, headline), prints the table and exits 1 if any step did not pass. ``record`` and
``report`` use the standard library only; ``env`` imports torch.
"""

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

PASSED = "passed"
TIMEOUT_CODES = (124, 137)  # timeout(1): 124 after TERM, 137 (128 + KILL) after --kill-after


# ---------------------------------------------------------------------------- record
def status_of(rc: int) -> str:
    if rc == 0:
        return PASSED
    return "timeout" if rc in TIMEOUT_CODES else "failed"


def record(args) -> int:
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    rec = {"name": args.name, "status": args.status or status_of(args.rc), "rc": args.rc,
           "seconds": round(max(args.end - args.start, 0.0), 2), "timeout_s": args.timeout,
           "log": args.log or None, "json": args.json or None, "command": cmd}
    if args.note:
        rec["note"] = args.note
    if args.junit:
        rec["junit"] = args.junit
    with open(args.steps, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"   -> {rec['status']} (exit {rec['rc']}, {rec['seconds']} s)", flush=True)
    return 0


# ---------------------------------------------------------------------------- env
def env(args) -> int:
    info = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
            "machine": platform.machine(), "requested_device": args.device}
    smi = shutil.which("nvidia-smi")
    if smi:
        res = subprocess.run([smi], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = res.stdout.strip() or res.stderr.strip()
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["gpus"] = [line.strip() for line in q.stdout.splitlines() if line.strip()]
        print(info["nvidia_smi"], flush=True)
    else:
        info["nvidia_smi"] = None
        print("nvidia-smi: not on PATH", flush=True)
    import torch

    info.update({"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                 "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()})
    if torch.cuda.is_available():
        info.update({"device_name": torch.cuda.get_device_name(), "device_count": torch.cuda.device_count(),
                     "capability": ".".join(map(str, torch.cuda.get_device_capability())),
                     "bf16_supported": torch.cuda.is_bf16_supported(),
                     "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)})
    try:
        import mmtok
        from mmtok.plugins import get_plugin_manager

        info["mmtok"] = mmtok.__version__
        info["plugins"] = {p.name: (p.version, p.errors or "ok") for p in get_plugin_manager().plugins}
    except Exception as err:  # noqa: BLE001 - the environment step reports, the later steps fail
        info["mmtok_error"] = f"{type(err).__name__}: {err}"
    Path(args.out).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}, indent=1))
    if args.device.startswith("cuda") and not info["cuda_available"]:
        print(f"requested {args.device}, but torch {info['torch']} sees no CUDA device", file=sys.stderr)
        return 1
    return 1 if "mmtok_error" in info else 0


# ---------------------------------------------------------------------------- headlines
def _f(v, fmt: str = ".3g") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "?"


def _ms(timing: dict) -> str:
    return f"{_f(1e3 * timing['median_s'])} ms"


def head_env(res: dict) -> list[str]:
    out = [f"torch {res.get('torch')} (CUDA {res.get('torch_cuda')}), Python {res.get('python')}"]
    if res.get("device_name"):
        out.append(f"{res['device_name']} (sm {res.get('capability')}, {res.get('memory_gib')} GiB)")
    else:
        out.append("no CUDA device")
    bad = [k for k, (_, e) in (res.get("plugins") or {}).items() if e != "ok"]
    if bad:
        out.append("plugins failing: " + ", ".join(bad))
    return out


def head_train(res: dict) -> list[str]:
    out = []
    for c in res.get("contenders", []):
        out.append(f"{c.get('name')}: {_ms(c['timing'])}/step, {_f(c.get('tokens_per_s'), ',.0f')} tok/s, "
                   f"MFU {_f(c.get('mfu'), '.3f')}")
    peak = res.get("peak") or {}
    if isinstance(peak.get("peak_flops_per_s"), (int, float)):
        out.append(f"matmul peak {_f(peak['peak_flops_per_s'] / 1e12)} TFLOP/s")
    return out


def head_encode(res: dict) -> list[str]:
    out = []
    for c in res.get("codecs", []):
        r = c.get("ratios", {})
        ratios = ", ".join(f"{k} {_f(v, '.2f')}" for k, v in r.items() if k.endswith("_over_bare"))
        out.append(f"{c.get('codec')}: {ratios}")
    return out


def head_ct(res: dict) -> list[str]:
    out = [f"{c['name']}: {_ms(c['timing'])}" for c in res.get("contenders", [])[:1]]
    out += [f"{k} / plain {_f(v, '.2f')}" for k, v in (res.get("ratios") or {}).items()]
    return out


def head_nir(res: dict) -> list[str]:
    out = [f"{r['name']} @ {r.get('tokens')}: {_ms(r['timing'])}" for r in res.get("layers", [])
           if r.get("tokens") == max(x.get("tokens", 0) for x in res["layers"])]
    if "pretrain_spectra_per_s" in res:
        out.append(f"pretraining {_f(res['pretrain_spectra_per_s'], ',.1f')} spectra/s")
    return out


HEADLINES = {"env": head_env, "bench_train": head_train, "bench_encode": head_encode,
             "bench_ct_attention": head_ct, "bench_nir": head_nir}


def junit_counts(path: Path) -> dict | None:
    """tests / failures / errors / skipped of a pytest JUnit XML file (None if absent or unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["failed_tests"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                              if c.find("failure") is not None or c.find("error") is not None]
    return counts


def _tail(path: str | None, n: int = 3) -> str:
    try:
        lines = [s for s in Path(path).read_text(errors="replace").splitlines() if s.strip()]
    except (OSError, TypeError):
        return ""
    return " / ".join(lines[-n:])[-300:]


def summarise(step: dict) -> dict:
    """One step record, completed: its JSON result, headline numbers, pytest counts."""
    step = dict(step)
    step["result"], step["headline"] = None, []
    if step.get("json"):
        try:
            step["result"] = json.loads(Path(step["json"]).read_text())
        except FileNotFoundError:
            if step["status"] == PASSED:
                step["status"] = "failed"
                step["note"] = f"exit 0 but {step['json']} was not written"
        except (OSError, ValueError) as err:
            step["status"] = "failed"
            step["note"] = f"{step['json']}: unreadable JSON ({err})"
    fn = HEADLINES.get(step["name"])
    if fn and isinstance(step["result"], dict):
        try:
            step["headline"] = fn(step["result"])
        except Exception as err:  # noqa: BLE001 - a changed JSON layout must not lose the report
            step["headline"] = [f"(no headline: {type(err).__name__}: {err})"]
    if step["name"] == "device_tests" and step.get("junit"):
        counts = junit_counts(Path(step["junit"]))
        step["pytest"] = counts
        if counts:
            passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
            step["headline"] = [f"{passed} passed, {counts['failures'] + counts['errors']} failed, "
                                f"{counts['skipped']} skipped"] + [f"FAILED {t}" for t in counts["failed_tests"][:5]]
            if step["status"] == PASSED and counts["tests"] and counts["skipped"] == counts["tests"]:
                step["status"] = "failed"
                step["note"] = "every device test was skipped"
    if step["status"] != PASSED and not step.get("note"):
        step["note"] = _tail(step.get("log"))
    return step


# ---------------------------------------------------------------------------- report
def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(results: dict) -> str:
    mode = "dry run (CPU, tiny sizes: plumbing only, no GPU numbers)" if results["dry_run"] else "GPU run"
    env = results.get("env") or {}
    where = env.get("device_name") or "no CUDA device"
    lines = [f"# GPU check: {'all steps passed' if results['ok'] else 'FAILED'}", "",
             f"{mode}; {where}; torch {env.get('torch', '?')}; {results['wall_s']} s in all; "
             f"written {results['written']}.", "",
             "| step | status | seconds | timeout s | headline |", "|---|---|---:|---:|---|"]
    for s in results["steps"]:
        head = "; ".join(s["headline"])
        if s.get("note") and s["status"] != PASSED:
            head = (head + "; " if head else "") + f"note: {s['note']}"
        status = s["status"] if s["status"] == PASSED else f"**{s['status']}**"
        lines.append(f"| {s['name']} | {status} | {s['seconds']} | {s['timeout_s']} | {_cell(head)} |")
    lines += ["", "Logs: `<step>.log` beside this file; every number is in `results.json`."]
    return "\n".join(lines) + "\n"


def report(args) -> int:
    out = Path(args.out)
    steps = []
    steps_file = out / "steps.jsonl"
    if steps_file.exists():
        steps = [json.loads(s) for s in steps_file.read_text().splitlines() if s.strip()]
    steps = [summarise(s) for s in steps]
    env_json = out / "env.json"
    env = json.loads(env_json.read_text()) if env_json.exists() else None
    results = {"dry_run": args.dry_run, "ok": bool(steps) and all(s["status"] == PASSED for s in steps),
               "wall_s": round(sum(s["seconds"] for s in steps), 1),
               "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "env": env, "steps": steps}
    if args.wall is not None:
        results["wall_s"] = round(args.wall, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = markdown(results)
    (out / "results.md").write_text(md)
    print(md)
    return 0 if results["ok"] else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("record", help="append one step's record")
    r.add_argument("--steps", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--start", type=float, default=0.0)
    r.add_argument("--end", type=float, default=0.0)
    r.add_argument("--timeout", type=int, default=0)
    r.add_argument("--log", default="")
    r.add_argument("--json", default="")
    r.add_argument("--status", choices=[PASSED, "failed", "timeout", "skipped"])
    r.add_argument("--note", default="")
    r.add_argument("--junit", default="")
    r.add_argument("command", nargs=argparse.REMAINDER)
    e = sub.add_parser("env", help="versions, nvidia-smi, the CUDA device")
    e.add_argument("--device", default="cuda")
    e.add_argument("--out", required=True)
    s = sub.add_parser("report", help="results.json + results.md from the step records")
    s.add_argument("--out", required=True)
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--wall", type=float, help="the script's wall time (default: the sum of the steps)")
    args = p.parse_args(argv)
    return {"record": record, "env": env, "report": report}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
