"""The HSI example end to end on real Houston 2013 pixels: validate -> fit-codec -> encode ->
decode, and the reconstruction error per stream.

    python examples/hsi/run.py [--steps 600]

96 samples: 1 x 1 px cubes of 144 CASI bands as MATLAB .mat, ENVI and .npz (a third each), 64 of
them with their 21 LiDAR features as an elevation map. `make_manifest.py` regenerates `data/`
and `manifest.json`. 96 pixels are a pipeline demonstration, not a tokenizer benchmark (the
plugin README has the model's evaluations).
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
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "runs" / "hsi")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)

    mmtok_cli("validate", "manifest.json")
    for stream in ("tok_hsi_cube", "tok_elevation_map"):
        mmtok_cli("fit-codec", "manifest.json", "--stream", stream, "--out", f"codecs/{stream}", "--force",
                  "--steps", str(args.steps), "--batch-size", "32", "--val-fraction", "0.2", "--quiet")
    mmtok_cli("registry", "check", "--registry", "registry.yaml")
    mmtok_cli("encode", "manifest.json", "--registry", "registry.yaml", "--out", str(out / "tokens"), "--quiet")
    mmtok_cli("decode", str(out / "tokens"), "--sample", "houston_0014", "--stream", "tok_hsi_cube",
              "--out", str(out / "houston_0014.npy"), "--manifest", "manifest.json")

    print("\n| stream | samples | tokens/sample | vocab | codebook used | nRMSE |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, r in evaluate_shards(out / "tokens", HERE / "manifest.json", HERE / "registry.yaml").items():
        print(f"| {key} | {r['samples']} | {r['num_tokens']} | {r['vocab_size']} | "
              f"{r['codes_used']} ({100 * r['usage']:.1f}%) | {r['nrmse']:.3f} |")


if __name__ == "__main__":
    main()
