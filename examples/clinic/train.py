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
   training-set mean of each column.
"""

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import mmtok
from mmtok.manifest import Manifest
from mmtok.inference import load_run
from mmtok.shards import TokenShards, held_out
from mmtok.train import TrainConfig

HERE = Path(__file__).resolve().parent


def mmtok_cli(*args: str) -> None:
    print("$ mmtok " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "mmtok.cli", *args], check=True, cwd=HERE)


def true_values(manifest: Manifest, ids: list[str], modality: str) -> np.ndarray:
    manager = mmtok.get_plugin_manager()
    by_id = {s.id: s for s in manifest.samples}
    rows = [manifest.load_modality(by_id[i], modality, manager) for i in ids]
    return np.concatenate([r.values.numpy() for r in rows])


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

    config = TrainConfig.load(HERE / "train.yaml")
    model = load_run(run)
    data = TokenShards(tokens, list(model.streams))
    registry = mmtok.Registry.load(HERE / "registry_model.yaml")
    manifest = Manifest.load(HERE / "manifest.json")
    print("\nImputation of a held-out stream from the patient's other streams "
          "(RMSE in units of each column's training-set standard deviation):\n")
    print("| stream | held-out patients | model RMSE (posterior mean) | model RMSE (MaskGIT sample) | "
          "training-mean RMSE | model / mean |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in model.streams:
        modality = registry.streams[key].modality
        has = [i for i, s in enumerate(data.samples) if key in s["streams"]]
        train = [i for i in has if not held_out(data.sample_ids[i], config.val_fraction)]
        test = [i for i in has if held_out(data.sample_ids[i], config.val_fraction)]
        # only patients with another stream to predict from
        test = [i for i in test if len(data.samples[i]["streams"]) > 1]
        batch = data.batch(test)
        others = mmtok.TokenBatch({k: v for k, v in batch.items() if k != key})
        codec = registry.codec(key)
        info = data.streams[key]

        def decode(ids: torch.Tensor) -> np.ndarray:
            return codec.decode(data.make_stream(key, ids)).values.numpy()

        # MaskGIT decoding gives one plausible sample; the posterior mean (token probabilities x
        # the value each bin decodes to) is the least-squares estimate the RMSE asks for
        sampled = decode(model.predict(others, key, steps=4))
        probs = model.predict_proba(others, key).numpy()  # (b, columns, bins)
        bins = np.arange(info["vocab_size"])
        value_of_bin = decode(torch.from_numpy(np.repeat(bins[:, None], info["grid"][0], 1)))  # (bins, columns)
        pred = np.einsum("bcv,vc->bc", probs, value_of_bin)
        truth = true_values(manifest, [data.sample_ids[i] for i in test], modality)
        reference = true_values(manifest, [data.sample_ids[i] for i in train], modality)
        mean, std = reference.mean(0), reference.std(0) + 1e-12
        rmse = {name: float(np.sqrt((((p - truth) / std) ** 2).mean()))
                for name, p in (("mean", mean), ("model", pred), ("sampled", sampled))}
        print(f"| {key} | {len(test)} | {rmse['model']:.3f} | {rmse['sampled']:.3f} | {rmse['mean']:.3f} | "
              f"{rmse['model'] / rmse['mean']:.2f} |")


if __name__ == "__main__":
    main()
