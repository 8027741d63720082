"""The ``hsi-guided`` bundle on mmtok's shared transformer, on Houston 2013 pixels: the shared-
transformer analogue of the plugin's LiDAR-guidance ablation (`mmtok_plugin_hsi.houston`, guided
SpectralGPT), so the two can be compared.

    python examples/hsi/bundle.py [--out runs/hsi/bundle] [--codec-steps 200] [--steps 200]
                                  [--seeds 0,1,2] [--lidar all|half|none|all,half] [--limit N]

Per seed, the 2,832 labelled pixels are split as the plugin's ablation splits them
(`houston.split_a_b`: 50/50 per class) into A (codec fitting, pretraining, probe training) and B
(probe test only). Every pixel is written as files -- a 1 x 1 px cube ``.npz`` (reflectance
(144, 1, 1), wavelength_nm: the nominal 380-1050 nm grid) and its 21 LiDAR features as an
``elevation_map`` ``.npy`` (21, 1, 1) -- and goes manifest -> `encode_manifest` -> `Trainer`, as
user data would. Both codecs are fitted on A only (``hsi-pixel-fsq``: 12 tokens of 12 bands;
``elevation-map-fsq``: 1 token), the elevation codec on the half of A that keeps its LiDAR in
the ``half`` setting (the ablation's `houston.presence_flags`), so all arms of a seed share one
tokenizer. OUT/seed<k>/registry.yaml points at them.

Arms (``--lidar``: the LiDAR setting(s) of A; B never needs LiDAR at evaluation):

    guided-S   cube + elevation streams, masked modelling + the hsi-guidance head (InfoNCE)
    masked-S   the same streams and data, masked modelling only (no head)
    masked-none  the cube stream alone, masked modelling only (always run: the reference)

with S = all (LiDAR for every A pixel) or half (for a seeded 50 %). Each arm embeds every A and
B pixel from one encoder pass with only the cube stream present: ``pooled``, the transformer's
mean-pooled features, and for guided arms ``head``, the head's unit-norm HSI embedding
(`HSIGuidanceHead.embed_hsi`). A linear probe (`mmtok_plugin_hsi.probe.linear_probe`) fitted on
A's labels is scored on B (OA / AA / kappa), next to the same probe on the raw spectra. Writes
OUT/bundle.json and OUT/bundle.md (mean ± std over seeds, and each arm's paired OA difference
to masked-none).
"""

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

import mmtok
from mmtok.encode import encode_manifest
from mmtok.shards import TokenShards
from mmtok.tokens import TokenBatch
from mmtok.train import TrainConfig, Trainer
from mmtok_plugin_hsi.datasets import load_houston2013
from mmtok_plugin_hsi.houston import presence_flags, split_a_b
from mmtok_plugin_hsi.metrics import classification_report
from mmtok_plugin_hsi.modalities import ElevationMap, HSICube
from mmtok_plugin_hsi.probe import linear_probe

HERE = Path(__file__).resolve().parent
HSI, LIDAR = "tok_hsi_cube", "tok_elevation_map"
HEAD = "hsi-guidance"
CUBE = {"size": [144, 1, 1], "patch": [12, 1, 1], "wavelength_range_nm": [380.0, 1050.0]}
ELEVATION = {"channels": 21, "size": [1, 1], "patch": [1, 1]}
SETTINGS = ("all", "half", "none")
METRICS = ("oa", "aa", "kappa")


# ---------------------------------------------------------------------------- data
def subsample(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Rows kept: all, or a stratified ``limit`` of them (seed 0; for quick runs and tests)."""
    rows = np.arange(len(labels))
    if limit is None or limit >= len(labels):
        return rows
    kept, _ = train_test_split(rows, train_size=limit, stratify=labels, random_state=0)
    return np.sort(kept)


def sample_id(row: int) -> str:
    return f"px{row:04d}"


def write_pixels(out: Path, pixels, rows: np.ndarray) -> None:
    """One 1 x 1 px cube (.npz) and one LiDAR map (.npy) per pixel under OUT/data."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for row in rows:
        sid = sample_id(int(row))
        np.savez(data / f"{sid}.npz", reflectance=pixels.hsi[row].reshape(-1, 1, 1),
                 wavelength_nm=pixels.wavelength_nm)
        np.save(data / f"{sid}_lidar.npy", pixels.lidar[row].reshape(-1, 1, 1))


def write_manifest(path: Path, rows, with_lidar: set[int], labels: np.ndarray) -> Path:
    """Manifest of pixels ``rows`` (files under OUT/data), the rows of ``with_lidar`` with their
    elevation map; the label as metadata."""
    samples = []
    for row in rows:
        sid = sample_id(int(row))
        modalities = {"hsi_cube": f"data/{sid}.npz"}
        if int(row) in with_lidar:
            modalities["elevation_map"] = f"data/{sid}_lidar.npy"
        samples.append({"id": sid, "modalities": modalities, "metadata": {"label": int(labels[row])}})
    path.write_text(json.dumps({"version": 1, "samples": samples}))
    return path


# ---------------------------------------------------------------------------- codecs
def fit_codecs(folder: Path, pixels, a: np.ndarray, lidar_rows: np.ndarray, b: np.ndarray, steps: int,
               seed: int) -> tuple[Path, dict]:
    """Fit both codecs on A (the elevation codec on ``lidar_rows`` of A); report them on B.
    Writes FOLDER/codecs/<stream> and FOLDER/registry.yaml; returns (registry path, reports)."""
    manager = mmtok.get_plugin_manager()
    wl = torch.as_tensor(pixels.wavelength_nm, dtype=torch.float32)

    def cube(rows):
        r = torch.as_tensor(pixels.hsi[rows]).reshape(len(rows), -1, 1, 1)
        return HSICube(reflectance=r, wavelength_nm=wl.expand(len(rows), -1).clone())

    def elevation(rows):
        return ElevationMap(pixels=torch.as_tensor(pixels.lidar[rows]).reshape(len(rows), -1, 1, 1))

    reports, streams = {}, {}
    for key, name, config, modality, kind, train_rows in (
            (HSI, "hsi-pixel-fsq", CUBE, "hsi_cube", cube, a),
            (LIDAR, "elevation-map-fsq", ELEVATION, "elevation_map", elevation, lidar_rows)):
        codec = manager.build_codec(name, config)
        report = mmtok.fit_codec(codec, kind(train_rows), val=kind(b), steps=steps, batch_size=64, seed=seed,
                                 progress=False)
        codec.save_pretrained(folder / "codecs" / key)
        reports[key] = {"train_samples": len(train_rows), "held_out_nrmse": report.nrmse,
                        "codes_used": report.codes_used, "perplexity": report.perplexity}
        streams[key] = {"modality": modality, "codec": name, "config": config, "vocab_size": codec.vocab_size,
                        "num_tokens": codec.num_tokens, "checkpoint": f"codecs/{key}"}
    registry = folder / "registry.yaml"
    registry.write_text(yaml.safe_dump({"version": 1, "streams": streams, "bundles": {
        "hsi-guided": {"streams": [HSI, LIDAR], "heads": [HEAD]}}}, sort_keys=False))
    return registry, reports


# ---------------------------------------------------------------------------- training
def train_config(arm: str, steps: int, seed: int) -> TrainConfig:
    """One arm's run: d_model 64 x 4 encoder + 2 decoder blocks, batch 128, 4 visible + 8 target
    tokens of the 12 (13 with LiDAR); guided arms add the bundle's head (weight 1, 64-d space)."""
    guided = arm.startswith("guided")
    streams = [HSI] if arm == "masked-none" else [HSI, LIDAR]
    return TrainConfig.model_validate({
        "bundle": "hsi-guided" if guided else None, "streams": streams,
        "heads": {HEAD: {"head": HEAD, "weight": 1.0, "config": {"shared_dim": 64}}} if guided else {},
        "seed": seed, "batch_size": 128, "max_steps": steps, "val_fraction": 0.0, "log_every": max(1, steps // 6),
        "eval_every": steps, "checkpoint_every": steps, "keep_checkpoints": 1, "precision": "fp32",
        "model": {"d_model": 64, "num_heads": 4, "encoder_depth": 4, "decoder_depth": 2},
        "masking": {"input_budget": 4, "target_budget": 8},
        "optim": {"lr": 1e-3, "warmup_steps": 20}})


def load_arm(run: Path, tokens: Path) -> Trainer:
    """The trained arm of run folder ``run`` (resumed from its checkpoint, not trained further)."""
    return Trainer(tokens, run, TrainConfig.load(run / "config.yaml"), progress=False)


@torch.no_grad()
def hsi_only_embeddings(trainer: Trainer, batch: TokenBatch) -> dict[str, torch.Tensor]:
    """HSI-only embeddings of ``batch`` (which may hold other streams; they are dropped first):
    ``pooled`` (b, d_model) encoder features of a pass with only the cube stream present, and for
    a guided arm ``head`` (b, shared_dim), the head's HSI embedding."""
    model = trainer.model.eval()
    view = batch.without([k for k in batch if k != HSI])
    out = {"pooled": model.embed(view).pooled}
    if HEAD in trainer.module.heads:
        out["head"] = trainer.module.heads[HEAD].eval().embed_hsi(model, batch)
    return out


def embed_split(trainer: Trainer, tokens: Path, batch_size: int = 512) -> tuple[list[str], dict[str, np.ndarray]]:
    """(sample ids, {kind: (n, e)}) of every sample of the token folder ``tokens``."""
    shards = TokenShards(tokens)
    parts: dict[str, list] = {}
    for start in range(0, len(shards), batch_size):
        batch = shards.batch(range(start, min(start + batch_size, len(shards))))
        for kind, e in hsi_only_embeddings(trainer, batch).items():
            parts.setdefault(kind, []).append(e)
    return shards.sample_ids, {k: torch.cat(v).numpy() for k, v in parts.items()}


def invariance(trainer: Trainer, tokens: Path, seed: int) -> dict[str, float]:
    """Largest change of any B sample's HSI-only embedding when its elevation tokens are
    scrambled or removed (0 when the LiDAR cannot reach the HSI side)."""
    shards = TokenShards(tokens)
    batch = shards.batch(range(len(shards)))
    if LIDAR not in batch:
        return {}
    stream = batch[LIDAR]
    g = torch.Generator().manual_seed(seed)
    scrambled = batch.replace(**{LIDAR: dataclasses.replace(stream, ids=torch.randint(
        stream.vocab_size, stream.ids.shape, generator=g))})
    base = hsi_only_embeddings(trainer, batch)
    out = {}
    for name, other in (("scrambled", scrambled), ("removed", batch.without([LIDAR]))):
        for kind, e in hsi_only_embeddings(trainer, other).items():
            out[f"{kind}/{name}"] = float((e - base[kind]).abs().max())
    return out


def probe(x_a, y_a, x_b, y_b, num_classes: int, seed: int) -> dict:
    """OA / AA / kappa on B of a linear probe fitted on A."""
    r = classification_report(y_b, linear_probe(x_a, y_a, x_b, seed=seed), num_classes)
    return {k: r[k] for k in (*METRICS, "n")}


# ---------------------------------------------------------------------------- one seed
def arms_of(settings: list[str]) -> list[str]:
    """guided-S and masked-S for each LiDAR setting S of all / half, then masked-none (always:
    the reference without LiDAR)."""
    arms = [f"{kind}-{s}" for s in settings if s != "none" for kind in ("guided", "masked")]
    return arms + ["masked-none"]


def run_seed(out: Path, pixels, rows: np.ndarray, seed: int, settings: list[str], codec_steps: int,
             steps: int, raw: bool = True) -> dict:
    """Codecs, tokens, every arm's training and probes for one seed, under OUT/seed<seed>."""
    folder = out / f"seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    labels = pixels.labels
    ia, ib = split_a_b(labels[rows], seed)  # the plugin's own ablation split and LiDAR-present half
    a, b = rows[ia], rows[ib]
    keep = a[presence_flags(len(a), 0.5, seed).numpy()]  # A pixels with LiDAR in "half"
    times = {}
    t = time.perf_counter()
    registry, codecs = fit_codecs(folder, pixels, a, keep, b, codec_steps, seed)
    times["codecs"] = time.perf_counter() - t
    t = time.perf_counter()
    manifests = {"B": write_manifest(out / f"manifest_seed{seed}_B.json", b, set(b.tolist()), labels)}
    # A-all: every arm but the half ones trains on it (masked-none on its cube stream only)
    manifests["A-all"] = write_manifest(out / f"manifest_seed{seed}_A-all.json", a, set(a.tolist()), labels)
    if "half" in settings:
        manifests["A-half"] = write_manifest(out / f"manifest_seed{seed}_A-half.json", a, set(keep.tolist()), labels)
    tokens = {}
    for split, manifest in manifests.items():
        tokens[split] = folder / f"tokens_{split}"
        encode_manifest(manifest, tokens[split], registry_path=registry, progress=False)
    times["encode"] = time.perf_counter() - t

    label_of = {sample_id(int(r)): int(labels[r]) - 1 for r in rows}  # classes 0..14
    num_classes = len(pixels.class_names) - 1
    y_a, y_b = labels[a] - 1, labels[b] - 1
    results = {}
    if raw:
        t = time.perf_counter()
        results["raw spectrum"] = {"probe": probe(pixels.hsi[a], y_a, pixels.hsi[b], y_b, num_classes, seed)}
        times["probe/raw spectrum"] = time.perf_counter() - t
    for arm in arms_of(settings):
        setting = arm.split("-")[1]
        train_tokens = tokens["A-half" if setting == "half" else "A-all"]
        t = time.perf_counter()
        trainer = Trainer(train_tokens, folder / arm, train_config(arm, steps, seed), progress=False)
        records = trainer.fit()
        times[f"train/{arm}"] = time.perf_counter() - t
        t = time.perf_counter()
        emb = {}
        for split in ("A", "B"):
            ids, e = embed_split(trainer, tokens["B"] if split == "B" else train_tokens)
            emb[split] = (np.array([label_of[s] for s in ids]), e)
        check = invariance(trainer, tokens["B"], seed)
        times[f"embed/{arm}"] = time.perf_counter() - t
        t = time.perf_counter()
        (ya, ea), (yb, eb) = emb["A"], emb["B"]
        results[arm] = {kind: probe(ea[kind], ya, eb[kind], yb, num_classes, seed) for kind in ea}
        results[arm]["invariance"] = check
        results[arm]["last"] = {k: v for k, v in records[-1].items() if k.startswith(("loss", "head/"))}
        times[f"probe/{arm}"] = time.perf_counter() - t
        print(f"seed {seed} {arm}: " + ", ".join(
            f"{kind} OA {100 * r['oa']:.1f}" for kind, r in results[arm].items() if kind in ("head", "pooled"))
            + f" (train {times[f'train/{arm}']:.0f} s)", flush=True)
    return {"seed": seed, "A": len(a), "B": len(b), "A_with_lidar_half": len(keep), "codecs": codecs,
            "results": results, "seconds": times}


# ---------------------------------------------------------------------------- summary
def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarise(seeds: list[dict]) -> dict:
    """{arm: {embedding: {metric: {mean, std, values}, paired differences}}} over seeds (sample
    std, 0 for one seed). Paired by seed: ``oa_minus_reference``, OA minus masked-none's pooled
    OA; for guided-S, ``oa_minus_head_removed``, OA minus masked-S's pooled OA."""
    table: dict = {}

    def oa(s, arm, kind="pooled"):
        return s["results"][arm][kind]["oa"]

    for arm in seeds[0]["results"]:
        for kind in ("probe", "head", "pooled"):
            if kind not in seeds[0]["results"][arm]:
                continue
            row = {m: _stats([s["results"][arm][kind][m] for s in seeds]) for m in METRICS}
            row["oa_minus_reference"] = _stats([oa(s, arm, kind) - oa(s, "masked-none") for s in seeds])
            if arm.startswith("guided-"):
                same = arm.replace("guided-", "masked-")
                row["oa_minus_head_removed"] = _stats([oa(s, arm, kind) - oa(s, same) for s in seeds])
            table.setdefault(arm, {})[kind] = row
    return table


DESCRIBE = {"raw spectrum": "raw 144-band spectrum (no model)",
            "guided-all": "hsi-guided: MM + hsi-guidance, LiDAR for all of A",
            "guided-half": "hsi-guided: MM + hsi-guidance, LiDAR for 50% of A",
            "masked-all": "MM only (no head), LiDAR stream for all of A",
            "masked-half": "MM only (no head), LiDAR stream for 50% of A",
            "masked-none": "MM only, cube stream alone (no LiDAR)"}
KIND = {"probe": "spectrum", "head": "head HSI embedding", "pooled": "pooled HSI-only features"}


def _diff(d: dict | None, n: int) -> str:
    if d is None:
        return "—"
    return f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f} ({sum(v > 0 for v in d['values'])}/{n} > 0)"


def markdown(table: dict, n_seeds: int) -> str:
    lines = ["| arm | embedding (HSI only) | OA % | AA % | kappa % | ΔOA vs masked-none pooled | "
             "ΔOA vs head removed (masked-S pooled) |", "|---|---|---:|---:|---:|---:|---:|"]
    for arm, kinds in table.items():
        for kind, r in kinds.items():
            cells = [f"{100 * r[m]['mean']:.2f} ± {100 * r[m]['std']:.2f}" for m in METRICS]
            ref = None if arm == "masked-none" else r["oa_minus_reference"]
            lines.append(f"| {DESCRIBE.get(arm, arm)} | {KIND[kind]} | " + " | ".join(cells)
                         + f" | {_diff(ref, n_seeds)} | {_diff(r.get('oa_minus_head_removed'), n_seeds)} |")
    lines.append(f"\nmean ± sample std over {n_seeds} seed(s), in %; linear probe fitted on A, scored on B; "
                 "Δ: paired by seed, in points (seeds with Δ > 0).")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE.parents[1] / "runs" / "hsi" / "bundle")
    p.add_argument("--codec-steps", type=int, default=200, help="fitting steps of each codec (batch 64)")
    p.add_argument("--steps", type=int, default=200, help="transformer training steps per arm (batch 128)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lidar", default="all",
                   help="LiDAR setting(s) of A, a comma list of all / half / none (masked-none always runs)")
    p.add_argument("--limit", type=int, default=None, help="a stratified subset of this many pixels (quick runs)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of torch and of the BLAS under scikit-learn (1: fastest on a shared machine)")
    p.add_argument("--no-raw", action="store_true", help="skip the raw-spectrum probe (the plugin ablation has it)")
    args = p.parse_args(argv)
    settings = [s.strip() for s in args.lidar.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        raise mmtok.MmtokError(f"--lidar: expected a comma list of {list(SETTINGS)}, found {args.lidar!r}")
    seeds = [int(s) for s in args.seeds.split(",")]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(args.threads):
            return _main(args, settings, seeds)
    finally:
        torch.set_num_threads(old_threads)


def _main(args, settings: list[str], seeds: list[int]) -> dict:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pixels = load_houston2013()
    rows = subsample(pixels.labels, args.limit)
    write_pixels(out, pixels, rows)
    per_seed = [run_seed(out, pixels, rows, s, settings, args.codec_steps, args.steps, raw=not args.no_raw)
                for s in seeds]
    command = (f"python examples/hsi/bundle.py --codec-steps {args.codec_steps} --steps {args.steps} "
               f"--seeds {args.seeds} --lidar {args.lidar}" + (f" --limit {args.limit}" if args.limit else "")
               + (" --no-raw" if args.no_raw else ""))
    result = {"command": command, "pixels": len(rows), "split": "mmtok_plugin_hsi.houston.split_a_b(labels, seed)",
              "lidar_half": "mmtok_plugin_hsi.houston.presence_flags(len(A), 0.5, seed)", "lidar": settings,
              "seeds": seeds, "codec_steps": args.codec_steps, "steps": args.steps,
              "train_config": train_config("guided-all", args.steps, 0).model_dump(mode="json"),
              "threads": torch.get_num_threads(), "summary": summarise(per_seed), "per_seed": per_seed,
              "seconds": time.perf_counter() - t0}
    print(write_report(out, result))
    return result


def write_report(out: Path, result: dict) -> str:
    """Write OUT/bundle.json and OUT/bundle.md (table + wall times) of ``result``; returns the table."""
    text = markdown(result["summary"], len(result["seeds"]))
    seeds = result["per_seed"]
    stages = {k: statistics.fmean(s["seconds"][k] for s in seeds) for k in seeds[0]["seconds"]}
    times = ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
    codecs = "; ".join(f"{k} {statistics.fmean(s['codecs'][k]['held_out_nrmse'] for s in seeds):.3f}"
                       for k in seeds[0]["codecs"])
    (out / "bundle.json").write_text(json.dumps(result, indent=1))
    (out / "bundle.md").write_text(
        f"# hsi-guided bundle on the shared transformer, Houston 2013 ({result['pixels']} pixels)\n\n"
        f"`{result['command']}`: {result['seconds']:.0f} s wall, {result['threads']} thread(s); A = "
        f"{seeds[0]['A']}, B = {seeds[0]['B']} pixels per seed; {result['steps']} steps x batch 128 per arm, "
        f"codecs {result['codec_steps']} steps on A (held-out nRMSE on B: {codecs}).\n\n{text}\n\n"
        f"Wall seconds per seed (mean): {times}.\n")
    return text

if __name__ == "__main__":
    main()
