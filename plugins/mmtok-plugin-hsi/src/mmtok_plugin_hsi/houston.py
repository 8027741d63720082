"""Houston 2013 aux-guidance ablation: does LiDAR guidance during pretraining make the HSI-only
embeddings better for classification?

Data: the 2,832 labelled Houston 2013 pixels (144 CASI bands + 21 LiDAR attribute-profile
features), as 1 x 1 px cubes (n, 144, 1, 1) on ``uniform_grid(380, 1050, 144)`` (the nominal band
centres: an identity resampling, written out so the grid is explicit) and LiDAR images
(n, 21, 1, 1). The files have no pixel coordinates and no HSI test set, so each seed draws a
stratified 50/50 split of the 2,832 pixels into A (pretraining and probe training) and B (probe
test only; it takes no part in pretraining or in fitting the probe).

Arms (same seed -> same split, mini-batches, masks and initial weights of every parameter the
arms share, see `initial_model`; same encoder size):
``unguided`` (auxiliaries {}), ``guided_lidar`` (LiDAR present for all of A), ``guided_lidar_50pct``
(present flags True for a random half of A), ``guided_lidar_hsi_latent`` (all of A, InfoNCE on the
HSI-only encoding of the visible tokens, ``contrastive_latent="hsi"``). Each is evaluated by a
linear probe on HSI-only embeddings (`embed_cubes`: no LiDAR at inference) fitted on A's labels,
tested on B: OA / AA / kappa, mean +- std over seeds, and the per-seed paired difference
guided - unguided. Context rows: the same encoder randomly initialised, a linear probe and an
SVM (RBF) on the raw spectra, and a linear probe on raw HSI + LiDAR (LiDAR at test time: what
the auxiliary carries when it is available, which the guided encoders never see at inference).

    result = run_ablation(Path("runs/hsi/houston"))      # -> houston_ablation.json / .md
"""

import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from mmtok import MmtokError
from mmtok_plugin_hsi.baselines import svm_rbf
from mmtok_plugin_hsi.datasets import PixelSet, load_houston2013
from mmtok_plugin_hsi.metrics import classification_report
from mmtok_plugin_hsi.model import GuidedSpectralGPT, GuidedSpectralGPTConfig
from mmtok_plugin_hsi.preprocessing import resample_bands, uniform_grid
from mmtok_plugin_hsi.pretrain import (CubeNorm, PretrainConfig, embed_cubes, limited_threads, pretrain,
                                       write_experiment)
from mmtok_plugin_hsi.probe import linear_probe
from mmtok_plugin_hsi.splits import random_per_class

__all__ = ["ARMS", "GRID_NM", "houston_cubes", "houston_model_config", "initial_model", "presence_flags",
           "split_a_b", "run_ablation"]

AUX = "elevation_map"
#: the model's wavelength grid: the nominal CASI band centres
GRID_NM = (380.0, 1050.0, 144)
#: arm -> (LiDAR present fraction of A, None = unguided model; contrastive_latent)
ARMS: dict[str, tuple[float | None, str]] = {
    "unguided": (None, "guided"),
    "guided_lidar": (1.0, "guided"),
    "guided_lidar_50pct": (0.5, "guided"),
    "guided_lidar_hsi_latent": (1.0, "hsi"),
}
LABELS = {
    "unguided": "(i) unguided MAE",
    "guided_lidar": "(ii) guided, LiDAR for 100 % of A",
    "guided_lidar_50pct": "(iii) guided, LiDAR for 50 % of A",
    "guided_lidar_hsi_latent": "(ii') guided 100 %, contrastive_latent=\"hsi\"",
    "random_init": "same encoder, random init",
    "raw_linear": "raw spectrum, linear probe",
    "raw_svm": "raw spectrum, SVM (RBF)",
    "raw_hsi_lidar_linear": "raw HSI + LiDAR at test time, linear probe",
}
METRICS = ("oa", "aa", "kappa")


def houston_model_config(**overrides) -> GuidedSpectralGPTConfig:
    """The ablation's encoder (unguided; arms add ``auxiliaries``): 1 x 1 px cubes of 144 bands,
    6-band tokens (24 per pixel), 75 % masked (6 visible: SpectralGPT's 90 % would leave 2),
    dim 64 x depth 4. Spectral attention is off: with one spatial position it would be a second
    copy of the joint attention over the same 24 tokens."""
    base = dict(bands=GRID_NM[2], size=1, spectral_patch=6, spatial_patch=1, dim=64, depth=4, heads=4,
                decoder_dim=64, decoder_depth=2, decoder_heads=4, mask_ratio=0.75, spectral_attention=False,
                aux_patch=1, conditioner_dim=64, conditioner_depth=2, conditioning_tokens=4, embed_dim=64,
                contrastive_weight=0.1)
    return GuidedSpectralGPTConfig(**{**base, **overrides})


def houston_cubes(pixels: PixelSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(HSI cubes (n, 144, 1, 1) on the GRID_NM grid, LiDAR images (n, 21, 1, 1)), float32."""
    hsi = torch.from_numpy(pixels.hsi).float()[:, :, None, None]
    cubes = resample_bands(hsi, torch.from_numpy(pixels.wavelength_nm), uniform_grid(*GRID_NM))
    return cubes, torch.from_numpy(pixels.lidar).float()[:, :, None, None]


def split_a_b(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified 50/50 split of pixel indices: (A, B), disjoint, sorted (``random_per_class``
    with fraction 0.5: floor(n_c / 2) pixels of each class to A)."""
    return random_per_class(labels, fraction=0.5, seed=seed, min_per_class=1)


def presence_flags(n: int, fraction: float, seed: int) -> torch.Tensor:
    """(n,) bool with exactly round(fraction * n) True at seeded random positions."""
    present = torch.zeros(n, dtype=torch.bool)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(10_000 + seed))
    present[order[:int(round(fraction * n))]] = True
    return present


def initial_model(cfg: GuidedSpectralGPTConfig, seed: int) -> GuidedSpectralGPT:
    """A fresh model whose parameters shared with the unguided model of the same size (patch
    embedding, encoder blocks, decoder) equal that model's seeded initialisation; only the
    guidance parts (conditioners, cross-attention layers, projection head) differ. So every arm
    of one seed starts from the same function (the cross-attention gates start at 0)."""
    torch.manual_seed(seed)
    unguided = GuidedSpectralGPT(cfg.model_copy(update={"auxiliaries": {}}))
    if not cfg.auxiliaries:
        return unguided
    torch.manual_seed(seed)
    model = GuidedSpectralGPT(cfg)
    missing = model.load_state_dict(unguided.state_dict(), strict=False).unexpected_keys
    if missing:
        raise MmtokError(f"initial_model: unguided parameters {missing[:3]} have no guided counterpart")
    return model


def _subsample(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def _score(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    rep = classification_report(y_true, y_pred, num_classes)
    return {"oa": rep["oa"], "aa": rep["aa"], "kappa": rep["kappa"], "per_class": rep["per_class"]}


def _summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}


def _paired(arm: list[dict], ref: list[dict]) -> dict:
    """Per-seed difference arm - ref for each metric; paired t-test p (None for < 2 seeds)."""
    out = {}
    for m in METRICS:
        d = np.array([a[m] - r[m] for a, r in zip(arm, ref)])
        p = float(stats.ttest_rel([a[m] for a in arm], [r[m] for r in ref]).pvalue) if len(d) > 1 and d.std() > 0 \
            else None
        out[m] = {**_summary(d), "positive_seeds": int((d > 0).sum()), "p_paired_t": p}
    return out


def _verdict(diff: dict, n: int) -> str:
    d = diff["oa"]
    mean, std, p = 100 * d["mean"], 100 * d["std"], d["p_paired_t"]
    tail = (f"OA {mean:+.2f} ± {std:.2f} points (paired over {n} seeds, {d['positive_seeds']}/{n} seeds "
            f"positive, paired t-test p = {p:.3f})" if p is not None else f"OA {mean:+.2f} points ({n} seed)")
    if p is not None and p < 0.05:
        return ("helps: " if mean > 0 else "hurts: ") + tail
    return "within noise: " + tail


def _pct(s: dict) -> str:
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def _markdown(result: dict) -> str:
    r, seeds = result, result["seeds"]
    n_seeds = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    lines = [
        f"### Houston 2013: LiDAR-guidance ablation (HSI-only linear probe, {n_seeds}: "
        f"{', '.join(map(str, seeds))})",
        "",
        f"{r['n_pixels']} labelled pixels, per seed a stratified 50/50 split: A = {r['n_a']} pixels (pretraining "
        f"and probe training), B = {r['n_b']} pixels (probe test only; never seen in pretraining or probe "
        "training). **Caveat:** pixels of one scene are spatially correlated and the files carry no pixel "
        "coordinates, so a spatially disjoint split cannot be enforced: the absolute numbers are optimistic. "
        "What the ablation measures is the difference between arms on identical splits, seeds, "
        "mini-batches and masks.",
        "",
        f"Encoder: GuidedSpectralGPT on 1 x 1 px cubes, 144 bands on uniform_grid(380, 1050, 144), "
        f"{r['model']['spectral_patch']}-band tokens ({r['tokens']} per pixel), mask ratio "
        f"{r['model']['mask_ratio']} ({r['visible_tokens']} visible tokens; SpectralGPT's 0.9 would leave "
        f"{max(1, int(r['tokens'] * 0.1))}), dim {r['model']['dim']} x depth {r['model']['depth']}, "
        f"{r['steps']} steps x batch {r['batch_size']}, λ = {r['model']['contrastive_weight']}, "
        f"τ = {r['model']['temperature']}. Guided arms add a LiDAR conditioner (21 channels, 1 x 1 px) and "
        "cross-attention layers; at inference (embeddings) no LiDAR is given, so those layers are the "
        "identity. Probe: standardised features -> logistic regression, C by 3-fold CV on A. "
        "Mean ± sample std over seeds, in %.",
        "",
        "| method | OA | AA | κ | pretrain s / seed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in [k for k in LABELS if k in r["methods"]]:  # fixed order (JSON round trips sort keys)
        row = r["methods"][key]
        secs = f"{np.mean(row['pretrain_seconds']):.0f}" if row.get("pretrain_seconds") else "–"
        lines.append(f"| {LABELS.get(key, key)} | {_pct(row['oa'])} | {_pct(row['aa'])} | {_pct(row['kappa'])} "
                     f"| {secs} |")
    lines += ["", "Paired difference arm − unguided (per seed, then mean ± std), in points:", "",
              "| arm | ΔOA | ΔAA | Δκ | seeds with ΔOA > 0 | p (paired t, OA) | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for key in [k for k in LABELS if k in r["paired_vs_unguided"]]:
        d = r["paired_vs_unguided"][key]
        p = d["oa"]["p_paired_t"]
        lines.append(f"| {LABELS.get(key, key)} | {_pct(d['oa'])} | {_pct(d['aa'])} | {_pct(d['kappa'])} | "
                     f"{d['oa']['positive_seeds']}/{len(seeds)} | {'–' if p is None else f'{p:.3f}'} | "
                     f"{r['verdicts'][key].split(':')[0]} |")
    lines += ["", f"**Verdict** (guided with LiDAR for all of A vs unguided): {r['verdict']}.", ""]
    m = r["methods"]
    pretrained = [k for k in ARMS if k in m]
    if pretrained and "raw_linear" in m and "random_init" in m:
        best = max(pretrained, key=lambda k: m[k]["oa"]["mean"])
        gap_raw = 100 * (m[best]["oa"]["mean"] - m["raw_linear"]["oa"]["mean"])
        gap_rand = 100 * (m["unguided"]["oa"]["mean"] - m["random_init"]["oa"]["mean"]) if "unguided" in m else None
        lines += [f"For scale: the best pretrained arm ({LABELS[best]}) is {gap_raw:+.2f} OA points against a linear "
                  "probe on the raw spectrum" + ("" if gap_rand is None else
                                                 f"; the unguided MAE is {gap_rand:+.2f} against its random "
                                                 "initialisation") + ".", ""]
    if len(r["paired_vs_unguided"]) > 1:
        lines += [f"{len(r['paired_vs_unguided'])} arms are compared with one reference: at a Bonferroni level of "
                  f"0.05 / {len(r['paired_vs_unguided'])} = {0.05 / len(r['paired_vs_unguided']):.3f} "
                  + ("none is significant." if all((d['oa']['p_paired_t'] or 1) >= 0.05 / len(r['paired_vs_unguided'])
                                                   for d in r['paired_vs_unguided'].values())
                     else "some remain significant (see p)."), ""]
    if len(seeds) < 5:
        t_crit = stats.t.ppf(0.975, max(1, len(seeds) - 1))
        lines += [f"With {n_seeds} a paired t-test needs |t| > {t_crit:.2f} for p < 0.05, so only large, "
                  "consistent effects count as 'helps' / 'hurts'.", ""]
    lines += [f"Wall time: {r['seconds']:.0f} s in all (torch / BLAS threads: {r['threads']}).", ""]
    return "\n".join(lines)


def run_ablation(out: Path, *, steps: int = 200, seeds=(0, 1, 2), progress: bool = True,
                 arms=tuple(ARMS), batch_size: int = 128, limit: int | None = None,
                 model: dict | None = None, svm: bool = True, threads: int | None = None,
                 data: PixelSet | None = None) -> dict:
    """Run the ablation; write ``out``/houston_ablation.json and .md; return every number plus
    "markdown". ``limit``: at most this many pixels per class (quick runs / tests); ``model``:
    overrides of `houston_model_config`; ``svm``: include the raw-spectrum SVM; ``threads``:
    torch threads during the run (restored after); ``data``: the pixels (default
    `load_houston2013()`)."""
    t0 = time.perf_counter()
    with limited_threads(threads):
        result = _run(data or load_houston2013(), steps, tuple(seeds), progress, tuple(arms), batch_size,
                      limit, model or {}, svm)
    result["seconds"] = time.perf_counter() - t0
    result["threads"] = threads or torch.get_num_threads()
    result["markdown"] = _markdown(result)
    return write_experiment(out, "houston_ablation", result)


def _run(data: PixelSet, steps, seeds, progress, arms, batch_size, limit, model_overrides, svm) -> dict:
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise MmtokError(f"arms: unknown {unknown[0]!r}, expected some of {list(ARMS)}")
    keep = _subsample(data.labels, limit) if limit else np.arange(len(data.labels))
    cubes, lidar = (t[torch.from_numpy(keep)] for t in houston_cubes(data))
    labels = data.labels[keep]
    y = labels - 1  # 0..14
    num_classes = len(data.class_names) - 1
    hsi_raw, lidar_raw = data.hsi[keep].astype(np.float64), data.lidar[keep].astype(np.float64)
    base_cfg = houston_model_config(**model_overrides)
    log = print
    if progress:
        from tqdm import tqdm
        log = tqdm.write
    per_seed: list[dict] = []
    splits = {}
    for seed in seeds:
        a, b = split_a_b(labels, seed)
        assert not np.intersect1d(a, b).size
        splits[str(seed)] = {"a": a.tolist(), "b": b.tolist()}
        norm = CubeNorm.fit(cubes[a])
        rows: dict[str, dict] = {}
        ta = torch.from_numpy(a)
        for arm in arms:
            fraction, latent = ARMS[arm]
            cfg = base_cfg if fraction is None else base_cfg.model_copy(
                update={"auxiliaries": {AUX: lidar.shape[1]}, "contrastive_latent": latent})
            aux = None
            present = None
            if fraction is not None:
                present = presence_flags(len(a), fraction, seed)
                aux = {AUX: (lidar[ta], present)}
            pcfg = PretrainConfig(steps=steps, batch_size=batch_size, warmup=min(30, max(1, steps // 10)),
                                  seed=seed, log_every=max(1, steps // 10))
            net, hist = pretrain(cubes[ta], pcfg, model=initial_model(cfg, seed), aux=aux, norm=norm,
                                 progress=progress)
            emb = embed_cubes(net, cubes, norm).numpy()
            pred = linear_probe(emb[a], y[a], emb[b], seed=seed)
            rows[arm] = {**_score(y[b], pred, num_classes), "pretrain_seconds": hist["seconds"],
                         "final_mae": hist["mae"][-1], "final_loss": hist["loss"][-1],
                         "final_contrastive": {k: v[-1][1] for k, v in hist.items() if k.startswith("contrastive/")},
                         "present_fraction": None if present is None else float(present.float().mean()),
                         "parameters": net.num_parameters()}
            log(f"houston seed {seed} {arm}: OA {rows[arm]['oa']:.4f} AA {rows[arm]['aa']:.4f} "
                f"kappa {rows[arm]['kappa']:.4f} (pretrain {hist['seconds']:.0f} s, mae {hist['mae'][-1]:.4f})")
        rand = initial_model(base_cfg, seed).eval()
        emb = embed_cubes(rand, cubes, norm).numpy()
        rows["random_init"] = _score(y[b], linear_probe(emb[a], y[a], emb[b], seed=seed), num_classes)
        rows["raw_linear"] = _score(y[b], linear_probe(hsi_raw[a], y[a], hsi_raw[b], seed=seed), num_classes)
        if svm:
            t = time.perf_counter()
            rows["raw_svm"] = {**_score(y[b], svm_rbf(hsi_raw[a], y[a], hsi_raw[b], seed=seed, n_jobs=1),
                                        num_classes), "seconds": time.perf_counter() - t}
        both = np.concatenate([hsi_raw, lidar_raw], axis=1)
        rows["raw_hsi_lidar_linear"] = _score(y[b], linear_probe(both[a], y[a], both[b], seed=seed), num_classes)
        log(f"houston seed {seed} context: " + ", ".join(
            f"{k} OA {rows[k]['oa']:.4f}" for k in ("random_init", "raw_linear", "raw_svm", "raw_hsi_lidar_linear")
            if k in rows))
        per_seed.append(rows)

    methods = {}
    for key in per_seed[0]:
        reps = [r[key] for r in per_seed]
        methods[key] = {m: _summary([x[m] for x in reps]) for m in METRICS}
        if "pretrain_seconds" in reps[0]:
            methods[key]["pretrain_seconds"] = [x["pretrain_seconds"] for x in reps]
    paired = {arm: _paired([r[arm] for r in per_seed], [r["unguided"] for r in per_seed])
              for arm in arms if arm != "unguided" and "unguided" in arms}
    verdicts = {arm: _verdict(d, len(seeds)) for arm, d in paired.items()}
    n_a = int(np.mean([len(s["a"]) for s in splits.values()]))
    return {
        "seeds": list(seeds), "steps": steps, "batch_size": batch_size, "arms": list(arms),
        "n_pixels": int(len(labels)), "n_a": n_a, "n_b": int(len(labels)) - n_a,
        "tokens": base_cfg.bands // base_cfg.spectral_patch,
        "visible_tokens": max(1, int(base_cfg.bands // base_cfg.spectral_patch * (1 - base_cfg.mask_ratio))),
        "model": base_cfg.to_dict(), "grid_nm": list(GRID_NM),
        "methods": methods, "per_seed": {str(s): r for s, r in zip(seeds, per_seed)},
        "paired_vs_unguided": paired, "verdicts": verdicts,
        "verdict": verdicts.get("guided_lidar", "not measured (needs the unguided and guided_lidar arms)"),
        "splits": splits,
        "notes": ("Stratified 50/50 split of the 2,832 labelled pixels per seed (A: pretraining + probe "
                  "training, B: probe test). No pixel coordinates: no spatially disjoint split is possible, "
                  "absolute numbers are optimistic; compare arms. Std = sample std (ddof 1) over seeds."),
    }
