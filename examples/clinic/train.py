"""Train the shared masked transformer on the clinic tokens and measure it on held-out patients.

    python examples/clinic/train.py [--max-steps N]

1. `mmtok fit-codec` one quantile-bin codec per stream (registry_model.yaml: a token of 16 bins
   per column, as AION tokenizes catalogue values) and `mmtok encode` the manifest with them;
2. `mmtok train` with examples/clinic/train.yaml (20% of patients held out by id hash);
3. held-out masked-token loss / accuracy per stream against the unigram baseline (train-set token
   frequencies), as `mmtok train` prints it;
4. imputation: for every held-out patient that has a stream, predict that stream from the patient's
   *other* streams only (`model.predict`, MaskGIT decoding), decode it with the stream's codec and
   compare with the true table values (RMSE in standardised units), against predicting the
   training-set mean of each column: `mmtok.evaluate.evaluate_run`, as `mmtok evaluate` does.
"""

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mmtok.evaluate import evaluate_run

HERE = Path(__file__).resolve().parent


def mmtok_cli(*args: str) -> None:
    print("$ mmtok " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "mmtok.cli", *args], check=True, cwd=HERE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--eval-only", action="store_true", help="evaluate the existing run")
    args = parser.parse_args()
    out = HERE.parents[1] / "runs" / "clinic"  # registry_model.yaml points at out / "codecs"
    tokens, run = out / "model_tokens", out / "model"
    if not args.eval_only:
        prepare_and_train(out, tokens, run, args.max_steps)
    evaluate(tokens, run)


def prepare_and_train(out: Path, tokens: Path, run: Path, max_steps: int | None) -> None:
    shutil.rmtree(tokens, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    for key, name in (("tok_demographics", "demographics"), ("tok_vitals", "vitals"), ("tok_labs", "labs")):
        mmtok_cli("fit-codec", "manifest.json", "--registry", "registry_model.yaml", "--stream", key,
                  "--out", str(out / "codecs" / name), "--quiet")
    mmtok_cli("encode", "manifest.json", "--registry", "registry_model.yaml", "--out", str(tokens), "--quiet")
    steps = ["--max-steps", str(max_steps)] if max_steps else []
    mmtok_cli("train", "--tokens", str(tokens), "--out", str(run), "--config", "train.yaml", "--quiet", *steps)


def evaluate(tokens: Path, run: Path) -> None:
    """The imputation table through `mmtok.evaluate.evaluate_run` (what `mmtok evaluate` prints)."""
    report = evaluate_run(run, tokens, registry=HERE / "registry_model.yaml", manifest=HERE / "manifest.json",
                          steps=4)
    print("\nImputation of a held-out stream from the patient's other streams "
          "(RMSE in units of each column's training-set standard deviation):\n")
    print("| stream | held-out patients | model RMSE (posterior mean) | model RMSE (MaskGIT sample) | "
          "training-mean RMSE | model / mean |")
    print("|---|---:|---:|---:|---:|---:|")
    for ev in report.streams:
        r = {k: v["rmse_std"] for k, v in ev.regression.items()}
        model, sampled, mean = r["model (posterior mean)"], r["model (MaskGIT decode)"], r["training mean"]
        print(f"| {ev.stream} | {ev.held_out} | {model:.3f} | {sampled:.3f} | {mean:.3f} | {model / mean:.2f} |")


if __name__ == "__main__":
    main()
