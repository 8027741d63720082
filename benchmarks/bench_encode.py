"""End-to-end `encode_manifest` vs the bare codec, a naive per-sample loop, and peak memory.

    python benchmarks/bench_encode.py [--quick] [--workers N] [--json out.json] [--profile]

Real data: the 800 PneumoniaMNIST chest X-rays of ``tests/data/pneumoniamnist_subset.npz``
(600 + 200, loaded with ``examples/families/fit_real.py:xrays()``, intensities 0-1) are written as
one ``.npy`` file each, ``(1, 28, 28)`` float32, into a temporary folder with a ``manifest.json``
that uses the built-in ``image`` modality (``mmtok.modalities.Image``, field ``flux``). Two
``image-patch`` codecs (``channels 1, size [28, 28], patch [4, 4]``: 49 FSQ tokens per image) are
fitted briefly on the 600 training images with ``mmtok.fit_codec``, saved with
``save_pretrained``, and referenced by ``checkpoint:`` from a one-stream registry each:

* ``default``: the codec's default width (hidden 64, 2 residual blocks), ~8 MFLOP per image;
* ``heavy``: hidden 256, 4 residual blocks, ~0.25 GFLOP per image: the same files, I/O and
  validation, only more compute per sample, so the two rows isolate how the end-to-end / bare
  ratio depends on codec cost.

Sections (see benchmarks/README.md for what each ratio means):

1. ``encode_manifest(...)`` (fresh out dir per call, ``progress=False``, ``batch_size 64``,
   ``shard_size 1024``), with ``workers 0`` and ``workers N``, against the bare codec forward:
   ``codec.encode(batch)`` on the same 800 images already collated in memory in the same batches
   of 64, under ``torch.inference_mode()``. Ratio = end-to-end samples/s / bare samples/s.
2. The same against a naive per-sample loop (``np.load``, ``torch.from_numpy``, ``Image`` of batch
   size 1, ``codec.encode`` alone, ids appended to a list, one safetensors file at the end).
3. Peak RSS of a fresh ``python -m mmtok.cli encode ... --quiet`` process (workers 0) for the
   manifest (800 samples) and for a 10x manifest (the same files listed 10 times with distinct
   ids: 8000 samples, 8 shards): ``ru_maxrss`` of that process from ``os.wait4``, taken in a
   small wrapper process (see `_child_peak` for why not directly).

Before timing, the script checks that the end-to-end ids equal the bare codec's ids and counts the
naive loop's differing tokens (batch-1 convolutions may round differently). With ``--profile``
it runs one ``encode_manifest`` (workers 0) per codec under cProfile and prints the top entries
and a breakdown of the end-to-end time by stage.

Timing: ``time.perf_counter``; one warm-up call each; then ``repeats`` rounds in which every
contender processes the whole data set once, in alternating order (reversed every other round)
so slow drift hits all of them; the median time per round gives samples/s, the interquartile
range is in the JSON. ``gc.collect()`` runs (untimed) before every call. The thread count is
left at torch's default. CPU time used by other processes during each call is recorded (from
``/proc/stat``) and timings taken under such load are flagged: on a 2-core machine one busy
process slows torch's 2 OpenMP threads by 20x or more.
"""

import argparse
import contextlib
import cProfile
import gc
import importlib.util
import io
import itertools
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import mmtok
from mmtok import Codec, get_plugin_manager
from mmtok.encode import encode_manifest
from mmtok.modalities import Image
from mmtok.shards import TokenShards

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_codec import _cpu_name  # noqa: E402  (one CPU-name helper for both benchmarks)

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
SHARD = 1024
STREAM = "tok_image"
BASE = {"channels": 1, "size": [28, 28], "patch": [4, 4]}
CODECS = {"default": dict(BASE), "heavy": {**BASE, "hidden": 256, "blocks": 4}}
TARGETS = {"e2e_over_bare": 0.8, "e2e_over_naive": 10.0, "peak_rss_ratio": 1.2}


# --------------------------------------------------------------------------- data
def _xrays() -> torch.Tensor:
    """(800, 1, 28, 28) float32 in [0, 1]: 600 train then 200 held-out X-rays."""
    spec = importlib.util.spec_from_file_location("fit_real", ROOT / "examples" / "families" / "fit_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    train, test = mod.xrays()
    return torch.cat([train.flux, test.flux]).contiguous()


def _manifest(path: Path, names: list[str], copies: int) -> None:
    samples = [{"id": name if copies == 1 else f"{name}-c{c}",
                "modalities": {"image": f"data/{name}.npy"}}
               for c in range(copies) for name in names]
    path.write_text(json.dumps({"version": 1, "samples": samples}))


def build_corpus(root: Path, images: torch.Tensor, steps: dict[str, int], copies: int = 10,
                 keys: list[str] | None = None) -> dict:
    """Files, manifests, fitted codecs (``keys`` of `CODECS`, default all) and registries under ``root``."""
    (root / "data").mkdir(parents=True)
    names = [f"xray{i:04d}" for i in range(len(images))]
    for name, x in zip(names, images):
        np.save(root / "data" / f"{name}.npy", x.numpy())
    _manifest(root / "manifest.json", names, 1)
    _manifest(root / "manifest_10x.json", names, 10)
    _manifest(root / "manifest_timed.json", names, copies)
    _manifest(root / "manifest_1.json", names[:1], 1)
    info = {"names": names, "codecs": {}}
    n_train = max(1, min(600, len(images) - 1))
    train = Image(flux=images[:n_train])
    for key in keys or list(CODECS):
        cfg = CODECS[key]
        torch.manual_seed(0)
        codec = mmtok.get_plugin_manager().build_codec("image-patch", cfg)
        t0 = time.perf_counter()
        report = mmtok.fit_codec(codec, train, val=Image(flux=images[n_train:]), steps=steps[key],
                                 batch_size=BATCH, progress=False)
        fit_s = time.perf_counter() - t0
        codec.save_pretrained(root / "codecs" / key)
        registry = root / f"registry_{key}.yaml"
        registry.write_text(json.dumps({"version": 1, "streams": {STREAM: {
            "modality": "image", "codec": "image-patch", "config": cfg,
            "vocab_size": codec.vocab_size, "num_tokens": codec.num_tokens,
            "checkpoint": f"codecs/{key}"}}}, indent=1))  # JSON is YAML
        info["codecs"][key] = {"config": cfg, "registry": registry, "fit_steps": steps[key],
                               "fit_s": fit_s, "held_out_nrmse": report.nrmse,
                               "num_tokens": codec.num_tokens, "vocab_size": codec.vocab_size}
    return info


# --------------------------------------------------------------------------- timing
class ForeignLoad:
    """CPU seconds used by *other* processes (machine busy time from /proc/stat minus this
    process and its waited-for children). On a small shared machine a concurrent job makes
    torch's OpenMP threads wait for each other at every parallel region: measured here, one busy
    process on 2 cores made a 5 ms encode take 130 ms. Numbers taken under foreign load are
    flagged rather than trusted."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ok = Path("/proc/stat").is_file()

    def read(self) -> tuple[float, float]:
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        if not self.ok:
            return 0.0, own
        with open("/proc/stat") as f:
            cpu = [int(v) for v in f.readline().split()[1:]]
        busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # minus idle and iowait
        return busy / self.hz, own

    def since(self, mark: tuple[float, float]) -> float:
        busy, own = self.read()
        return max(0.0, (busy - mark[0]) - (own - mark[1]))


LOAD = ForeignLoad()


class Rounds:
    """Each contender processes the whole data set once per round; rounds alternate the order."""

    def __init__(self, repeats: int):
        self.repeats = repeats

    @staticmethod
    def _once(fn, prepare) -> tuple[float, float]:
        """(seconds, CPU seconds used by other processes meanwhile)."""
        if prepare is not None:
            prepare()
        # start every call from a collected heap: otherwise a full collection (~0.1 s with torch
        # loaded) lands in whichever call happens to cross the threshold
        gc.collect()
        mark = LOAD.read()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        return dt, LOAD.since(mark)

    def compare(self, contenders: dict[str, tuple]) -> dict[str, dict]:
        """contenders: name -> (fn, prepare or None, samples per call)."""
        names = list(contenders)
        for name in names:  # warm-up
            fn, prepare, _ = contenders[name]
            self._once(fn, prepare)
        times = {n: [] for n in names}
        foreign = {n: [] for n in names}
        for r in range(self.repeats):
            for name in (names if r % 2 == 0 else reversed(names)):
                fn, prepare, _ = contenders[name]
                dt, load = self._once(fn, prepare)
                times[name].append(dt)
                foreign[name].append(load)
        out = {}
        for name in names:
            s, n = times[name], contenders[name][2]
            q1, _, q3 = statistics.quantiles(s, n=4) if len(s) > 1 else (s[0], s[0], s[0])
            med = statistics.median(s)
            # /proc/stat and os.times() tick in 1/HZ s: allow two ticks of rounding per call
            share = max(0.0, sum(foreign[name]) - 2 * len(s) / LOAD.hz) / sum(s)
            out[name] = {"median_s": med, "q1_s": q1, "q3_s": q3, "min_s": min(s), "repeats": len(s),
                         "samples": n, "samples_per_s": n / med, "times_s": s,
                         "foreign_cpu_s": foreign[name], "foreign_share": share}
        return out


# --------------------------------------------------------------------------- contenders
class EndToEnd:
    """``encode_manifest`` into a fresh folder per call (the previous one is removed untimed)."""

    calls = itertools.count()

    def __init__(self, root: Path, manifest: Path, registry: Path, workers: int, device: str = "cpu"):
        self.root, self.manifest, self.registry, self.workers = root, manifest, registry, workers
        self.device = device
        self.out = None

    def prepare(self) -> None:
        if self.out is not None:
            shutil.rmtree(self.out, ignore_errors=True)
        self.out = self.root / "out" / f"{self.registry.stem}-w{self.workers}-{next(self.calls)}"

    def __call__(self):
        return encode_manifest(self.manifest, self.out, registry_path=self.registry,
                               batch_size=BATCH, shard_size=SHARD, workers=self.workers,
                               progress=False, device=self.device)

    def ids(self) -> torch.Tensor:
        shards = TokenShards(self.out)
        return torch.cat([shards.stream(sid, STREAM).ids for sid in shards.sample_ids])


def bare_encoder(codec: Codec, images: torch.Tensor, device: str = "cpu"):
    """The codec alone on batches already collated in memory (moved to ``device`` per call, like
    the end-to-end path moves each batch; ids back on the CPU)."""
    batches = [Image(flux=images[i:i + BATCH]) for i in range(0, len(images), BATCH)]

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([codec.encode(b if device == "cpu" else b.to(device)).ids.cpu() for b in batches])
    return run


def naive_loop(codec: Codec, files: list[Path], out: Path, device: str = "cpu"):
    """The seed's style: one file, one tensor, one batch-of-one encode at a time."""
    def run() -> torch.Tensor:
        ids = []
        for f in files:
            a = np.load(f, allow_pickle=False)
            m = Image(flux=torch.from_numpy(a).unsqueeze(0).to(device))
            ids.append(codec.encode(m).ids.cpu())
        all_ids = torch.cat(ids)
        save_file({f"{STREAM}/ids": all_ids.to(torch.int32)}, str(out))
        return all_ids
    return run


def encode_flops(codec: Codec, images: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        codec.encode(Image(flux=images[:BATCH].to(next(codec.parameters()).device)))
    return counter.get_total_flops() / BATCH


def bench_codec(root: Path, info: dict, key: str, images: torch.Tensor, workers: int,
                repeats: int, naive_n: int, copies: int = 10, device: str = "cpu") -> dict:
    cinfo = info["codecs"][key]
    registry = cinfo["registry"]
    codec = get_plugin_manager().load_codec(root / "codecs" / key).eval().to(device)
    files = [root / "data" / f"{n}.npy" for n in info["names"]]
    manifest = root / "manifest_timed.json"
    timed = images.repeat(copies, 1, 1, 1)  # what the timed manifest lists, in its order
    e2e = {w: EndToEnd(root, manifest, registry, w, device) for w in dict.fromkeys([0, workers])}
    bare = bare_encoder(codec, timed, device)
    naive = naive_loop(codec, files[:naive_n], root / f"naive_{key}.safetensors", device)

    # correctness first: same tokens on every path
    want = bare()
    for w, run in e2e.items():
        run.prepare()
        run()
        differ = int((run.ids() != want).sum())
        if differ and device == "cpu":
            raise SystemExit(f"{key}: encode_manifest (workers {w}) ids differ from codec.encode")
        e2e_mismatch = differ  # on a GPU, kernels may round differently between calls
    naive_ids = naive()
    naive_diff = int((naive_ids != want[:naive_n]).sum())

    one = EndToEnd(root, root / "manifest_1.json", registry, 0, device)  # the fixed cost of a call
    contenders = {f"e2e_w{w}": (run, run.prepare, len(timed)) for w, run in e2e.items()}
    contenders["bare"] = (bare, None, len(timed))
    contenders["naive"] = (naive, None, naive_n)
    contenders["e2e_w0_1sample"] = (one, one.prepare, 1)
    res = Rounds(repeats).compare(contenders)
    for run in (*e2e.values(), one):
        shutil.rmtree(run.out, ignore_errors=True)
    bare_sps = res["bare"]["samples_per_s"]
    row = {"codec": key, "config": cinfo["config"], "fit_steps": cinfo["fit_steps"],
           "fit_s": cinfo["fit_s"], "held_out_nrmse": cinfo["held_out_nrmse"],
           "num_tokens": cinfo["num_tokens"], "vocab_size": cinfo["vocab_size"],
           "encode_flops_per_sample": encode_flops(codec, images), "timed_samples": len(timed),
           "naive_samples": naive_n, "naive_token_mismatches": naive_diff, "e2e_token_mismatches": e2e_mismatch,
           "timings": res, "workers": list(e2e), "ratios": {}}
    for w in e2e:
        sps = res[f"e2e_w{w}"]["samples_per_s"]
        row["ratios"][f"e2e_w{w}_over_bare"] = sps / bare_sps
        row["ratios"][f"e2e_w{w}_over_naive"] = sps / res["naive"]["samples_per_s"]
        # what encode_manifest adds per sample on top of the codec (µs)
        row["ratios"][f"overhead_w{w}_us_per_sample"] = 1e6 * (1 / sps - 1 / bare_sps)
    # fixed cost of one call (setup, checkpoint load, run.json, shard write, merge), measured on
    # a one-sample manifest; without it, the per-sample rate a long manifest tends to
    fixed = res["e2e_w0_1sample"]["median_s"]
    per_sample = (res["e2e_w0"]["median_s"] - fixed) / len(timed)
    row["fixed_s_per_call"] = fixed
    row["ratios"]["e2e_w0_large_n_over_bare"] = 1 / per_sample / bare_sps if per_sample > 0 else None
    row["ratios"]["overhead_w0_large_n_us_per_sample"] = 1e6 * (per_sample - 1 / bare_sps)
    return row


# --------------------------------------------------------------------------- memory
# A child started straight from this (large) process would report *our* RSS: Python starts
# children with vfork + exec, and Linux carries the RSS high-water mark across exec, so
# ru_maxrss of such a child is at least this process's RSS (~600 MiB here, whatever the child
# does). A small wrapper process starts the command instead and reports its child's ru_maxrss.
_WRAPPER = """import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"maxrss_kib": usage.ru_maxrss, "rc": os.waitstatus_to_exitcode(status),
               "wall_s": time.perf_counter() - t0}, f)
"""


def _child_peak(cmd: list[str], log: Path) -> tuple[int, float, str]:
    """(peak RSS in bytes, wall seconds, output) of ``cmd`` run in a fresh process."""
    result = log.with_suffix(".rusage.json")
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-c", _WRAPPER, str(result), *cmd], stdout=fh,
                       stderr=subprocess.STDOUT, cwd=log.parent, check=True)
    r = json.loads(result.read_text())
    text = log.read_text()
    if r["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r['rc']}):\n{text}")
    return r["maxrss_kib"] * 1024, r["wall_s"], text  # ru_maxrss is in KiB on Linux


def bench_memory(root: Path, info: dict) -> dict:
    registry = info["codecs"]["default"]["registry"]
    rows = []
    base, _, _ = _child_peak([sys.executable, "-c", "import mmtok.cli, mmtok.encode, torch"],
                             root / "baseline.log")
    for name, n in (("manifest.json", len(info["names"])), ("manifest_10x.json", 10 * len(info["names"]))):
        out = root / "out" / f"mem-{n}"
        cmd = [sys.executable, "-m", "mmtok.cli", "encode", str(root / name), "--out", str(out),
               "--registry", str(registry), "--batch-size", str(BATCH), "--shard-size", str(SHARD),
               "--workers", "0", "--quiet"]
        peak, wall, text = _child_peak(cmd, root / f"mem-{n}.log")
        first = text.splitlines()[0] if text else ""
        reported = float(first.split("(")[-1].split()[0]) if "samples/s" in first else None
        rows.append({"manifest": name, "samples": n, "shards": math.ceil(n / SHARD),
                     "peak_rss_bytes": peak, "wall_s": wall, "cli_samples_per_s": reported,
                     "cli_line": first})
        shutil.rmtree(out, ignore_errors=True)
    small, big = rows
    return {"baseline_rss_bytes": base, "runs": rows,
            "peak_rss_ratio": big["peak_rss_bytes"] / small["peak_rss_bytes"],
            "growth_above_baseline_ratio": (big["peak_rss_bytes"] - base)
            / max(small["peak_rss_bytes"] - base, 1)}


# --------------------------------------------------------------------------- profile
STAGES = [  # (label, file suffix, function name): cumulative time of every function so named
    ("encode_manifest (total)", "mmtok/encode.py", "encode_manifest"),
    ("Manifest.load (pydantic)", "mmtok/manifest.py", "load"),
    ("Registry.load (YAML)", "mmtok/registry.py", "load"),
    ("Registry.check (loads the codec checkpoint)", "mmtok/registry.py", "check"),
    ("DataLoader.__next__ (main process: receive a chunk of 64 samples)", "dataloader.py", "__next__"),
    ("_SampleReader.chunk (read 64 samples, in this process)", "mmtok/encode.py", "chunk"),
    ("  Manifest.npy_rows (plain .npy files into one array)", "mmtok/manifest.py", "npy_rows"),
    ("  Manifest.record (any other entry: its reader)", "mmtok/manifest.py", "record"),
    ("_check_batches (bucketing, batches, their checks)", "mmtok/encode.py", "_check_batches"),
    ("Codec.encode", "mmtok/codec.py", "encode"),
    ("_ShardWriter.submit (serialise; write + fsync on the thread)", "mmtok/encode.py", "submit"),
    ("_merge (index.json from the sidecars)", "mmtok/encode.py", "_merge"),
]


def profile_e2e(root: Path, info: dict, key: str, workers: int = 0, top: int = 10) -> dict:
    run = EndToEnd(root, root / "manifest.json", info["codecs"][key]["registry"], workers)
    run.prepare()
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    shutil.rmtree(run.out, ignore_errors=True)
    stats = pstats.Stats(prof)
    stages = []
    for label, suffix, func in STAGES:
        hits = [(v[1], v[3]) for (file, _, fn), v in stats.stats.items()
                if fn == func and file.replace(os.sep, "/").endswith(suffix)]
        stages.append({"stage": label, "calls": sum(h[0] for h in hits),
                       "cumtime_s": sum(h[1] for h in hits)})
    text = {}
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
        lines = buf.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        head = next((line.strip() for line in lines if "function calls" in line), "")
        text[order] = "\n".join([head] + lines[start:start + top + 1])
    return {"codec": key, "workers": workers, "stages": stages, "top_tottime": text["tottime"],
            "top_cumulative": text["cumulative"]}


# --------------------------------------------------------------------------- report
NOISY = 0.1  # share of a CPU used by other processes above which a timing is flagged


def _sps(t: dict) -> str:
    spread = 100 * (t["q3_s"] - t["q1_s"]) / t["median_s"]
    flag = " ⚠" if t["foreign_share"] > NOISY else ""
    return f"{t['samples_per_s']:,.0f} ±{spread:.0f}%{flag}"


def _ok(value: float, target: float, higher: bool = True) -> str:
    return "yes" if (value >= target if higher else value <= target) else "**no**"


def _ratio_cell(value, target) -> str:
    return "n/a" if value is None else f"{value:.2f} ({_ok(value, target)})"


def markdown(res: dict) -> str:
    env = res["env"]
    lines = [(f"mmtok {env['mmtok']}, torch {env['torch']}, {env['cpu']}, {env['cpus']} CPUs, "
              f"{env['threads']} torch threads, codecs on {env.get('device', 'cpu')} "
              f"({env.get('device_name', '')}), {'quick' if env['quick'] else 'full'} run "
              f"({env['repeats']} rounds), {env['samples']} PneumoniaMNIST X-rays (1, 28, 28) as .npy, "
              f"timed manifest: each listed {env.get('copies', 1)}x ({env.get('copies', 1) * env['samples']} samples), "
              f"batch {BATCH}, shard {SHARD}; codecs fitted for "
              + ", ".join(f"{r['fit_steps']} steps ({r['codec']})" for r in res["codecs"])),
             "",
             ("| codec (image-patch) | MFLOP/sample | bare `codec.encode` | naive loop | "
              + " | ".join(f"`encode_manifest` workers {x}" for x in res["codecs"][0]["workers"])
              + " |"),
             "|---|---:|---:|---:|" + "---:|" * len(res["codecs"][0]["workers"])]
    for r in res["codecs"]:
        t = r["timings"]
        cfg = r["config"]
        label = (f"{r['codec']} (hidden {cfg.get('hidden', 64)}, blocks {cfg.get('blocks', 2)}, "
                 f"{r['num_tokens']} tokens)")
        lines.append(f"| {label} | {r['encode_flops_per_sample'] / 1e6:.1f} | {_sps(t['bare'])} | "
                     f"{_sps(t['naive'])} | "
                     + " | ".join(_sps(t[f"e2e_w{x}"]) for x in r["workers"]) + " |")
    share = env.get("foreign_cpu_share")
    checks = "; ".join(f"{r['codec']}: naive loop differs in {r['naive_token_mismatches']} of "
                       f"{r['naive_samples'] * r['num_tokens']} tokens" for r in res["codecs"])
    lines += ["", "(samples/s, median of the rounds ± relative interquartile range"
              + (f"; other processes used {100 * share:.0f}% of one CPU during the run" if share is not None
                 else "")
              + (f"; ⚠ = other processes used > {100 * NOISY:.0f}% of a CPU during these rounds: "
                 "rerun on a quiet machine"
                 if any(t["foreign_share"] > NOISY for r in res["codecs"] for t in r["timings"].values())
                 else "") + ")", "",
              f"Tokens: `encode_manifest` == bare `codec.encode` (checked for every worker setting); {checks}.",
              "",
              "| ratio | target | " + " | ".join(r["codec"] for r in res["codecs"]) + " |",
              "|---|---:|" + "---:|" * len(res["codecs"])]
    for x in res["codecs"][0]["workers"]:
        for what, target, label in (
                ("over_bare", TARGETS["e2e_over_bare"], f"end-to-end / bare codec, workers {x}"),
                ("over_naive", TARGETS["e2e_over_naive"], f"end-to-end / naive loop, workers {x}")):
            cells = []
            for r in res["codecs"]:
                v = r["ratios"][f"e2e_w{x}_{what}"]
                cells.append(f"{v:.2f} ({_ok(v, target)})" if what == "over_bare"
                             else f"{v:.1f}x ({_ok(v, target)})")
            lines.append(f"| {label} | ≥ {target:g}{'' if what == 'over_bare' else 'x'} | "
                         + " | ".join(cells) + " |")
        if x == 0:
            lines.append("| bare / naive (ceiling of end-to-end / naive) | | "
                         + " | ".join(f"{r['timings']['bare']['samples_per_s'] / r['timings']['naive']['samples_per_s']:.1f}x"
                                      for r in res["codecs"]) + " |")
        lines.append(f"| overhead per sample, workers {x} (1/e2e − 1/bare) | | "
                     + " | ".join(f"{r['ratios'][f'overhead_w{x}_us_per_sample']:.0f} µs"
                                  for r in res["codecs"]) + " |")
        if x == 0:
            lines.append("| fixed cost per call (1-sample manifest), workers 0 | | "
                         + " | ".join(f"{1e3 * r['fixed_s_per_call']:.0f} ms" for r in res["codecs"]) + " |")
            lines.append(f"| est. end-to-end / bare for a long manifest (fixed cost removed), workers 0 "
                         f"| ≥ {TARGETS['e2e_over_bare']:g} | "
                         + " | ".join(_ratio_cell(r["ratios"]["e2e_w0_large_n_over_bare"],
                                                  TARGETS["e2e_over_bare"]) for r in res["codecs"]) + " |")
    mem = res.get("memory")
    if mem:
        mib = 2**20
        lines += ["", ("| `mmtok encode` (fresh process, workers 0, default codec) | samples | shards | "
                      "peak RSS MiB | wall s | samples/s (CLI) |"), "|---|---:|---:|---:|---:|---:|",
                  (f"| `python -c 'import mmtok.cli, mmtok.encode, torch'` (baseline) | | | "
                  f"{mem['baseline_rss_bytes'] / mib:.0f} | | |")]
        for r in mem["runs"]:
            lines.append(f"| {r['manifest']} | {r['samples']} | {r['shards']} | "
                         f"{r['peak_rss_bytes'] / mib:.0f} | {r['wall_s']:.1f} | "
                         f"{r['cli_samples_per_s'] or float('nan'):,.0f} |")
        v = mem["peak_rss_ratio"]
        lines.append(f"| **peak RSS 10x / 1x** (target ≤ {TARGETS['peak_rss_ratio']}) | | | "
                     f"**{v:.3f}** ({_ok(v, TARGETS['peak_rss_ratio'], higher=False)}) | | |")
        lines.append(f"| growth above baseline, 10x / 1x | | | "
                     f"{mem['growth_above_baseline_ratio']:.2f} | | |")
    return "\n".join(lines)


def profile_text(p: dict) -> str:
    total = p["stages"][0]["cumtime_s"] or 1e-9
    lines = [(f"### where the time goes: encode_manifest, {p['codec']} codec, workers {p['workers']} "
             "(cProfile of the main process; cumulative times overlap)"), "",
             "| stage | calls | cumulative s | share |", "|---|---:|---:|---:|"]
    for s in p["stages"]:
        label = s["stage"] if not s["stage"].startswith(" ") else "↳ " + s["stage"].strip()
        lines.append(f"| {label} "
                     f"| {s['calls']} | {s['cumtime_s']:.3f} | {100 * s['cumtime_s'] / total:.0f}% |")
    lines += ["", "top by own time:", "```", p["top_tottime"], "```",
              "top by cumulative time:", "```", p["top_cumulative"], "```"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds, shorter fits (< 60 s)")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader workers compared with workers 0 (default 2)")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    p.add_argument("--profile", action="store_true",
                   help="cProfile one encode_manifest per codec; print top entries and stages")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--device", default="cpu", help="where the codec runs (cpu, cuda): bare, naive and end-to-end")
    p.add_argument("--copies", type=int, default=10,
                   help="the timed manifest lists every file this many times with distinct ids (default 10: "
                        "8,000 samples, so the ~30 ms fixed cost of a call weighs as little as in a real run)")
    p.add_argument("--codecs", nargs="+", choices=list(CODECS), default=list(CODECS),
                   help="which codecs to measure (default: both)")
    p.add_argument("--samples", type=int, default=800, help="use the first N of the 800 X-rays (a smoke test)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.workers < 0:
        p.error("--workers must be >= 0")

    t_start = time.perf_counter()
    repeats = 3 if args.quick else 7
    steps = {"default": 50, "heavy": 10 if args.quick else 50}
    images = _xrays()[:args.samples]
    res = {"env": {
        "mmtok": mmtok.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "cpu": _cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "quick": args.quick, "workers": args.workers, "repeats": repeats, "samples": len(images),
        "copies": args.copies, "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else _cpu_name(),
        "batch_size": BATCH, "shard_size": SHARD}}
    mark = LOAD.read()
    with tempfile.TemporaryDirectory(prefix="bench_encode_") as tmp:
        root = Path(tmp)
        print(f"fitting codecs ({steps} steps) and writing {len(images)} .npy files ...", flush=True)
        info = build_corpus(root, images, steps, args.copies, args.codecs)
        res["codecs"] = []
        for i, key in enumerate(args.codecs, start=1):
            print(f"{i}/{len(args.codecs) + 1} {key} codec: encode_manifest vs bare codec vs naive loop ...",
                  flush=True)
            naive_n = min(len(images), len(images) if not args.quick else (400 if key == "default" else 160))
            res["codecs"].append(bench_codec(root, info, key, images, args.workers, repeats, naive_n,
                                             args.copies, args.device))
        if not args.no_memory:
            print(f"{len(args.codecs) + 1}/{len(args.codecs) + 1} peak RSS of `mmtok encode`, 1x vs 10x manifest ...",
                  flush=True)
            res["memory"] = bench_memory(root, info)
        if args.profile:
            res["profile"] = [profile_e2e(root, info, key) for key in args.codecs]
            if args.workers:
                res["profile"].append(profile_e2e(root, info, "default", args.workers))
    res["env"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["env"]["foreign_cpu_share"] = LOAD.since(mark) / res["env"]["wall_s"] if LOAD.ok else None
    print()
    print(markdown(res))
    worst = min(r["ratios"]["e2e_w0_over_bare"] for r in res["codecs"])
    if args.profile:
        for prof in res["profile"]:
            print()
            print(profile_text(prof))
    elif worst < TARGETS["e2e_over_bare"]:
        print(f"\nend-to-end / bare is {worst:.2f} < {TARGETS['e2e_over_bare']}: rerun with --profile "
              "to see where the time goes")
    print(f"\n(total {res['env']['wall_s']} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
