"""Indian Pines per-pixel classification with a self-supervised `GuidedSpectralGPT`.

    result = run_indian_pines(Path("runs/hsi/indian_pines"), steps=600, seeds=(0, 1, 2))

The scene (AVIRIS, 200 bands, 145 x 145 px, 16 classes) is resampled onto the model's grid
(192 bands, 400-2500 nm; the scene covers 400.0-2499.0 nm, so the last grid band is the nearest
valid band) and cut into pixel-centred ``chip`` x ``chip`` chips. Indian Pines has no auxiliary
image, so the model is the unguided SpectralGPT MAE (``auxiliaries = {}``); its guidance is
evaluated on Houston 2013 (`mmtok_plugin_hsi.houston`).

Two protocols, each for every seed:

- ``spatial`` (b, the honest number): `splits.spatially_disjoint` (whole blocks to train or
  test, a gap so no test chip overlaps a training chip). Pretraining sees only chips that share
  no pixel with any test chip: centres in the training blocks (labelled or not) at Chebyshev
  distance >= ``chip`` from every test pixel. The band normalisation is fitted on those chips.
- ``random`` (a, the common protocol, for comparability): `splits.random_per_class` (10 % of
  each class). Pretraining uses every chip of the scene, test pixels included, without labels:
  the field's usual transductive practice. Neighbouring pixels are correlated, so these scores
  are optimistic.

Per seed and protocol: pretrain (seeded), then on the HSI-only embeddings a linear probe
(`probe.linear_probe`), the fine-tune (`probe.finetune`), and baselines on the same split: the
same encoder at its random initialisation (the pretraining run's starting weights) with the same
probe, the same probe (logistic regression) on the raw 200-band spectra, SVM (RBF) on raw
spectra and PCA(30) + SVM (`baselines.fit_svm`). Scores: OA / AA / kappa on the test pixels
(`metrics.classification_report`), mean +- std over seeds.

Writes ``out/indian_pines.json`` (every number, the config, timings), ``out/indian_pines.md``
(the tables, published anchors beside them), figures (seed 0), the seed-0 pretraining runs
(``out/run_spatial_seed0``, ``out/run_random_seed0``: `pretrain.save_run`, usable by
``mmtok hsi probe``) and ``out/parts/`` (one JSON per protocol and seed; a rerun with the same
config reuses them).
"""

import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mmtok import MmtokError, write_json

__all__ = ["GRID_NM", "PUBLISHED_ANCHORS", "METHODS", "prepare_scene", "pretraining_centres", "run_indian_pines",
           "summarise", "markdown"]

#: the model's wavelength grid: (start nm, stop nm, bands)
GRID_NM = (400.0, 2500.0, 192)

#: method key -> table label
METHODS = {
    "probe_pretrained": "GuidedSpectralGPT (unguided), self-supervised, linear probe",
    "finetune_pretrained": "GuidedSpectralGPT (unguided), self-supervised, fine-tuned",
    "probe_random_init": "same encoder, random init, linear probe",
    "logreg_raw": "logistic regression (the probe) on raw spectra",
    "svm_raw": "SVM (RBF) on raw spectra",
    "pca30_svm": "PCA (30) + SVM (RBF)",
}

#: cited beside the table; numbers only where they were checked against the source
PUBLISHED_ANCHORS = [
    {"method": "SpectralFormer (Hong et al., IEEE TGRS 2022, arXiv 2107.02988)",
     "note": "reports Indian Pines OA / AA / kappa with its own fixed, spatially disjoint train/test split "
             "(the split shipped with its code, github.com/danfenghong/IEEE_TGRS_SpectralFormer), pixel-wise "
             "and patch-wise variants; fully supervised. Numbers not quoted here: we could not check them "
             "against the paper in this session."},
    {"method": "SpectralGPT (Hong et al., IEEE TPAMI 2024, doi 10.1109/TPAMI.2024.3362475)",
     "note": "pretrained on Sentinel-2 multispectral images; its abstract lists four downstream tasks "
             "(single- / multi-label scene classification, semantic segmentation, change detection) and no "
             "Indian Pines per-pixel classification, so it has no Indian Pines number to cite."},
]

PROTOCOLS = ("spatial", "random")


# ---------------------------------------------------------------------------------------------- data
def prepare_scene(chip: int = 9, grid_nm: tuple = GRID_NM) -> dict:
    """The scene on the model's grid: {"scene" (datasets.Scene), "cube" (192, h, w) float32 numpy,
    "grid_nm" (192,), "labelled" flat indices (n,), "labels" (n,) of those pixels, "chips"
    (n, 192, chip, chip) float32 of the labelled pixels}."""
    from mmtok_plugin_hsi.chips import extract_chips
    from mmtok_plugin_hsi.datasets import load_indian_pines
    from mmtok_plugin_hsi.preprocessing import resample_bands, uniform_grid

    scene = load_indian_pines()
    grid = uniform_grid(*grid_nm)
    cube = resample_bands(torch.from_numpy(scene.cube)[None], torch.from_numpy(scene.wavelength_nm), grid)[0].numpy()
    h, w = scene.shape
    labelled = np.flatnonzero(scene.labels.ravel() > 0)
    chips = extract_chips(cube, labelled // w, labelled % w, chip)
    return {"scene": scene, "cube": cube, "grid_nm": grid.numpy(), "labelled": labelled,
            "labels": scene.labels.ravel()[labelled], "chips": chips}


def pretraining_centres(shape: tuple[int, int], chip: int, region_map: np.ndarray | None = None,
                        test_idx: np.ndarray | None = None) -> np.ndarray:
    """Flat indices of the chip centres pretraining may use. No region: every pixel. With a
    spatially disjoint split: pixels of the training region (``region_map == 1``, labelled or
    not) at Chebyshev distance >= ``chip`` from every test pixel, so no pretraining chip shares a
    pixel with any test chip."""
    h, w = shape
    if region_map is None:
        return np.arange(h * w, dtype=np.int64)
    test = np.zeros(h * w, dtype=bool)
    test[np.asarray(test_idx, dtype=np.int64)] = True
    near_test = ndimage.maximum_filter(test.reshape(h, w), size=2 * chip - 1, mode="constant", cval=False)
    return np.flatnonzero((np.asarray(region_map) == 1) & ~near_test).astype(np.int64)


def _split(protocol: str, labels: np.ndarray, seed: int, chip: int, fraction: float, block: int):
    from mmtok_plugin_hsi.splits import random_per_class, spatially_disjoint

    if protocol == "spatial":
        s = spatially_disjoint(labels, chip_size=chip, block=block, seed=seed)
        return s.train_idx, s.test_idx, s.region_map
    if protocol == "random":
        tr, te = random_per_class(labels, fraction, seed=seed)
        return tr, te, None
    raise MmtokError(f"protocol: expected one of {PROTOCOLS}, found {protocol!r}")


# ---------------------------------------------------------------------------------------------- one run
def _scores(y_true, y_pred, num_classes: int) -> dict:
    from mmtok_plugin_hsi.metrics import classification_report

    rep = classification_report(y_true, y_pred, num_classes)
    return {k: rep[k] for k in ("oa", "aa", "kappa", "per_class", "n")}


def _run_one(data: dict, protocol: str, seed: int, cfg: dict, out: Path, progress: bool, log) -> dict:
    """Pretrain + every method for one (protocol, seed); seed 0 also writes its run and arrays."""
    from mmtok_plugin_hsi.baselines import fit_svm
    from mmtok_plugin_hsi.chips import extract_chips
    from mmtok_plugin_hsi.model import GuidedSpectralGPT, GuidedSpectralGPTConfig
    from mmtok_plugin_hsi.pretrain import CubeNorm, PretrainConfig, pretrain, save_run
    from mmtok_plugin_hsi.probe import embed_chips, finetune, linear_probe
    from mmtok_plugin_hsi.splits import class_counts
    from threadpoolctl import threadpool_limits

    scene, chip = data["scene"], cfg["chip"]
    labels2d, (h, w) = scene.labels, scene.shape
    nc = len(scene.class_names)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    tr, te, region = _split(protocol, labels2d, seed, chip, cfg["fraction"], cfg["block"])
    pos_tr, pos_te = np.searchsorted(data["labelled"], tr), np.searchsorted(data["labelled"], te)
    y_tr, y_te = data["labels"][pos_tr], data["labels"][pos_te]
    centres = pretraining_centres((h, w), chip, region, te)
    cubes = torch.from_numpy(extract_chips(data["cube"], centres // w, centres % w, chip))
    timings["split_and_chips_s"] = time.perf_counter() - t

    model_cfg = GuidedSpectralGPTConfig(bands=GRID_NM[2], size=chip)
    pre_cfg = PretrainConfig(steps=cfg["steps"][protocol], batch_size=cfg["batch_size"], seed=seed)
    t = time.perf_counter()
    model, history = pretrain(cubes, pre_cfg, model=model_cfg, progress=progress)
    timings["pretrain_s"] = time.perf_counter() - t
    norm = CubeNorm.from_dict(history["norm"])
    n_pretrain = len(cubes)
    del cubes
    log(f"[{protocol} seed {seed}] pretrained on {n_pretrain} chips, {pre_cfg.steps} steps x {pre_cfg.batch_size}: "
        f"{timings['pretrain_s']:.0f} s, final MAE loss {history['mae'][-1]:.4f}")

    first = seed == min(cfg["seeds"])
    # embed the pixels the split uses (every labelled pixel for the first seed: its class map)
    need = np.arange(len(data["labelled"])) if first else np.union1d(pos_tr, pos_te)
    chips_need = data["chips"] if first else data["chips"][need]
    t = time.perf_counter()
    feats = np.zeros((len(data["labelled"]), model_cfg.dim), dtype=np.float32)
    feats[need] = embed_chips(model, chips_need, norm, progress=progress, desc="embed (pretrained)")
    timings["embed_pretrained_s"] = time.perf_counter() - t
    torch.manual_seed(seed)  # as `pretrain` does before it builds the model: the run's starting weights
    random_init = GuidedSpectralGPT(model_cfg).eval()
    t = time.perf_counter()
    feats_rand = np.zeros_like(feats)
    feats_rand[need] = embed_chips(random_init, chips_need, norm, progress=progress, desc="embed (random init)")
    timings["embed_random_init_s"] = time.perf_counter() - t
    del chips_need

    results, preds = {}, {}
    t = time.perf_counter()
    pred_need = linear_probe(feats[pos_tr], y_tr, feats[need], seed=seed)
    pred_all = np.zeros(len(feats), dtype=np.int64)
    pred_all[need] = pred_need
    results["probe_pretrained"], preds["probe_pretrained"] = _scores(y_te, pred_all[pos_te], nc), pred_all
    timings["probe_pretrained_s"] = time.perf_counter() - t
    t = time.perf_counter()
    results["probe_random_init"] = _scores(y_te, linear_probe(feats_rand[pos_tr], y_tr, feats_rand[pos_te],
                                                              seed=seed), nc)
    timings["probe_random_init_s"] = time.perf_counter() - t
    log(f"[{protocol} seed {seed}] probe OA pretrained {results['probe_pretrained']['oa']:.4f}, "
        f"random init {results['probe_random_init']['oa']:.4f}")

    t = time.perf_counter()
    ft = finetune(model, norm, data["chips"][pos_tr], y_tr, data["chips"][pos_te], nc, steps=cfg["finetune_steps"],
                  lr=cfg["finetune_lr"], seed=seed, progress=progress)
    results["finetune_pretrained"] = _scores(y_te, ft, nc)
    timings["finetune_s"] = time.perf_counter() - t
    log(f"[{protocol} seed {seed}] fine-tune OA {results['finetune_pretrained']['oa']:.4f} "
        f"({timings['finetune_s']:.0f} s)")

    x_tr, x_te = scene.spectra(tr), scene.spectra(te)
    t = time.perf_counter()
    results["logreg_raw"] = _scores(y_te, linear_probe(x_tr, y_tr, x_te, seed=seed), nc)
    timings["logreg_raw_s"] = time.perf_counter() - t
    svm_params = {}
    for name, n_comp in (("svm_raw", None), ("pca30_svm", cfg["pca_components"])):
        t = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):  # small problems: BLAS threads only contend
            pred, svm_params[name] = fit_svm(x_tr, y_tr, x_te, n_components=n_comp, seed=seed, n_jobs=1)
        results[name] = _scores(y_te, pred, nc)
        timings[f"{name}_s"] = time.perf_counter() - t
    log(f"[{protocol} seed {seed}] SVM OA {results['svm_raw']['oa']:.4f}, PCA+SVM {results['pca30_svm']['oa']:.4f}, "
        f"logreg raw {results['logreg_raw']['oa']:.4f}")

    part = {
        "protocol": protocol, "seed": seed, "config": cfg, "results": results, "timings_s": timings,
        "n_train": int(len(tr)), "n_test": int(len(te)), "n_pretrain_chips": int(n_pretrain),
        "class_counts_train_test": class_counts(labels2d, tr, te, nc)[1:].tolist(),
        "pretrain": {"final_loss": history["loss"][-1], "final_mae": history["mae"][-1],
                     "patches_per_s": history["patches_per_s"], "seconds": history["seconds"],
                     "mae_curve": [[s, v] for s, v in zip(history["step"], history["mae"])]},
        "svm_params": svm_params,
    }
    if first:
        run_dir = save_run(out / f"run_{protocol}_seed{seed}", model, pre_cfg, history,
                           extra={"grid_nm": list(GRID_NM), "chip": chip, "scene": "indian_pines",
                                  "protocol": protocol, "pretraining_chips": int(n_pretrain),
                                  "pretraining_data": _pretraining_data(protocol)})
        part["run_dir"] = str(run_dir)
        np.savez(out / "parts" / f"{protocol}_seed{seed}_arrays.npz", feats=feats, feats_random_init=feats_rand,
                 probe_pred_all=preds["probe_pretrained"], train_idx=tr, test_idx=te,
                 region_map=region if region is not None else np.zeros(0, np.uint8))
    return part


def _pretraining_data(protocol: str) -> str:
    if protocol == "spatial":
        return ("chips centred in the training blocks (labelled or not) at Chebyshev distance >= chip from every "
                "test pixel: no pretraining chip shares a pixel with a test chip")
    return "every chip of the scene, test pixels included, without labels (transductive, the field's usual practice)"


# ---------------------------------------------------------------------------------------------- summary
def summarise(parts: list[dict]) -> dict:
    """{protocol: {method: {"oa" | "aa" | "kappa": {"mean", "std", "values"}}, "seeds", ...}}."""
    out: dict = {}
    for protocol in PROTOCOLS:
        mine = sorted((p for p in parts if p["protocol"] == protocol), key=lambda p: p["seed"])
        if not mine:
            continue
        entry = {"seeds": [p["seed"] for p in mine], "pretrain_steps": mine[0]["config"]["steps"][protocol],
                 "n_train": [p["n_train"] for p in mine],
                 "n_test": [p["n_test"] for p in mine], "n_pretrain_chips": [p["n_pretrain_chips"] for p in mine],
                 "methods": {}}
        for method in METHODS:
            vals = {m: [p["results"][method][m] for p in mine] for m in ("oa", "aa", "kappa")}
            entry["methods"][method] = {m: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                                            "values": [float(x) for x in v]} for m, v in vals.items()}
        entry["timings_s"] = {k: float(np.mean([p["timings_s"][k] for p in mine])) for k in mine[0]["timings_s"]}
        out[protocol] = entry
    return out


def _fmt(stat: dict, scale: float, digits: int) -> str:
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def markdown(result: dict) -> str:
    """The tables of a `run_indian_pines` result, with the published anchors."""
    cfg, summary = result["config"], result["summary"]
    titles = {"spatial": "(b) spatially disjoint split (chip-level gap; the honest number)",
              "random": "(a) random 10 % of the labelled pixels per class (the common protocol; optimistic)"}
    lines = ["## Indian Pines: per-pixel classification (OA / AA in %, mean ± std over seeds)", ""]
    for protocol, entry in summary.items():
        lines += [f"### {titles[protocol]}", "",
                  f"Seeds {entry['seeds']}; {entry['pretrain_steps']} pretraining steps; train / test pixels per seed: "
                  + ", ".join(f"{a} / {b}" for a, b in zip(entry["n_train"], entry["n_test"]))
                  + f"; pretraining chips per seed: {entry['n_pretrain_chips']} ({_pretraining_data(protocol)}).", "",
                  "| method | OA (%) | AA (%) | κ |", "|---|---:|---:|---:|"]
        for method, label in METHODS.items():
            s = entry["methods"][method]
            lines.append(f"| {label} | {_fmt(s['oa'], 100, 2)} | {_fmt(s['aa'], 100, 2)} | {_fmt(s['kappa'], 1, 4)} |")
        lines.append("")
    lines += ["Published anchors (different splits, training sizes and training regimes: anchors, not rows "
              "comparable with the table):", ""]
    lines += [f"- {a['method']}: {a['note']}" for a in PUBLISHED_ANCHORS]
    lines += ["", "Setup: " + result["setup"], "",
              f"Pretraining: " + ", ".join(f"{p} {n} steps" for p, n in cfg["steps"].items())
              + f" x batch {cfg['batch_size']} (AdamW, lr 1e-3, mask ratio 0.9), "
              f"model {result['model']['parameters']:,} parameters (dim {result['model']['dim']}, depth "
              f"{result['model']['depth']}, 12-band x 3 x 3 px patches on {GRID_NM[2]} bands x {cfg['chip']} x "
              f"{cfg['chip']} px chips). Fine-tune: {cfg['finetune_steps']} steps x batch 32, head lr "
              f"{cfg['finetune_lr']:g}, encoder lr x 0.1. Torch threads: {result['torch_threads']}. "
              f"Total wall time {result['seconds'] / 60:.1f} min; mean per-seed times (s): "
              + "; ".join(f"{p}: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in e["timings_s"].items())
                          for p, e in summary.items()) + ".",
              "", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- figures
def _figures(data: dict, out: Path, cfg: dict, log) -> dict:
    """Seed-0 figures: reconstruction (spatial-protocol model), class map and embeddings (spatial)."""
    from mmtok_plugin_hsi.chips import tile
    from mmtok_plugin_hsi.figures import plot_class_map, plot_embedding, plot_reconstruction
    from mmtok_plugin_hsi.model import unpatchify
    from mmtok_plugin_hsi.pretrain import load_run

    seed, scene, figs = min(cfg["seeds"]), data["scene"], {}
    protocol = "spatial" if "spatial" in cfg["protocols"] else cfg["protocols"][0]
    arrays_path = out / "parts" / f"{protocol}_seed{seed}_arrays.npz"
    run_dir = out / f"run_{protocol}_seed{seed}"
    if not arrays_path.is_file() or not run_dir.is_dir():
        log(f"figures: {arrays_path} or {run_dir} missing, no figures")
        return figs
    arrays = dict(np.load(arrays_path, allow_pickle=False))
    h, w = scene.shape
    labels_flat = scene.labels.ravel()

    # class map: the linear probe (pretrained embeddings, fitted on the training pixels) on every labelled pixel
    pred_map = np.zeros(h * w, dtype=np.int64)
    pred_map[data["labelled"]] = arrays["probe_pred_all"]
    region = arrays["region_map"] if arrays["region_map"].size else None
    figs["class_map"] = str(plot_class_map(
        pred_map.reshape(h, w), scene.labels, scene.class_names, out / f"class_map_{protocol}_seed{seed}.png",
        region_map=region, title=f"Indian Pines, protocol {protocol}, seed {seed}: linear probe on self-supervised "
                                 "HSI-only embeddings (training pixels included in the map)"))

    for key, name in (("feats", "pretrained"), ("feats_random_init", "random_init")):
        figs[f"embedding_{name}"] = str(plot_embedding(
            arrays[key], data["labels"], scene.class_names, out / f"embedding_{name}_{protocol}_seed{seed}.png",
            method="tsne", seed=seed, title=f"t-SNE of HSI-only embeddings ({name.replace('_', ' ')}), "
                                            f"{protocol} seed {seed}, labelled pixels"))

    # reconstruction: the scene tiled into chips (the top-left 144 x 144 px), 90 % of patches masked
    model, norm, _ = load_run(run_dir)
    chip = cfg["chip"]
    tiles, origins = tile(data["cube"], chip)
    x = norm(torch.from_numpy(tiles))
    rec, mask = model.reconstruct(x, generator=torch.Generator().manual_seed(seed))
    c = model.config
    mask_px = unpatchify(mask[..., None].expand(-1, -1, model.patch_dim).float(), model.grid, c.spectral_patch,
                         c.spatial_patch) > 0.5
    denorm = lambda t: (t * norm.std.view(1, -1, 1, 1) + norm.mean.view(1, -1, 1, 1)).numpy()
    orig_t, rec_t = tiles, denorm(rec)
    nh, nw = int(origins[:, 0].max()) // chip + 1, int(origins[:, 1].max()) // chip + 1
    mosaic = lambda a: a.reshape(nh, nw, a.shape[1], chip, chip).transpose(2, 0, 3, 1, 4).reshape(
        a.shape[1], nh * chip, nw * chip)
    orig_m, rec_m, mask_m = mosaic(orig_t), mosaic(rec_t), mosaic(mask_px.numpy())
    masked = mask_m
    rmse_masked = float(np.sqrt(np.mean((rec_m[masked] - orig_m[masked]) ** 2)))
    mean_spec = norm.mean.numpy()[:, None, None] * np.ones_like(orig_m)
    rmse_mean = float(np.sqrt(np.mean((mean_spec[masked] - orig_m[masked]) ** 2)))
    green = int(np.argmin(np.abs(data["grid_nm"] - 550.0)))
    figs["reconstruction"] = str(plot_reconstruction(
        orig_m, rec_m, data["grid_nm"], out / f"reconstruction_{protocol}_seed{seed}.png", mask=mask_m[green],
        title=f"Indian Pines {nh * chip} x {nw * chip} px as {len(tiles)} chips of {chip} x {chip} px, 90 % of the "
              f"3D patches masked; masked-patch RMSE {rmse_masked:.4f} (per-band mean: {rmse_mean:.4f})"))
    figs["reconstruction_rmse_masked"] = rmse_masked
    figs["reconstruction_rmse_band_mean"] = rmse_mean
    figs["reconstruction_note"] = (f"model run_{protocol}_seed{seed}; the tiles include the test region, which its "
                                   "pretraining never saw; visible patches (10 %) are copied from the input")
    log(f"figures: {', '.join(str(v) for k, v in figs.items() if k in ('class_map', 'reconstruction'))}; "
        f"masked-patch RMSE {rmse_masked:.4f} vs per-band mean {rmse_mean:.4f}")
    return figs


# ---------------------------------------------------------------------------------------------- entry point
def run_indian_pines(out: Path, *, steps: int = 600, batch_size: int = 64, seeds=(0, 1, 2), chip: int = 9,
                     protocols=PROTOCOLS, random_steps: int | None = None, finetune_steps: int = 200,
                     finetune_lr: float = 1e-3,
                     fraction: float = 0.1, block: int = 24, threads: int | None = None, progress: bool = True,
                     log=print, command: str | None = None) -> dict:
    """Run both protocols for every seed (see the module docstring); returns the result dict (also
    ``out/indian_pines.json``) with the markdown table under ``"markdown"``. ``steps``: pretraining
    steps per seed; ``random_steps``: those of protocol (a) if different (default ``steps``).
    ``threads``: torch intra-op threads (None: torch's default)."""
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    protocols = tuple(protocols)
    for p in protocols:
        if p not in PROTOCOLS:
            raise MmtokError(f"protocols: expected a subset of {PROTOCOLS}, found {p!r}")
    if threads:
        torch.set_num_threads(int(threads))
    cfg = {"steps": {p: int(random_steps if p == "random" and random_steps else steps) for p in protocols},
           "batch_size": int(batch_size), "seeds": [int(s) for s in seeds], "chip": int(chip),
           "protocols": list(protocols), "finetune_steps": int(finetune_steps), "finetune_lr": float(finetune_lr),
           "fraction": float(fraction), "block": int(block), "pca_components": 30}
    same = ("batch_size", "chip", "finetune_steps", "finetune_lr", "fraction", "block", "pca_components")
    t0 = time.perf_counter()
    data = prepare_scene(chip)
    parts = []
    for protocol in protocols:  # (b) first: the honest number
        for seed in cfg["seeds"]:
            path = out / "parts" / f"{protocol}_seed{seed}.json"
            if path.is_file():
                old = json.loads(path.read_text())
                if all(old["config"].get(k) == cfg[k] for k in same) and \
                        old["config"]["steps"].get(protocol) == cfg["steps"][protocol]:
                    log(f"[{protocol} seed {seed}] reusing {path}")
                    parts.append(old)
                    continue
            part = _run_one(data, protocol, seed, cfg, out, progress, log)
            write_json(path, part)
            parts.append(part)
    from mmtok_plugin_hsi.model import GuidedSpectralGPT, GuidedSpectralGPTConfig

    model_cfg = GuidedSpectralGPTConfig(bands=GRID_NM[2], size=chip)
    result = {
        "config": cfg, "summary": summarise(parts), "parts": parts, "anchors": PUBLISHED_ANCHORS,
        "model": {"config": model_cfg.to_dict(), "parameters": GuidedSpectralGPT(model_cfg).num_parameters(),
                  "dim": model_cfg.dim, "depth": model_cfg.depth},
        "setup": (f"AVIRIS Indian Pines (200 bands, 145 x 145 px, 16 classes, {len(data['labelled'])} labelled "
                  f"pixels), resampled to {GRID_NM[2]} bands over {GRID_NM[0]:.0f}-{GRID_NM[1]:.0f} nm (the scene "
                  f"covers {data['scene'].wavelength_nm[0]:.1f}-{data['scene'].wavelength_nm[-1]:.1f} nm), "
                  f"pixel-centred {chip} x {chip} px chips. Unguided model: Indian Pines has no auxiliary image "
                  "(the guidance ablation is on Houston 2013). Probe and baselines see only the training pixels' "
                  "labels; the SVMs and the raw-spectrum probe use the 200 original bands. AA averages the "
                  "classes present in the test set."),
        "torch_threads": torch.get_num_threads(),
        "command": command or (f"mmtok hsi indian-pines --out {out} --steps {steps}"
                               + (f" --random-steps {random_steps}" if random_steps else "")
                               + f" --seeds {','.join(map(str, cfg['seeds']))} --protocols {','.join(protocols)}"
                               + f" --finetune-steps {finetune_steps}" + (f" --threads {threads}" if threads else "")),
    }
    result["figures"] = _figures(data, out, cfg, log)
    result["seconds"] = time.perf_counter() - t0
    result["markdown"] = markdown(result)
    write_json(out / "indian_pines.json", result)
    (out / "indian_pines.md").write_text(result["markdown"])
    return result
