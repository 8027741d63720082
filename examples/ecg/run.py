"""ECG beats of MIT-BIH record 100 end to end: manifest -> fit-codec -> encode -> train the shared
transformer -> held-out beat-class prediction, against the majority class, the unigram (training
label frequencies) and a small supervised 1-D CNN on the same training beats.

    python examples/ecg/run.py [--out runs/ecg] [--seeds 0 1 2] [--codec-steps 600] [--train-steps 300]

Held out: whole minutes of the recording (train.yaml's val_group, `make_manifest.held_out`), for
the beat codec, the transformer and the CNN alike. Everything runs on one CPU thread.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

import mmtok
from mmtok.evaluate import evaluate_run
from mmtok.fit import evaluate_codec
from mmtok.io import write_json
from mmtok.manifest import Manifest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_manifest  # noqa: E402

CLASS_NAMES = {0: "N", 1: "S (A)", 2: "V"}


def mmtok_cli(*args: str) -> None:
    print("$ mmtok " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "mmtok.cli", *args], check=True, cwd=HERE,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})


# ------------------------------------------------------------------------------------------ data
def load_beats(ids: list[str]):
    """EcgBeat batch (n, 1, 252) of the manifest samples ``ids``, read through the wfdb reader."""
    manager = mmtok.get_plugin_manager()
    manifest = Manifest.load(HERE / "manifest.json")
    by_id = {s.id: s for s in manifest.samples}
    modality = manager.modality("ecg_beat")
    return modality.collate([manifest.load_modality(by_id[i], "ecg_beat", manager) for i in ids])


def labels() -> dict[str, int]:
    lines = (HERE / "beats.csv").read_text().splitlines()[1:]
    return {sid: int(lab) for sid, lab in (line.split(",") for line in lines)}


# ----------------------------------------------------------------------------------- beat codec
def codec_report(codec_dir: Path, train_ids: list[str], test_ids: list[str]) -> dict:
    """Reconstruction of the fitted beat codec on training and held-out minutes: RMSE in mV on
    the codec's 256-step grid and back on the recording's 252 samples, and nRMSE (RMSE / std)."""
    codec = mmtok.get_plugin_manager().load_codec(codec_dir)
    out = {}
    for split, ids in (("train minutes", train_ids), ("held-out minutes", test_ids)):
        beats = load_beats(ids)
        rep = evaluate_codec(codec, beats)
        decoded = codec.decode(codec.encode(beats)).values  # (n, 1, 256)
        back = F.interpolate(decoded, size=beats.values.shape[-1], mode="linear", align_corners=True)
        err = back - beats.values
        out[split] = {"beats": len(ids), "rmse_mv_256": rep.rmse, "nrmse_256": rep.nrmse,
                      "rmse_mv": float(err.pow(2).mean().sqrt()), "signal_std_mv": float(beats.values.std()),
                      "nrmse": float(err.pow(2).mean().sqrt() / beats.values.std()),
                      "max_abs_error_mv": float(err.abs().max()),
                      "codes_used": rep.codes_used, "perplexity": rep.perplexity}
    return out


# ---------------------------------------------------------------------------------- 1-D CNN
class BeatCNN(nn.Module):
    """(b, 1, 252) standardised beat -> (b, classes) logits: 3 strided convs, pooled to 8 positions
    (the P wave's and T wave's place relative to the R peak matter), one linear layer."""

    def __init__(self, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(1, 16, 7, stride=2, padding=3), nn.GELU(),
                                 nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.GELU(),
                                 nn.Conv1d(32, 32, 5, stride=2, padding=2), nn.GELU(),
                                 nn.AdaptiveAvgPool1d(8), nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_cnn(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int, weighted: bool,
              steps: int = 400) -> BeatCNN:
    """Train on x (n, 1, 252) standardised, y (n,); ``weighted``: class-balanced cross-entropy
    (weight n / (classes * count) per class)."""
    torch.manual_seed(seed)
    model = BeatCNN(classes)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    counts = torch.bincount(y, minlength=classes).float()
    weight = (len(y) / (classes * counts.clamp_min(1))) if weighted else None
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx], weight=weight)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


def scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    classes = sorted(set(truth.tolist()))
    recall = {int(c): float((pred[truth == c] == c).mean()) for c in classes}
    return {"accuracy": float((pred == truth).mean()), "balanced_accuracy": float(np.mean(list(recall.values()))),
            "per_class_recall": recall}


# ------------------------------------------------------------------------------------------ main
def prepare(out: Path, codec_steps: int = 600) -> Path:
    """manifest -> validate -> fit the two codecs (into ``out``/codecs) -> encode; returns the token
    folder ``out``/tokens. (examples/all/run.py calls this too.)"""
    make_manifest.main()
    mmtok_cli("validate", "manifest.json", "--quiet")
    # the beat codec sees the training minutes only; the class codec's table is the set of labels
    mmtok_cli("fit-codec", "manifest_codec.json", "--registry", "registry.yaml", "--stream", "tok_beat",
              "--out", str(out / "codecs" / "beat"), "--steps", str(codec_steps), "--val-fraction", "0",
              "--deterministic", "--quiet")
    mmtok_cli("fit-codec", "manifest.json", "--stream", "tok_class", "--out", str(out / "codecs" / "class"),
              "--val-fraction", "0", "--quiet")
    mmtok_cli("encode", "manifest.json", "--out", str(out / "tokens"), "--quiet")
    return out / "tokens"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "runs" / "ecg")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--codec-steps", type=int, default=600)
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    out = args.out.resolve()
    if out != (HERE.parents[1] / "runs" / "ecg").resolve():
        raise SystemExit("registry.yaml points at runs/ecg/codecs; keep --out runs/ecg or edit registry.yaml")
    shutil.rmtree(out, ignore_errors=True)

    prepare(out, args.codec_steps)

    manifest = json.loads((HERE / "manifest.json").read_text())
    has = {s["id"]: set(s["modalities"]) for s in manifest["samples"]}
    lab = labels()
    split = {sid: make_manifest.held_out(sid) for sid in has}
    waves = [s for s in has if "ecg_beat" in has[s]]
    codec = codec_report(out / "codecs" / "beat", [s for s in waves if not split[s]], [s for s in waves if split[s]])

    # labelled beats with a waveform: what every classifier trains / is scored on
    both = [s for s in has if has[s] == {"ecg_beat", "beat_class"}]
    train_ids, test_ids = [s for s in both if not split[s]], [s for s in both if split[s]]
    y_train = np.array([lab[s] for s in train_ids])
    y_test = np.array([lab[s] for s in test_ids])
    n_classes = int(y_train.max()) + 1
    results = {"codec": codec, "train_beats": len(train_ids), "test_beats": len(test_ids),
               "train_counts": np.bincount(y_train, minlength=n_classes).tolist(),
               "test_counts": np.bincount(y_test, minlength=n_classes).tolist(), "seeds": args.seeds, "runs": {}}

    # the shared transformer, one run per seed (= mmtok train --config train.yaml --target-stream tok_class)
    prior = np.bincount(y_train, minlength=n_classes) + 1.0  # add-one, over the classes seen in training
    prior = prior / prior.sum()
    runs = results["runs"]
    for seed in args.seeds:
        run = out / f"model_seed{seed}"
        print(f"$ mmtok train --tokens {out / 'tokens'} --out {run} --config train.yaml "
              f"--target-stream tok_class   # seed {seed}", flush=True)
        config = mmtok.TrainConfig.load(HERE / "train.yaml", seed=seed,
                                        max_steps=args.train_steps).with_target_streams(["tok_class"])
        mmtok.Trainer(out / "tokens", run, config, progress=False).fit()
        report = evaluate_run(run, out / "tokens", ["tok_class"])  # = mmtok evaluate --stream tok_class
        ev = report.streams[0]
        assert ev.held_out == len(test_ids), (ev.held_out, len(test_ids))
        for method in ("majority", "unigram", "model"):
            c = ev.classification[method]
            runs.setdefault(method if method != "model" else "transformer (argmax)", []).append(
                {k: c[k] for k in ("accuracy", "balanced_accuracy", "per_class_recall")})
        # the same run with a class-balanced loss on the label token (class_weight: {tok_class: balanced})
        weighted = out / f"model_weighted_seed{seed}"
        print(f"$ mmtok train ... --out {weighted}   # seed {seed}, train.yaml + class_weight: "
              "{tok_class: balanced}", flush=True)
        wconfig = config.model_copy(update={"class_weight": {"tok_class": "balanced"}})
        mmtok.Trainer(out / "tokens", weighted, wconfig, progress=False).fit()
        c = evaluate_run(weighted, out / "tokens", ["tok_class"]).streams[0].classification["model"]
        runs.setdefault("transformer, class-weighted loss (argmax)", []).append(
            {k: c[k] for k in ("accuracy", "balanced_accuracy", "per_class_recall")})
        # the same posterior with the training label frequencies divided out (logit adjustment)
        model = mmtok.load_run(run)
        data = mmtok.TokenShards(out / "tokens", ["tok_beat", "tok_class"])
        where = {s: i for i, s in enumerate(data.sample_ids)}
        batch = data.batch([where[s] for s in test_ids])
        with torch.no_grad():
            proba = model.predict_proba(mmtok.TokenBatch({"tok_beat": batch["tok_beat"]}), "tok_class")[:, 0]
        truth = batch["tok_class"].ids[:, 0].numpy()
        assert (truth == y_test).all()
        adjusted = (proba[:, :n_classes].double().numpy() / prior[None]).argmax(1)
        runs.setdefault("transformer (prior-corrected)", []).append(scores(y_test, adjusted))
        # a class-weighted linear probe on the encoder's pooled features of the beat tokens alone
        ids, feats = mmtok.embed_tokens(run, out / "tokens", samples=train_ids + test_ids, exclude=["tok_class"])
        assert ids == train_ids + test_ids
        probe = LogisticRegression(max_iter=2000, class_weight="balanced").fit(feats[:len(train_ids)].numpy(), y_train)
        runs.setdefault("transformer features + linear probe (class-weighted)", []).append(
            scores(y_test, probe.predict(feats[len(train_ids):].numpy())))

    # the supervised 1-D CNN on the same training beats
    beats_train, beats_test = load_beats(train_ids).values, load_beats(test_ids).values
    mu, sd = beats_train.mean(), beats_train.std()
    x_train, x_test = (beats_train - mu) / sd, (beats_test - mu) / sd
    for seed in args.seeds:
        for weighted in (False, True):
            cnn = train_cnn(x_train, torch.as_tensor(y_train), n_classes, seed, weighted)
            with torch.no_grad():
                pred = cnn(x_test).argmax(1).numpy()
            runs.setdefault(f"1-D CNN ({'class-weighted' if weighted else 'plain'} CE)", []).append(
                scores(y_test, pred))
    results["seconds"] = time.time() - t0
    write_json(out / "results.json", results)
    print_tables(results)


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def print_tables(results: dict) -> None:
    print("\nBeat codec (ecg-beat-fsq, 16 tokens of 1000 per beat), fitted on the training minutes:\n")
    print("| beats of | beats | RMSE (mV) | signal std (mV) | RMSE / std | max abs error (mV) | codes used |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for split, r in results["codec"].items():
        print(f"| {split} | {r['beats']} | {r['rmse_mv']:.4f} | {r['signal_std_mv']:.3f} | {r['nrmse']:.3f} | "
              f"{r['max_abs_error_mv']:.3f} | {r['codes_used']} |")
    tc, sc = results["train_counts"], results["test_counts"]
    names = [CLASS_NAMES[c] for c in range(len(tc))]
    print(f"\nBeat class on the held-out minutes: {results['test_beats']} beats "
          f"({', '.join(f'{n} {k}' for n, k in zip(names, sc) if k)}); trained on {results['train_beats']} beats "
          f"({', '.join(f'{n} {k}' for n, k in zip(names, tc))}). Mean ± std over seeds {results['seeds']}:\n")
    present = [c for c, k in enumerate(sc) if k]
    print("| method | accuracy | balanced accuracy | " + " | ".join(f"recall {CLASS_NAMES[c]}" for c in present) + " |")
    print("|---|---:|---:|" + "---:|" * len(present))
    for method, rs in results["runs"].items():
        rec = [mean_std([r["per_class_recall"][c] for r in rs]) for c in present]
        print(f"| {method} | {mean_std([r['accuracy'] for r in rs])} | "
              f"{mean_std([r['balanced_accuracy'] for r in rs])} | " + " | ".join(rec) + " |")
    print(f"\n{results['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
