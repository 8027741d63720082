"""Baseline vs disentangled VAE (and the seed's options) on held-out sources, over seeds.

Every model trains on the training sources of `build_dataset` only; every number is measured on
the held-out sources (whole files / volumes / loops / MedMNIST images, or disjoint regions of the
single-source modalities). Per variant and seed:

- latent separation (`evaluate.latent_metrics`): silhouette of z_modality by imaging modality
  (and of z_shared, which should be low), centroid distances raw and over the within-modality
  spread, k-NN modality accuracy of each latent part. The baseline has one 16-d latent: its
  z_modality column is that whole latent, its halves are reported too;
- reconstruction MSE and SSIM of the posterior mean, decoded under the true modality;
- conditional generation: z_shared ~ N(0, I), the modality set, decoded; an independent CNN
  (`evaluate.ModalityClassifier`) trained on the real held-out images says how often a sample
  is recognised as the requested modality.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch

from mmtok import write_json
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES
from mmtok_plugin_medimg.variants import VARIANTS

__all__ = ["build_variant", "train_variant", "latents", "evaluate_model", "run_comparison", "model_labels"]

#: conditional samples per modality for the generation accuracy
SAMPLES_PER_MODALITY = 32
#: training steps of the independent modality classifier (the judge of generated images)
CLASSIFIER_STEPS = 300


def model_labels(model, labels: torch.Tensor) -> torch.Tensor:
    """Indices into IMAGING_MODALITIES -> indices into the model's own ``config.modalities``."""
    names = list(model.config.modalities)
    return torch.tensor([names.index(IMAGING_MODALITIES[i]) for i in labels.tolist()], dtype=torch.long)


def build_variant(variant: str, data, *, size: int | None = None, **overrides):
    from mmtok_plugin_medimg import model as models

    cls_name, config = VARIANTS[variant]
    present = [IMAGING_MODALITIES[i] for i in sorted(set(data.labels.tolist()))]
    cfg = models.VAEConfig(**{"image_size": size or data.pixels.shape[-1], "channels": data.pixels.shape[1],
                              "modalities": present, **config, **overrides})
    return getattr(models, cls_name)(cfg)


def train_variant(data, variant: str, *, seed: int = 0, steps: int = 1500, batch_size: int = 64,
                  threads: int | None = None, progress: bool = False, **overrides):
    """Train ``variant`` on the training split; fit its modality centroids. -> (model, history)."""
    from mmtok_plugin_medimg.train import train_vae

    torch.manual_seed(seed)
    train = data.subset("train")
    model = build_variant(variant, data, **overrides)
    y = model_labels(model, train.labels)
    history = train_vae(model, train.pixels, y, steps=steps, batch_size=batch_size, seed=seed,
                        progress=progress, threads=threads)
    model.eval()
    with torch.no_grad():
        model.fit_centroids(train.pixels, y)
    return model, history


@torch.no_grad()
def latents(model, pixels: torch.Tensor, y: torch.Tensor, batch: int = 256) -> dict[str, np.ndarray]:
    """Posterior means split into parts ({"modality", "shared", ...}: (n, d) numpy)."""
    model.eval()
    parts: dict[str, list] = {}
    for i in range(0, len(pixels), batch):
        mu, _ = model.encode(pixels[i:i + batch], y[i:i + batch])
        for k, v in model.latent_parts(mu).items():  # {"shared", "modality", "all"}
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


@torch.no_grad()
def _reconstruct(model, pixels, y, batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(pixels), batch):
        mu, _ = model.encode(pixels[i:i + batch], y[i:i + batch])
        out.append(model.decode(mu, y[i:i + batch]))
    return torch.cat(out)


def _classifier(data, seed: int = 0):
    """The independent modality CNN, trained on the real held-out images (never on VAE output)."""
    from mmtok_plugin_medimg.evaluate import ModalityClassifier

    test = data.subset("test")
    clf = ModalityClassifier(channels=test.pixels.shape[1])
    clf.fit(test.pixels, test.labels, steps=CLASSIFIER_STEPS, seed=seed)
    return clf


@torch.no_grad()
def evaluate_model(model, data=None, *, classifier=None, out: Path | None = None, figures: bool = False,
                   seed: int = 0) -> dict:
    """All metrics of one trained model on the held-out sources (see the module docstring)."""
    from mmtok_plugin_medimg.datasets import build_dataset
    from mmtok_plugin_medimg.evaluate import generation_accuracy, latent_metrics, reconstruction_metrics

    c = model.config
    data = data if data is not None else build_dataset(size=c.image_size, channels=c.channels)
    known = set(c.modalities)
    keep = [i for i, label in enumerate(data.labels.tolist()) if IMAGING_MODALITIES[label] in known]
    train, test = data.subset("train"), data.subset("test")
    y_tr, y_te = model_labels(model, train.labels), model_labels(model, test.labels)
    z_tr, z_te = latents(model, train.pixels, y_tr), latents(model, test.pixels, y_te)
    metrics: dict = {"images_train": len(train.labels), "images_test": len(test.labels), "known": len(keep)}
    for part in z_te:
        for k, v in latent_metrics(z_tr[part], y_tr.numpy(), z_te[part], y_te.numpy(),
                                     label_names=list(c.modalities)).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics[f"{part}/{k}"] = float(v)
    x_hat = _reconstruct(model, test.pixels, y_te)
    metrics.update({f"recon/{k}": float(v) for k, v in reconstruction_metrics(test.pixels, x_hat).items()})
    pred, _ = model.classify(test.pixels)
    metrics["centroid_accuracy"] = float((pred == y_te).float().mean())
    classifier = classifier or _classifier(data, seed)
    g = torch.Generator().manual_seed(seed)
    requested, samples = [], []
    for j, name in enumerate(c.modalities):
        y = torch.full((SAMPLES_PER_MODALITY,), j, dtype=torch.long)
        samples.append(model.sample(y, SAMPLES_PER_MODALITY, g))
        requested += [IMAGING_MODALITIES.index(name)] * SAMPLES_PER_MODALITY
    gen = generation_accuracy(classifier, torch.cat(samples), torch.tensor(requested))
    metrics.update({f"generation/{k}": float(v) for k, v in gen.items() if isinstance(v, (int, float))})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", metrics)
        if figures:
            _figures(out, {type(model).__name__: model}, data, seed)
    return metrics


def _figures(out: Path, models: dict, data, seed: int = 0) -> None:
    from mmtok_plugin_medimg.figures import (plot_conditional_samples, plot_latents, plot_modality_swap,
                                             plot_reconstructions)

    test = data.subset("test")
    names = IMAGING_MODALITIES
    z, recon = {}, {}
    for label, model in models.items():
        y = model_labels(model, test.labels)
        z[label] = latents(model, test.pixels, y)["modality" if "modality" in model.latent_parts(
            model.encode(test.pixels[:1], y[:1])[0]) else "all"]
        recon[label] = _reconstruct(model, test.pixels, y)
    for method in ("pca", "tsne"):
        plot_latents(z, test.labels.numpy(), names, out / f"latents_{method}.png", method=method, seed=seed)
    plot_reconstructions(test.pixels, recon, test.labels.numpy(), names, out / "reconstructions.png")
    g = torch.Generator().manual_seed(seed)
    for label, model in models.items():
        samples = {m: model.sample(torch.full((8,), j, dtype=torch.long), 8, g)
                   for j, m in enumerate(model.config.modalities)}
        slug = label.lower().replace(" ", "_")
        plot_conditional_samples(samples, out / f"samples_{slug}.png", title=f"conditional samples: {label}")
        # one held-out image's z_shared decoded under every modality (its z_modality: that modality's centroid)
        y = model_labels(model, test.labels[:1])
        mu, _ = model.encode(test.pixels[:1], y)
        swapped = {}
        for j, m in enumerate(model.config.modalities):
            swapped[m] = model.swap(mu, torch.tensor([j]))[0] if hasattr(model, "swap") else \
                model.decode(mu, torch.tensor([j]))[0]
        plot_modality_swap(test.pixels[0], swapped, out / f"swap_{slug}.png")


def run_comparison(out: Path, *, seeds=(0, 1, 2), steps: int = 1500, variants=tuple(VARIANTS),
                   batch_size: int = 64, threads: int | None = None, size: int = 64) -> dict:
    """Train and evaluate every variant for every seed; write comparison.md / .json + figures."""
    from mmtok_plugin_medimg.datasets import build_dataset
    from mmtok_plugin_medimg.evaluate import markdown_table, summarize_seeds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_dataset(size=size)
    classifier = _classifier(data, 0)
    from mmtok_plugin_medimg.evaluate import ModalityClassifier

    test = data.subset("test")
    judge = ModalityClassifier.cross_validate(test.pixels, test.labels, sources=test.source, folds=2,
                                              steps=CLASSIFIER_STEPS)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    figure_models = {}
    for variant in variants:
        for seed in seeds:
            t0 = time.perf_counter()
            model, history = train_variant(data, variant, seed=seed, steps=steps, batch_size=batch_size,
                                           threads=threads)
            m = evaluate_model(model, data, classifier=classifier, seed=seed)
            m["train_seconds"] = time.perf_counter() - t0
            m["final_loss"] = float(history[-1]["loss"]) if history else float("nan")
            runs[variant].append(m)
            sil, knn = (m.get(_part(variant, k), float("nan")) for k in ("modality/silhouette", "modality/knn_accuracy"))
            print(f"{variant} seed {seed}: silhouette(z_modality) {sil:.3f}  k-NN {knn:.3f}  "
                  f"({m['train_seconds']:.0f} s)", flush=True)
            if seed == seeds[0] and variant in ("baseline", "disentangled"):
                figure_models[variant] = model
    if figure_models:
        _figures(out / "figures", figure_models, data, seeds[0])
    report = {"classifier_cross_validation": judge, "seeds": list(seeds), "steps": steps, "batch_size": batch_size,
              "size": size, "counts": data.counts(), "counts_table": data.describe_counts(), "runs": runs}
    return write_report(out, [report])


def write_report(out: Path, reports: list[dict]) -> dict:
    """Merge comparison reports (e.g. variants run in parallel processes, same settings) into
    ``out/comparison.json`` + ``comparison.md``."""
    from mmtok_plugin_medimg.evaluate import summarize_seeds

    merged = dict(reports[0])
    merged["runs"] = {v: r for rep in reports for v, r in rep["runs"].items()}
    for rep in reports[1:]:
        for key in ("seeds", "steps", "batch_size", "size"):
            if rep[key] != merged[key]:
                raise ValueError(f"cannot merge reports with different {key}: {rep[key]} vs {merged[key]}")
    summary = {v: summarize_seeds(r) for v, r in merged["runs"].items()}
    merged["summary"] = {v: {k: list(s) for k, s in d.items()} for v, d in summary.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", merged)
    (out / "comparison.md").write_text(_markdown(summary, merged), encoding="utf-8")
    return merged


def _part(variant: str, key: str) -> str:
    """The metric key of the z_modality column: the baseline's whole 16-d latent (it has no partition)."""
    return key.replace("modality/", "all/") if VARIANTS[variant][0] == "ConditionalVAE" else key


def _markdown(summary: dict, report: dict) -> str:
    from mmtok_plugin_medimg.evaluate import markdown_table

    metrics = [("modality/silhouette", "silhouette z_mod", ".3f"), ("shared/silhouette", "silhouette z_shared", ".3f"),
               ("modality/centroid_distance_min", "centroid min", ".2f"),
               ("modality/centroid_distance_mean", "centroid mean", ".2f"),
               ("modality/separation_ratio_min", "min / spread", ".2f"),
               ("modality/separation_ratio_mean", "mean / spread", ".2f"),
               ("modality/knn_accuracy", "k-NN z_mod", ".3f"), ("centroid_accuracy", "nearest centroid", ".3f"), ("shared/knn_accuracy", "k-NN z_shared", ".3f"),
               ("recon/mse", "MSE", ".4f"), ("recon/ssim", "SSIM", ".3f"), ("generation/accuracy", "generated recognised", ".3f")]
    rows = {}
    for v, s in summary.items():
        rows[v] = {m: s.get(_part(v, m)) for m, _, _ in metrics}
    table = markdown_table(rows, metrics)
    return (f"# Baseline vs disentangled conditional VAE (held-out sources)\n\n"
            f"Seeds {report['seeds']}, {report['steps']} steps of {report['batch_size']} images, "
            f"{report['size']} x {report['size']} px. Mean ± std over seeds. The baseline has one 16-d latent: its "
            "z_mod columns are that latent; its z_shared columns are its first 8 dims.\n\n" + table + "\n\n"
            f"The judge of generated images (a CNN trained on the real held-out images only) scores "
            f"{report['classifier_cross_validation']['accuracy']:.3f} accuracy in 2-fold cross-validation by source "
            f"on those real images ({report['classifier_cross_validation']['split']}).\n\n"
            "## Data (per imaging modality)\n\n" + report["counts_table"] + "\n")
