"""Figures of the medical-image VAE experiments (matplotlib `Figure` objects on the Agg canvas, PNG).

- `plot_latents`: PCA or t-SNE of latents, one panel per model, points coloured by modality.
- `plot_reconstructions`: originals and each model's reconstructions, a few per modality.
- `plot_conditional_samples`: generated samples, one row per requested modality.
- `plot_modality_swap`: one image's shared latent decoded under each modality.

Images are (c, h, w) with c = 1 (shown grey) or 3 (RGB), clipped to [0, 1]. Labels are indices
(named by ``label_names``, default `IMAGING_MODALITIES`) or names. Files are written atomically.
"""

from pathlib import Path

import numpy as np

from mmtok import MmtokError, atomic_write
from mmtok_plugin_medimg.evaluate import _name, _numpy

__all__ = ["plot_latents", "plot_reconstructions", "plot_conditional_samples", "plot_modality_swap"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def _text(label, label_names=None) -> str:
    return label if isinstance(label, str) else _name(int(label), label_names)


def _colour(label: int):
    from matplotlib import colormaps

    return colormaps["tab10" if label < 10 else "tab20"](int(label) % 20)


def _show(ax, image, where: str) -> None:
    """Draw one image (c, h, w), c in {1, 3}, clipped to [0, 1], without axes."""
    img = np.clip(_numpy(image, np.float64), 0.0, 1.0)
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise MmtokError(f"{where}: expected an image (c, h, w) with c = 1 or 3, found shape {img.shape}")
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _project(z: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(n, d) -> (n, 2) by PCA or t-SNE (init "pca", perplexity min(30, (n - 1) / 3))."""
    if method == "pca":
        from sklearn.decomposition import PCA

        xy = PCA(n_components=min(2, z.shape[1], len(z)), random_state=seed).fit_transform(z)
        return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = max(1.0, min(30.0, (len(z) - 1) / 3))
        return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(z)
    raise MmtokError(f"plot_latents: method must be 'pca' or 'tsne', found {method!r}")


def plot_latents(z_by_model: dict, labels, label_names, path, method: str = "pca", seed: int = 0,
                 title: str | None = None, max_points: int = 3000) -> Path:
    """2-D projection of each model's latents (n, d) of the same n images, labels (n,) int; one
    panel per model, coloured by modality, one legend. At most ``max_points`` (seeded subsample,
    the same for every model). Writes PNG ``path``."""
    labels = _numpy(labels).astype(np.int64).ravel()
    if not z_by_model:
        raise MmtokError("plot_latents: z_by_model is empty")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(labels), size=min(max_points, len(labels)), replace=False))
    fig = _figure(4.2 * len(z_by_model) + 1.8, 4.2)
    axes = fig.subplots(1, len(z_by_model), squeeze=False)[0]
    for ax, (model, z) in zip(axes, z_by_model.items()):
        z = _numpy(z, np.float64)
        if z.ndim != 2 or len(z) != len(labels) or len(z) < 2:
            raise MmtokError(f"plot_latents: latents of {model!r}: expected (n, d) with n = {len(labels)} "
                             f"(labels) >= 2, found {z.shape}")
        xy = _project(z[keep], method, seed)
        for c in np.unique(labels[keep]):
            sel = labels[keep] == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.8, color=_colour(c), label=_text(int(c), label_names))
        ax.set_title(f"{model} ({method.upper()})", fontsize=10)
        ax.set_xlabel(f"{method.upper()} 1")
        ax.set_ylabel(f"{method.upper()} 2")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=8, markerscale=1.5, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / (4.2 * len(z_by_model) + 1.8), 1))
    return _save(fig, path)


def plot_reconstructions(x, x_hat_by_model: dict, labels, label_names, path, n_per_modality: int = 2,
                         title: str | None = None) -> Path:
    """Originals x (n, c, h, w) (top row) and each model's reconstructions (one row per model) of
    the first ``n_per_modality`` images of every modality in labels (n,). Writes PNG ``path``."""
    x = _numpy(x, np.float64)
    labels = _numpy(labels).astype(np.int64).ravel()
    if x.ndim != 4 or len(x) != len(labels):
        raise MmtokError(f"plot_reconstructions: expected x (n, c, h, w) and labels (n,), found {x.shape} and "
                         f"{labels.shape}")
    cols = np.concatenate([np.flatnonzero(labels == c)[:n_per_modality] for c in np.unique(labels)])
    rows = [("original", x)] + [(m, _numpy(xh, np.float64)) for m, xh in x_hat_by_model.items()]
    for model, xh in rows[1:]:
        if xh.shape != x.shape:
            raise MmtokError(f"plot_reconstructions: reconstructions of {model!r}: expected shape {x.shape}, "
                             f"found {xh.shape}")
    fig = _figure(1.3 * len(cols) + 1.2, 1.4 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for j, i in enumerate(cols):
            _show(axes[r, j], images[i], "plot_reconstructions")
            if r == 0:
                axes[r, j].set_title(_text(int(labels[i]), label_names), fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_conditional_samples(samples: dict, path, title: str | None = None, label_names=None) -> Path:
    """Grid of generated images: one row per requested modality, samples[label] (k, c, h, w).
    Writes PNG ``path``."""
    if not samples:
        raise MmtokError("plot_conditional_samples: samples is empty")
    rows = [(label, _numpy(s, np.float64)) for label, s in samples.items()]
    for label, s in rows:
        if s.ndim != 4 or len(s) == 0:
            raise MmtokError(f"plot_conditional_samples: samples for {_text(label, label_names)!r}: expected "
                             f"(k, c, h, w) with k >= 1, found {s.shape}")
    k = max(len(s) for _, s in rows)
    fig = _figure(1.2 * k + 1.4, 1.2 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), k, squeeze=False)
    for r, (label, s) in enumerate(rows):
        for j in range(k):
            if j < len(s):
                _show(axes[r, j], s[j], "plot_conditional_samples")
            else:
                axes[r, j].set_axis_off()
        axes[r, 0].set_ylabel(_text(label, label_names), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_modality_swap(source_image, decoded_by_modality: dict, path, title: str | None = None,
                       label_names=None, source_label=None) -> Path:
    """The source image (c, h, w) then its shared latent decoded under each modality,
    decoded_by_modality[label] (c, h, w), in one row. Writes PNG ``path``."""
    if not decoded_by_modality:
        raise MmtokError("plot_modality_swap: decoded_by_modality is empty")
    panels = [("source" if source_label is None else f"source ({_text(source_label, label_names)})", source_image)]
    panels += [(f"as {_text(label, label_names)}", img) for label, img in decoded_by_modality.items()]
    fig = _figure(1.5 * len(panels), 2.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, img) in zip(axes, panels):
        _show(ax, img, "plot_modality_swap")
        ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
