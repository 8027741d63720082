"""The multisurvey example end to end on real data, with the astro plugin's pretrained codecs:
validate -> registry check -> encode -> decode, and reconstruction per stream.

    python examples/multisurvey/run.py

64 samples from two sky fields (see make_manifest.py): 14 HSC COSMOS crops (6 with a source
catalogue row) and 50 Gaia DR3 sources (all with photometry, 44 with astrometry). No sample has
every stream: each stream is encoded for the samples that have its modality. Every codec is a
pretrained checkpoint shipped in mmtok-plugin-astro (registry.yaml), so there is no fit step.
This is a pipeline demonstration on the few real sources in the repository, not a benchmark.
"""

import argparse
import collections
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import mmtok
from mmtok.fit import evaluate_shards
from mmtok.registry import Registry

HERE = Path(__file__).resolve().parent


def mmtok_cli(*args: str) -> None:
    print("$ mmtok " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "mmtok.cli", *args], check=True, cwd=HERE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "runs" / "multisurvey")
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)

    mmtok_cli("registry", "check", "--registry", "registry.yaml")
    mmtok_cli("validate", "manifest.json", "--registry", "registry.yaml")
    mmtok_cli("encode", "manifest.json", "--registry", "registry.yaml", "--out", str(out / "tokens"),
              "--quiet")
    mmtok_cli("decode", str(out / "tokens"), "--sample", "hsc_cosmos-2", "--stream", "tok_hsc",
              "--out", str(out / "hsc_cosmos-2.npy"))

    index = json.loads((out / "tokens" / "index.json").read_text())
    combos = collections.Counter(" + ".join(sorted(s["streams"])) for s in index["samples"])
    print("\n| streams present | samples |\n|---|---:|")
    for combo, n in sorted(combos.items()):
        print(f"| {combo} | {n} |")

    print("\n| stream | samples | tokens/sample | vocab | codebook used | nRMSE | RMSE per band / column |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for key, r in evaluate_shards(out / "tokens", HERE / "manifest.json", HERE / "registry.yaml").items():
        per = ", ".join(f"{v:.3g}" for v in r["rmse_per_channel"])
        print(f"| {key} | {r['samples']} | {r['num_tokens']} | {r['vocab_size']} | "
              f"{r['codes_used']} ({100 * r['usage']:.1f}%) | {r['nrmse']:.3f} | {per} |")

    # the table above mixes samples the codecs were fitted on with held-out ones; the held-out
    # numbers are measured by the plugin's fit script and shipped next to each checkpoint
    manager = mmtok.get_plugin_manager()
    print("\n| stream | checkpoint | fitted on / held out | held-out nRMSE | train nRMSE |\n|---|---|---:|---:|---:|")
    for key, entry in Registry.load(HERE / "registry.yaml").streams.items():
        m = json.loads((Path(manager.pretrained(entry.checkpoint).path) / "metrics.json").read_text())
        test = f"{m['test']['nrmse']:.3f}" if isinstance(m["test"], dict) else "none (no held-out data)"
        print(f"| {key} | `{entry.checkpoint}` | {len(m['train_samples'])} / {len(m['test_samples'])} | "
              f"{test} | {m['train']['nrmse']:.3f} |")


if __name__ == "__main__":
    main()
