"""Figures of the hyperspectral experiments (matplotlib, Agg backend, PNG).

- `rgb_composite`: a cube (bands, h, w) -> an RGB image (h, w, 3) in [0, 1] from the bands
  nearest to 640 / 550 / 460 nm, each channel stretched between its 2nd and 98th percentile.
- `plot_reconstruction`: original vs MAE-reconstructed cube, as RGB composites side by side.
- `plot_class_map`: predicted vs ground-truth class maps (unlabelled pixels masked out).
- `plot_embedding`: a 2-D projection (PCA or t-SNE, scikit-learn) of embeddings coloured by class.
"""

from pathlib import Path

import numpy as np

from mmtok import MmtokError

__all__ = ["rgb_composite", "plot_reconstruction", "plot_class_map", "plot_embedding"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stretch(channel: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    lo, hi = lo_hi
    return np.clip((channel - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def rgb_composite(cube, wavelength_nm, rgb_nm=(640.0, 550.0, 460.0), percentiles=(2.0, 98.0),
                  reference=None) -> np.ndarray:
    """RGB image (h, w, 3) float in [0, 1] of ``cube`` (bands, h, w): for each of ``rgb_nm`` the band
    nearest in ``wavelength_nm`` (bands,), stretched linearly between the ``percentiles`` of that
    band in ``reference`` (bands, h', w'; default the cube itself; pass the original when
    comparing a reconstruction, so both use one stretch)."""
    cube = np.asarray(cube, dtype=np.float64)
    wl = np.asarray(wavelength_nm, dtype=np.float64).ravel()
    if cube.ndim != 3 or wl.shape != (cube.shape[0],):
        raise MmtokError(f"rgb_composite: expected cube (bands, h, w) and wavelength_nm (bands,), found "
                         f"{cube.shape} and {wl.shape}")
    ref = cube if reference is None else np.asarray(reference, dtype=np.float64)
    bands = [int(np.argmin(np.abs(wl - target))) for target in rgb_nm]
    return np.stack([_stretch(cube[b], tuple(np.percentile(ref[b], percentiles))) for b in bands], axis=-1)


def plot_reconstruction(original, reconstructed, wavelength_nm, path, *, mask=None, title: str | None = None,
                        rgb_nm=(640.0, 550.0, 460.0)) -> Path:
    """Original | reconstructed (| masked patches, if ``mask`` (h, w) bool is given) RGB composites
    of cubes (bands, h, w), one percentile stretch (the original's) for both; writes PNG ``path``."""
    plt = _pyplot()
    original, reconstructed = np.asarray(original), np.asarray(reconstructed)
    if original.shape != reconstructed.shape:
        raise MmtokError(f"plot_reconstruction: original {original.shape} and reconstructed "
                         f"{reconstructed.shape} must have the same shape")
    panels = [("original", rgb_composite(original, wavelength_nm, rgb_nm)),
              ("MAE reconstruction", rgb_composite(reconstructed, wavelength_nm, rgb_nm, reference=original))]
    if mask is not None:
        shown = panels[0][1].copy()
        shown[np.asarray(mask, dtype=bool)] *= 0.25
        panels.insert(1, ("input (masked patches dimmed)", shown))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4))
    for ax, (name, img) in zip(axes, panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def _class_colours(num_classes: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab20", 20)
    return [cmap(i % 20) for i in range(num_classes)]


def plot_class_map(pred_map, gt_map, class_names, path, *, title: str | None = None, region_map=None) -> Path:
    """Predicted | ground-truth class maps (h, w) of integer labels (0 = unlabelled: masked out in
    both, shown white); optional ``region_map`` (h, w: 0 unused / gap, 1 train, 2 test) as a third
    panel. ``class_names[i]`` names label i (index 0 the unlabelled class). Writes PNG ``path``."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    pred_map, gt_map = np.asarray(pred_map), np.asarray(gt_map)
    if pred_map.shape != gt_map.shape or gt_map.ndim != 2:
        raise MmtokError(f"plot_class_map: expected two (h, w) maps of the same shape, found {pred_map.shape} "
                         f"and {gt_map.shape}")
    k = len(class_names)
    colours = _class_colours(k - 1)
    cmap = ListedColormap(colours)
    show = lambda m: np.ma.masked_where(gt_map == 0, m)
    panels = [("predicted", pred_map), ("ground truth", gt_map)]
    ncols = len(panels) + (region_map is not None)
    fig, axes = plt.subplots(1, ncols, figsize=(4.3 * ncols + 2.6, 4.6))
    for ax, (name, m) in zip(axes, panels):
        ax.imshow(show(m), cmap=cmap, vmin=0.5, vmax=k - 0.5, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if region_map is not None:
        region = np.asarray(region_map)
        axes[-1].imshow(region, cmap=ListedColormap(["#dddddd", "#2b8cbe", "#e34a33"]), vmin=-0.5, vmax=2.5,
                        interpolation="nearest")
        axes[-1].set_title("split: train (blue) / test (red) / gap", fontsize=10)
        axes[-1].set_axis_off()
    handles = [Patch(color=colours[i - 1], label=f"{i} {class_names[i]}") for i in range(1, k)]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / (4.3 * ncols + 2.6), 1))
    return _save(fig, path, plt)


def plot_embedding(features, labels, class_names, path, *, method: str = "pca", max_points: int = 3000,
                   seed: int = 0, title: str | None = None) -> Path:
    """2-D projection of ``features`` (n, d) coloured by ``labels`` (n,) (index into
    ``class_names``): ``method`` "pca" or "tsne" (scikit-learn, seeded) on a stratified-by-chance
    random subsample of at most ``max_points``. Writes PNG ``path``."""
    plt = _pyplot()
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels).ravel()
    if features.ndim != 2 or len(features) != len(labels) or len(features) < 3:
        raise MmtokError(f"plot_embedding: expected features (n, d) with n >= 3 and labels (n,), found "
                         f"{features.shape} and {labels.shape}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(features), size=min(max_points, len(features)), replace=False))
    x, y = features[keep], labels[keep]
    x = (x - x.mean(0)) / (x.std(0) + 1e-12)
    if method == "pca":
        from sklearn.decomposition import PCA
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE
        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(x) - 1) / 3)
                  ).fit_transform(x)
    else:
        raise MmtokError(f"plot_embedding: method must be 'pca' or 'tsne', found {method!r}")
    colours = _class_colours(len(class_names) - 1 if len(class_names) > 1 else 1)
    fig, ax = plt.subplots(figsize=(7.5, 5.6))
    for c in np.unique(y):
        sel = y == c
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=colours[(c - 1) % len(colours)], label=f"{c} {name}")
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    ax.legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title or f"embeddings ({len(x)} points, {method})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
