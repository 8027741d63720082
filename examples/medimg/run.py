"""The medimg example end to end on real files: validate -> fit-codec -> encode -> decode, and
the reconstruction error per stream.

    python examples/medimg/run.py [--steps 400]

27 samples, one 2-D image each, read from DICOM (CT, MR, a 10-frame MR as 10 samples, JPEG 2000
ultrasound, nuclear medicine), PNG / JPEG (fundus, dermatoscopy, pathology, breast ultrasound),
an Aperio SVS slide region (4 tiles) and NIfTI slices of an MR volume. Two streams: patch tokens
(fitted here) and the disentangled VAE's latent tokens (shipped inside the wheel). 27 images are a
pipeline demonstration, not an evaluation (the plugin README has the held-out evaluation).
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
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "runs" / "medimg_example")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)

    mmtok_cli("validate", "manifest.json")
    mmtok_cli("fit-codec", "manifest.json", "--stream", "tok_medical_image", "--registry", "registry.yaml",
              "--out", "codecs/tok_medical_image", "--force", "--steps", str(args.steps), "--batch-size", "16",
              "--val-fraction", "0.2", "--quiet")
    mmtok_cli("registry", "check", "--registry", "registry.yaml")
    mmtok_cli("encode", "manifest.json", "--registry", "registry.yaml", "--out", str(out / "tokens"), "--quiet")
    for stream in ("tok_medical_image", "tok_medimg_latent"):
        mmtok_cli("decode", str(out / "tokens"), "--sample", "us1", "--stream", stream,
                  "--out", str(out / f"us1_{stream}.npy"), "--manifest", "manifest.json")

    print("\n| stream | samples | tokens/sample | vocab | codebook used | nRMSE |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, r in evaluate_shards(out / "tokens", HERE / "manifest.json", HERE / "registry.yaml").items():
        print(f"| {key} | {r['samples']} | {r['num_tokens']} | {r['vocab_size']} | "
              f"{r['codes_used']} ({100 * r['usage']:.1f}%) | {r['nrmse']:.3f} |")


if __name__ == "__main__":
    main()
