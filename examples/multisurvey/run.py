"""The multisurvey example end to end on real HSC cutouts: validate -> fit-codec -> encode ->
decode, and reconstruction per stream.

    python examples/multisurvey/run.py [--steps 800]

14 samples (one per catalogued source, 24 x 24 grizy crops, npz and FITS); 6 have a source
catalogue row. This is a pipeline demonstration on the few real cutouts in the repository, not
a tokenizer benchmark: 14 crops are far too few to train a survey codec that generalises.
"""

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mmtok.fit import evaluate_shards

HERE = Path(__file__).resolve().parent


def mmtok_cli(*args: str) -> None:
    print("$ mmtok " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "mmtok.cli", *args], check=True, cwd=HERE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "runs" / "multisurvey")
    parser.add_argument("--steps", type=int, default=800)
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)

    mmtok_cli("validate", "manifest.json")
    mmtok_cli("fit-codec", "manifest.json", "--stream", "tok_hsc", "--out", "codecs/tok_hsc",
              "--steps", str(args.steps), "--batch-size", "16", "--val-fraction", "0.2", "--quiet")
    mmtok_cli("fit-codec", "manifest.json", "--stream", "tok_catalog", "--out", "codecs/tok_catalog",
              "--val-fraction", "0", "--quiet")
    mmtok_cli("registry", "check", "--registry", "registry.yaml")
    mmtok_cli("validate", "manifest.json", "--registry", "registry.yaml")
    mmtok_cli("encode", "manifest.json", "--registry", "registry.yaml", "--out", str(out / "tokens"),
              "--quiet")
    mmtok_cli("decode", str(out / "tokens"), "--sample", "hsc_cosmos-2", "--stream", "tok_hsc",
              "--out", str(out / "hsc_cosmos-2.npy"))

    print("\n| stream | samples | tokens/sample | vocab | codebook used | nRMSE | RMSE per band / column |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for key, r in evaluate_shards(out / "tokens", HERE / "manifest.json", HERE / "registry.yaml").items():
        per = ", ".join(f"{v:.3g}" for v in r["rmse_per_channel"])
        print(f"| {key} | {r['samples']} | {r['num_tokens']} | {r['vocab_size']} | "
              f"{r['codes_used']} ({100 * r['usage']:.1f}%) | {r['nrmse']:.3f} | {per} |")


if __name__ == "__main__":
    main()
