"""One shared transformer over every example's token folders, against one model per bundle at the
same total compute: does sharing help or hurt each bundle's held-out metric?

    python examples/all/run.py [--seeds 0 1 2] [--steps 200]

1. **Tokens** of every example, each with its own registry: clinic, multisurvey, spectra and ct are
   encoded with the codecs shipped in their plugins (no fitting); hsi, medimg and ecg run their own
   example's fit-codec -> encode first (`examples/<name>/run.py`, or `prepare` for ecg) unless
   its tokens (`EXAMPLE_TOKENS`) already exist.
2. **Separate:** per bundle and seed, `mmtok train` on its folder alone for ``--steps`` steps.
   **Joint:** per seed, one run on all folders (`--tokens` repeated) for ``--steps`` x bundles steps,
   every folder weighted equally, so each bundle's samples are seen as often as in its own run and
   the total compute (steps x batch x model) is the same. Same model, masking, optimiser, batch.
   Twice: with mixed batches (the default) and with ``mixture_batches: per_folder``.
3. **Metric, the same for both arms:** for each held-out sample (each folder's own split: ids hashed,
   ecg by whole minute) and each of its discrete streams that it has with at least one other stream:
   the negative log-likelihood (nats / token) of the whole stream predicted from the sample's other
   streams in one pass (`predict_proba`), its arg-max accuracy, and that folder's unigram (add-one
   training token frequencies). ECG's beat class also gets balanced accuracy.
4. **Speed and memory:** training tokens / s (valid input + target tokens of the masks) and MFU
   (FLOPs of a step counted by `torch.utils.flop_counter` over the step time, against this machine's
   fp32 matmul peak measured in the same run) of the joint run against the separate runs; the
   parameter count and peak RSS of a short run as the stream set grows from one bundle's 3 streams
   to all of them.

Writes ``runs/all/results.json`` and prints the tables of examples/all/README.md.
"""

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import mmtok
from mmtok.encode import encode_manifest
from mmtok.io import write_json
from mmtok.shards import held_out

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXAMPLES = ROOT / "examples"
RUNS = ROOT / "runs"

#: bundle -> how its tokens are made: "shipped" (encode with its registry), "example" (its run.py)
BUNDLES = {"clinic": "shipped", "multisurvey": "shipped", "spectra": "shipped", "ct": "shipped",
           "hsi": "example", "medimg": "example", "ecg": "ecg"}
VAL_GROUP = {"ecg": r"^(m\d+)-"}  # whole minutes, as examples/ecg/train.yaml
#: where an example's own run.py writes its tokens
EXAMPLE_TOKENS = {"hsi": RUNS / "hsi" / "tokens", "medimg": RUNS / "medimg_example" / "tokens", "ecg": RUNS / "ecg" / "tokens"}
LABELS = {"tok_class"}  # label streams: balanced accuracy too (ECG beat class, N / S / V)
#: streams whose imputation is also scored in the data's units: the arg-max tokens decoded by the
#: bundle's codec against the decoded true tokens, RMSE per column (NIR: moisture, oil, protein, starch %)
DECODED = {"tok_nir_properties"}
CONFIG = {"model": {"d_model": 64, "num_heads": 4, "encoder_depth": 2, "decoder_depth": 2, "dropout": 0.1},
          "masking": {"input_budget": 24, "target_budget": 12},
          "optim": {"lr": 0.001, "weight_decay": 0.05, "warmup_steps": 50},
          "batch_size": 32, "val_fraction": 0.2, "eval_every": 100000, "log_every": 50,
          "checkpoint_every": 100000}


def prepare(out: Path, names: list[str]) -> dict[str, Path]:
    """The token folder of every bundle in ``names``."""
    folders = {}
    for name in names:
        how = BUNDLES[name]
        if how == "shipped":
            folders[name] = out / "tokens" / name
            if not (folders[name] / "index.json").is_file():
                print(f"$ mmtok encode examples/{name}/manifest.json --out {folders[name]}", flush=True)
                encode_manifest(EXAMPLES / name / "manifest.json", folders[name],
                                registry_path=EXAMPLES / name / "registry.yaml", progress=False)
        else:
            folders[name] = EXAMPLE_TOKENS[name]
            if not (folders[name] / "index.json").is_file():
                if how == "ecg":
                    _example_module("ecg").prepare(RUNS / "ecg")
                else:
                    print(f"$ python examples/{name}/run.py", flush=True)
                    subprocess.run([sys.executable, str(EXAMPLES / name / "run.py")], check=True)
    return folders


def _example_module(name: str):
    """``examples/<name>/run.py`` as a module (by path: every example's script is called run.py)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}_run", EXAMPLES / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_for(folders: dict[str, Path], seed: int, steps: int, batches: str = "mixed") -> mmtok.TrainConfig:
    tokens = [{"path": str(p), "name": n, "weight": 1.0, **({"val_group": VAL_GROUP[n]} if n in VAL_GROUP else {})}
              for n, p in folders.items()]
    return mmtok.TrainConfig.model_validate({**CONFIG, "tokens": tokens, "seed": seed, "max_steps": steps,
                                             "mixture_batches": batches})


def train(folders: dict[str, Path], run: Path, seed: int, steps: int, batches: str = "mixed") -> dict:
    """Train (or resume) ``run`` on ``folders``; its speed: tokens / s, FLOPs / s."""
    trainer = mmtok.Trainer(None, run, config_for(folders, seed, steps, batches), progress=False)
    start = trainer.step
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    tokens = sum(_step_tokens(trainer, s) for s in range(start, steps))
    return {"seconds": seconds, "steps": steps - start, "tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds and steps > start else None,
            "flops_per_step": _step_flops(trainer), "params": sum(p.numel() for p in trainer.module.parameters())}


def _step_tokens(trainer: mmtok.Trainer, step: int) -> int:
    """Valid input + target tokens of ``step``'s batch under a mask draw like the trainer's (what the
    encoder and decoder process)."""
    gb = trainer.global_batch(step)
    batch = trainer.data.batch(gb)
    masks = trainer.sampler(trainer.model.presence(batch), trainer.sampler.draw(len(gb), step))
    return int(masks.input_valid.sum() + masks.target_valid.sum())


def _step_flops(trainer: mmtok.Trainer) -> float:
    """FLOPs of one training forward + backward on step 0's batch (mean over 4 steps' batches)."""
    flops = []
    for step in range(4):
        gb = trainer.global_batch(step)
        batch = trainer.data.batch(gb)
        masks = trainer.sampler(trainer.model.presence(batch), trainer.sampler.draw(len(gb), step))
        counter = FlopCounterMode(display=False)
        with counter:
            loss, *_ = trainer.module(batch, masks, None, trainer.head_weights)
            loss.backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        flops.append(counter.get_total_flops())
    return float(np.mean(flops))


def matmul_peak(n: int = 1024, repeats: int = 20) -> float:
    """This machine's fp32 matmul FLOP/s (best of ``repeats``) with the current torch threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def evaluate(run: Path, name: str, folder: Path) -> dict:
    """Per discrete stream of ``folder``: held-out NLL / accuracy of the stream predicted from the
    sample's other streams, and the folder's unigram; see the module docstring."""
    model = mmtok.load_run(run)
    config = mmtok.TrainConfig.load(run / "config.yaml")
    split = config.folder(folder).split(config)
    data = mmtok.TokenShards(folder, [k for k in model.streams if k in mmtok.TokenShards(folder).streams])
    val = [held_out(s, *split) for s in data.sample_ids]
    out = {}
    for key in data.keys:
        spec = model.streams[key]
        if not spec.is_discrete:
            continue
        has = [i for i, s in enumerate(data.samples) if key in s["streams"]]
        train = [i for i in has if not val[i]]
        test = [i for i in has if val[i] and len(set(data.samples[i]["streams"]) & set(data.keys)) > 1]
        if not test or not train:
            continue
        ids = data.batch(train)[key].ids.long().flatten()
        logp = torch.log((torch.bincount(ids, minlength=spec.vocab_size).double() + 1) / (len(ids) + spec.vocab_size))
        majority = int(logp.argmax())
        nll, hit, uni, uhit, n = 0.0, 0, 0.0, 0, 0
        truths, preds = [], []  # (samples, tokens) ids
        for start in range(0, len(test), 64):
            batch = data.batch(test[start:start + 64])
            with torch.no_grad():
                proba = model.predict_proba(batch, key).double()
            truth = batch[key].ids.long()
            p = proba.gather(-1, truth.unsqueeze(-1)).squeeze(-1).clamp_min(1e-12)
            nll += float(-p.log().sum())
            hit += int((proba.argmax(-1) == truth).sum())
            uni += float(-logp[truth].sum())
            uhit += int((truth == majority).sum())
            n += truth.numel()
            truths.append(truth)
            preds.append(proba.argmax(-1))
        rec = {"samples": len(test), "tokens": n, "nll": nll / n, "acc": hit / n, "unigram_nll": uni / n,
               "unigram_acc": uhit / n}
        if key in DECODED:
            codec = mmtok.Registry.load(EXAMPLES / name / "registry.yaml").codec(key)

            def values(ids):
                stream = mmtok.TokenStream(grid=spec.grid, ids=ids, vocab_size=spec.vocab_size,
                                           present=torch.ones(len(ids), dtype=torch.bool))
                return getattr(codec.decode(stream), codec.field).double()
            truth = values(torch.cat(truths))
            rec["decoded_rmse"] = (values(torch.cat(preds)) - truth).pow(2).mean(0).sqrt().tolist()
            # baseline: each token position's most frequent training id (per-column majority bin)
            mode = data.batch(train)[key].ids.long().mode(0).values.expand(len(truth), -1)
            rec["decoded_rmse_majority"] = (values(mode) - truth).pow(2).mean(0).sqrt().tolist()
        if key in LABELS:  # balanced accuracy over the classes present
            t, q = torch.cat(truths)[:, 0], torch.cat(preds)[:, 0]
            rec["balanced_acc"] = float(np.mean([float((q[t == c] == c).float().mean()) for c in t.unique()]))
        out[key] = rec
    return out


def peak_rss_run(folders: dict[str, Path], out: Path, steps: int = 20) -> dict:
    """Parameters and the peak RSS (MiB) of a ``steps``-step run in a fresh process: its resident
    memory at the start (torch and the plugins imported) and the peak from there (the peak is reset
    through /proc/self/clear_refs, so import-time memory does not mask training's)."""
    cfg = out / "config.json"
    out.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps(config_for(folders, 0, steps).model_dump(mode="json")))
    code = ("import json, re, sys, mmtok\n"
            "def status(key):  # Linux: /proc; elsewhere no number (n/a in the table)\n"
            "    try:\n"
            "        return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024\n"
            "    except OSError:\n"
            "        return None\n"
            "mmtok.get_plugin_manager()\n"
            "start = status('VmRSS')\n"
            "try:\n"
            "    open('/proc/self/clear_refs', 'w').write('5')  # VmHWM := VmRSS\n"
            "except OSError:\n"
            "    start = None\n"
            "c = mmtok.TrainConfig.load(sys.argv[1])\n"
            "t = mmtok.Trainer(None, sys.argv[2], c, progress=False)\n"
            "t.fit()\n"
            "print(json.dumps({'params': sum(p.numel() for p in t.module.parameters()),"
            " 'total_vocab': t.model.layout.total_vocab, 'slots': int(t.model.layout.stream_of.numel()),"
            " 'start_rss_mib': start, 'peak_rss_mib': status('VmHWM')}))\n")
    r = subprocess.run([sys.executable, "-c", code, str(cfg), str(out / "run")], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RUNS / "all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="steps of each separate run (joint: x bundles)")
    parser.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=list(BUNDLES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--memory-steps", type=int, default=20, help="steps of the peak-memory runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    out = args.out.resolve()
    folders = prepare(out, args.bundles)
    for stale in ("separate", "joint", "joint_per_folder", "memory"):  # runs of an earlier call (other bundles / steps)
        shutil.rmtree(out / stale, ignore_errors=True)
    results = {"bundles": args.bundles, "seeds": args.seeds, "steps": args.steps, "config": CONFIG,
               "samples": {n: len(mmtok.TokenShards(p)) for n, p in folders.items()},
               "separate": {}, "joint": {}, "joint_per_folder": {}, "speed": {}}
    for seed in args.seeds:
        for name, folder in folders.items():
            run = out / "separate" / name / f"seed{seed}"
            print(f"$ mmtok train --tokens {folder} --out {run}   # seed {seed}, {args.steps} steps", flush=True)
            speed = train({name: folder}, run, seed, args.steps)
            results["speed"].setdefault(name, []).append(speed)
            results["separate"].setdefault(name, []).append(evaluate(run, name, folder))
        run = out / "joint" / f"seed{seed}"
        steps = args.steps * len(folders)
        print(f"$ mmtok train {' '.join(f'--tokens {p}' for p in folders.values())} --out {run}   "
              f"# seed {seed}, {steps} steps, equal weights", flush=True)
        results["speed"].setdefault("joint", []).append(train(folders, run, seed, steps))
        for name, folder in folders.items():
            results["joint"].setdefault(name, []).append(evaluate(run, name, folder))
        run = out / "joint_per_folder" / f"seed{seed}"
        print(f"$ mmtok train ... --out {run}   # the same, mixture_batches: per_folder", flush=True)
        results["speed"].setdefault("joint, per-folder batches", []).append(train(folders, run, seed, steps, "per_folder"))
        for name, folder in folders.items():
            results["joint_per_folder"].setdefault(name, []).append(evaluate(run, name, folder))
    results["matmul_peak_flops"] = matmul_peak()
    first = args.bundles[0]
    results["memory"] = {f"{first} only": peak_rss_run({first: folders[first]}, out / "memory" / "one", args.memory_steps),
                         "all": peak_rss_run(folders, out / "memory" / "all", args.memory_steps)}
    results["seconds"] = time.time() - t_start
    write_json(out / "results.json", results)
    print_tables(results)


def print_tables(results: dict) -> None:
    seeds = results["seeds"]
    print(f"\nHeld-out, each stream predicted from the sample's other streams; mean ± std over seeds {seeds}; "
          "NLL in nats / token (lower is better)\n")
    print("| bundle | stream | held-out samples | unigram NLL | separate NLL | joint NLL (mixed batches) | "
          "joint NLL (per-folder batches) | separate acc | joint acc (mixed) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    verdict = {arm: {"better": 0, "worse": 0, "same": 0} for arm in ("joint", "joint_per_folder")}
    for name in results["bundles"]:
        sep = results["separate"][name]
        for key in sep[0]:
            s = [r[key]["nll"] for r in sep]
            cells = []
            for arm in verdict:
                j = [r[key]["nll"] for r in results[arm][name]]
                d = float(np.mean(j) - np.mean(s))
                spread = np.std(s) + np.std(j)
                verdict[arm]["better" if d < -spread else "worse" if d > spread else "same"] += 1
                cells.append(f"{mean_std(j)} ({d:+.2f})")
            extra = ""
            if "balanced_acc" in sep[0][key]:
                extra = (f" (balanced {mean_std([r[key]['balanced_acc'] for r in sep])} / "
                         f"{mean_std([r[key]['balanced_acc'] for r in results['joint'][name]])})")
            print(f"| {name} | {key} | {sep[0][key]['samples']} | {sep[0][key]['unigram_nll']:.3f} | {mean_std(s)} | "
                  f"{cells[0]} | {cells[1]} | {mean_std([r[key]['acc'] for r in sep])} | "
                  f"{mean_std([r[key]['acc'] for r in results['joint'][name]])}{extra} |")
    for arm, v in verdict.items():
        print(f"\nVerdict, {arm.replace('_', ' ')} vs separate (mean difference beyond the two arms' seed std summed): "
              f"better on {v['better']} streams, worse on {v['worse']}, indistinguishable on {v['same']}.")
    for name in results["bundles"]:
        for key, rec in results["separate"][name][0].items():
            if "decoded_rmse" in rec:
                print(f"\n{name} {key}, imputed from the other streams and decoded: RMSE per column "
                      "(mean ± std over seeds)\n")
                print("| arm | " + " | ".join(f"column {i}" for i in range(len(rec["decoded_rmse"]))) + " |")
                print("|---|" + "---:|" * len(rec["decoded_rmse"]))
                print("| majority bin per column (training tokens) | " + " | ".join(
                    f"{v:.3f}" for v in rec["decoded_rmse_majority"]) + " |")
                for arm in ("separate", "joint", "joint_per_folder"):
                    cols = np.array([r[key]["decoded_rmse"] for r in results[arm][name]])
                    print(f"| {arm.replace('_', ' ')} | " + " | ".join(
                        f"{m:.3f} ± {sd:.3f}" for m, sd in zip(cols.mean(0), cols.std(0))) + " |")
    peak = results["matmul_peak_flops"]
    print(f"\nSpeed (this machine's fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s, measured in the same run)\n")
    print("| run | steps | tokens / s | MFU | params |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results["speed"].items():
        timed = [r for r in runs if r["tokens_per_s"]]
        if timed:
            mfu = [r["flops_per_step"] * r["steps"] / r["seconds"] / peak for r in timed]
            print(f"| {name} | {timed[0]['steps']} | {np.mean([r['tokens_per_s'] for r in timed]):.0f} | "
                  f"{np.mean(mfu):.3f} | {timed[0]['params']:,} |")
    # the separate arm as a whole: all its tokens over all its seconds (same total work as the joint arm)
    sep = [r for n, rs in results["speed"].items() if not n.startswith("joint") for r in rs if r["tokens_per_s"]]
    sep_rate = sum(r["tokens"] for r in sep) / sum(r["seconds"] for r in sep) if sep else None
    for arm in ("joint", "joint, per-folder batches"):
        joint = [r for r in results["speed"].get(arm, []) if r["tokens_per_s"]]
        if sep_rate and joint:
            rate = sum(r["tokens"] for r in joint) / sum(r["seconds"] for r in joint)
            print(f"\n{arm}: tokens / s ÷ the separate runs' (all their tokens over all their seconds): "
                  f"{rate / sep_rate:.2f}")
    print("\n| streams | slots | joint vocabulary | params | RSS at start (MiB) | peak RSS in training (MiB) | "
          "peak - start |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m in results["memory"].items():
        if m["start_rss_mib"] is None or m["peak_rss_mib"] is None:
            mem = "n/a (needs Linux's /proc/self) | n/a | n/a"
        else:
            mem = f"{m['start_rss_mib']:.0f} | {m['peak_rss_mib']:.0f} | {m['peak_rss_mib'] - m['start_rss_mib']:.0f}"
        print(f"| {name} | {m['slots']} | {m['total_vocab']} | {m['params']:,} | {mem} |")
    print(f"\n{results['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
