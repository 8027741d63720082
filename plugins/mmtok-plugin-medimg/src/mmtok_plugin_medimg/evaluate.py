"""Evaluation of the medical-image VAEs: latent separation, reconstruction, conditional generation.

- `latent_metrics`: how well imaging modalities separate in a latent space (silhouette, centroid
  distances raw and relative to the within-modality spread, k-NN modality accuracy).
- `reconstruction_metrics`: MSE and SSIM (scikit-image) of reconstructions.
- `ModalityClassifier`: a small CNN, independent of any VAE, that recognises the imaging modality
  of an image; trained on real held-out images it judges generated ones (`generation_accuracy`)
  and reports its own cross-validated accuracy (`ModalityClassifier.cross_validate`).
- `summarize_seeds` / `markdown_table`: mean ± std over seeds, "baseline vs disentangled" tables.

Labels are integer indices; ``label_names`` (default `IMAGING_MODALITIES`) names them in reports.
"""

import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from mmtok import MmtokError
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES, modality_index

__all__ = ["latent_metrics", "reconstruction_metrics", "ModalityClassifier", "generation_accuracy",
           "summarize_seeds", "markdown_table"]


def _numpy(a, dtype=None) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def _label_array(y, where: str) -> np.ndarray:
    """(n,) int64 labels from ints or imaging-modality names."""
    y = list(y.tolist()) if isinstance(y, (Tensor, np.ndarray)) else list(y)
    return np.asarray([modality_index(v, where=f"{where}: ") if isinstance(v, str) else int(v) for v in y],
                      dtype=np.int64)


def _name(label: int, label_names=None) -> str:
    names = IMAGING_MODALITIES if label_names is None else label_names
    if isinstance(names, dict):
        return str(names.get(int(label), label))
    return str(names[label]) if 0 <= int(label) < len(names) else str(int(label))


# ----------------------------------------------------------------------------------------------- latents

def _silhouette(z: np.ndarray, y: np.ndarray) -> float | None:
    """Euclidean silhouette (sklearn), None where undefined (needs 2 <= labels <= n - 1)."""
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(y))
    if not 2 <= n_labels <= len(y) - 1:
        return None
    return float(silhouette_score(z, y, metric="euclidean"))


def latent_metrics(z_train, y_train, z_test, y_test, k: int = 5, label_names=None) -> dict:
    """Separation of imaging modalities in latents z (n, d) with labels y (n,).

    Returns a JSON-ready dict:
      silhouette / silhouette_train: Euclidean silhouette of the test / train latents by label
        (None when fewer than 2 modalities);
      centroid_distance_min / _mean: pairwise distances of the test modality centroids, raw latent
        units (they grow with the latent's scale);
      within_modality_spread: mean distance of a test point to its own modality centroid, averaged
        over the test modalities with >= 2 points;
      separation_ratio_min / _mean: the centroid distances divided by that spread (scale-free);
      knn_accuracy / knn_balanced_accuracy / knn_per_modality: k-NN (sklearn, Euclidean) fitted on
        the train latents, scored on the test points whose modality is in train; knn_k the k used;
      counts: {name: {"train": n, "test": n}}; only_train / only_test: modalities present in one
        split only (skipped where they cannot count: k-NN of only-test points; reported here).
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.neighbors import KNeighborsClassifier

    z_train, z_test = _numpy(z_train, np.float64), _numpy(z_test, np.float64)
    y_train, y_test = _label_array(y_train, "y_train"), _label_array(y_test, "y_test")
    for name, z, y in (("train", z_train, y_train), ("test", z_test, y_test)):
        if z.ndim != 2 or len(z) != len(y) or len(z) == 0:
            raise MmtokError(f"latent_metrics: expected z_{name} (n, d) with n >= 1 and y_{name} (n,), found "
                             f"{z.shape} and {y.shape}")
        if not np.isfinite(z).all():
            raise MmtokError(f"latent_metrics: z_{name} holds non-finite values")
    if z_train.shape[1] != z_test.shape[1]:
        raise MmtokError(f"latent_metrics: z_train has {z_train.shape[1]} dims, z_test {z_test.shape[1]}")

    train_set, test_set = set(y_train.tolist()), set(y_test.tolist())
    labels = sorted(train_set | test_set)
    counts = {_name(c, label_names): {"train": int((y_train == c).sum()), "test": int((y_test == c).sum())}
              for c in labels}
    out = {"n_train": len(y_train), "n_test": len(y_test), "counts": counts,
           "only_train": [_name(c, label_names) for c in sorted(train_set - test_set)],
           "only_test": [_name(c, label_names) for c in sorted(test_set - train_set)],
           "silhouette": _silhouette(z_test, y_test), "silhouette_train": _silhouette(z_train, y_train)}

    # centroids and spread of the test latents
    test_labels = sorted(test_set)
    centroids = np.stack([z_test[y_test == c].mean(0) for c in test_labels])
    spreads = [np.linalg.norm(z_test[y_test == c] - centroids[i], axis=1).mean()
               for i, c in enumerate(test_labels) if (y_test == c).sum() >= 2]
    spread = float(np.mean(spreads)) if spreads else None
    if len(test_labels) >= 2:
        iu = np.triu_indices(len(test_labels), k=1)
        dist = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)[iu]
        d_min, d_mean = float(dist.min()), float(dist.mean())
    else:
        d_min = d_mean = None
    ratio = (lambda d: None if d is None or not spread else d / spread)
    out.update(centroid_distance_min=d_min, centroid_distance_mean=d_mean, within_modality_spread=spread,
               separation_ratio_min=ratio(d_min), separation_ratio_mean=ratio(d_mean))

    # k-NN modality accuracy: fit on train, score the test points whose modality train has
    known = np.isin(y_test, sorted(train_set))
    k_used = max(1, min(int(k), len(y_train)))
    out.update(knn_k=k_used, knn_accuracy=None, knn_balanced_accuracy=None, knn_per_modality={})
    if known.any():
        knn = KNeighborsClassifier(n_neighbors=k_used).fit(z_train, y_train)
        pred, true = knn.predict(z_test[known]), y_test[known]
        with warnings.catch_warnings():  # predictions of labels absent from true: fine here
            warnings.simplefilter("ignore")
            balanced = balanced_accuracy_score(true, pred)
        out.update(knn_accuracy=float((pred == true).mean()), knn_balanced_accuracy=float(balanced),
                   knn_per_modality={_name(c, label_names): float((pred[true == c] == c).mean())
                                     for c in sorted(set(true.tolist()))})
    return out


# ---------------------------------------------------------------------------------------- reconstruction

def reconstruction_metrics(x, x_hat) -> dict:
    """MSE and mean SSIM of images x, x_hat (b, c, h, w) in [0, 1] (scikit-image, data_range 1,
    uniform 7x7 window, an odd smaller one for images under 7 pixels a side)."""
    from skimage.metrics import structural_similarity

    x, x_hat = _numpy(x, np.float64), _numpy(x_hat, np.float64)
    if x.shape != x_hat.shape or x.ndim != 4 or x.shape[0] == 0:
        raise MmtokError(f"reconstruction_metrics: expected x and x_hat of one shape (b, c, h, w), found "
                         f"{x.shape} and {x_hat.shape}")
    for name, a in (("x", x), ("x_hat", x_hat)):
        if not np.isfinite(a).all() or a.min() < -1e-6 or a.max() > 1 + 1e-6:
            raise MmtokError(f"reconstruction_metrics: {name} must be finite in [0, 1], found "
                             f"{np.nanmin(a):.4g}..{np.nanmax(a):.4g}")
    side = min(x.shape[2:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise MmtokError(f"reconstruction_metrics: SSIM needs images of at least 3x3 pixels, found {x.shape[2:]}")
    ssim = []
    for a, b in zip(x, x_hat):
        if a.shape[0] == 1:
            ssim.append(structural_similarity(a[0], b[0], data_range=1.0, win_size=win))
        else:
            ssim.append(structural_similarity(a, b, data_range=1.0, win_size=win, channel_axis=0))
    return {"mse": float(np.mean((x - x_hat) ** 2)), "ssim": float(np.mean(ssim))}


# ------------------------------------------------------------------------------- independent classifier

class _SmallCNN(nn.Module):
    """(b, c, h, w) -> (b, classes) logits; three conv-pool stages, global average pool (any size >= 8)."""

    def __init__(self, channels: int, classes: int, width: int = 16):
        super().__init__()
        layers, c_in = [], channels
        for c_out in (width, 2 * width, 4 * width):
            groups = 4 if c_out % 4 == 0 else 1
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Random horizontal / vertical flips and a small intensity jitter (gain 0.9..1.1, offset ±0.05)."""
    b = x.shape[0]
    flip_h = torch.rand(b, generator=g) < 0.5
    flip_v = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    gain = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    offset = 0.1 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    return (x * gain + offset).clamp(0, 1)


def _class_balanced_batch(by_class: list[Tensor], batch_size: int, g: torch.Generator) -> Tensor:
    """Indices of a batch: a uniformly drawn class, then a uniformly drawn image of that class."""
    cls = torch.randint(len(by_class), (batch_size,), generator=g)
    return torch.stack([by_class[c][torch.randint(len(by_class[c]), (1,), generator=g)[0]] for c in cls.tolist()])


class ModalityClassifier:
    """Imaging-modality classifier of images (b, c, h, w) in [0, 1]: a small CNN independent of the
    VAEs. `fit` learns the labels it is given (integer indices, e.g. into `IMAGING_MODALITIES`);
    `predict` returns labels from that set."""

    def __init__(self, channels: int = 3, width: int = 16, device: str | torch.device = "cpu"):
        self.channels, self.width, self.device = int(channels), int(width), torch.device(device)
        self.net: _SmallCNN | None = None
        self.classes: Tensor | None = None  # (k,) the labels seen in fit, sorted

    def _check(self, x: Tensor, where: str) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim != 4 or x.shape[1] != self.channels or min(x.shape[2:]) < 8:
            raise MmtokError(f"ModalityClassifier.{where}: expected images (b, {self.channels}, h, w) with h, w "
                             f">= 8, found {tuple(x.shape)}")
        return x

    def fit(self, x, y, steps: int = 300, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
            threads: int | None = None) -> list[dict]:
        """Train on images x (n, c, h, w) with labels y (n,): class-balanced batches, flips and
        intensity jitter, AdamW. Deterministic for a given seed (on CPU); ``threads`` sets torch's
        thread count for the process. Returns the history [{step, loss}]."""
        x = self._check(x, "fit")
        y = torch.as_tensor(_label_array(y, "ModalityClassifier.fit y"))
        if len(y) != len(x) or len(x) == 0:
            raise MmtokError(f"ModalityClassifier.fit: expected one label per image, found {len(y)} for {len(x)}")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.classes = torch.unique(y)
        target = torch.searchsorted(self.classes, y)
        by_class = [torch.nonzero(target == i).flatten() for i in range(len(self.classes))]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = _SmallCNN(self.channels, len(self.classes), self.width).to(self.device)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=1e-4)
        history = []
        self.net.train()
        for step in range(int(steps)):
            idx = _class_balanced_batch(by_class, batch_size, g)
            xb = _augment(x[idx], g).to(self.device)
            loss = nn.functional.cross_entropy(self.net(xb), target[idx].to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"step": step, "loss": loss.item()})
        self.net.eval()
        return history

    @torch.no_grad()
    def predict(self, x, batch_size: int = 256) -> Tensor:
        """(b,) int64 predicted labels (from the labels seen in `fit`) of images x (b, c, h, w)."""
        if self.net is None:
            raise MmtokError("ModalityClassifier.predict: the classifier is not fitted (call fit first)")
        x = self._check(x, "predict")
        self.net.eval()
        logits = [self.net(x[i:i + batch_size].to(self.device)).cpu() for i in range(0, len(x), batch_size)]
        if not logits:
            return torch.zeros(0, dtype=torch.long)
        return self.classes[torch.cat(logits).argmax(1)]

    @classmethod
    def cross_validate(cls, x, y, sources: list[str] | None = None, folds: int = 2, steps: int = 300,
                       seed: int = 0, label_names=None, **fit_options) -> dict:
        """Cross-validated accuracy of a classifier like this one on real images x (n, c, h, w), y (n,).

        With ``sources`` (one source id per image) whole sources are held out: a modality's sources
        are dealt to the folds (largest first, to the fold with fewest images); a modality with fewer
        sources than folds is split image by image (its crops / frames share a source across folds:
        listed in ``within_source_split``, an optimistic estimate for it). Without sources every
        modality is split image by image (stratified). Returns accuracy, balanced_accuracy (mean
        recall over modalities), per_modality recall, the split used and the sizes.
        """
        channels = fit_options.pop("channels", None)
        width = fit_options.pop("width", 16)
        x = torch.as_tensor(x, dtype=torch.float32)
        y_np = _label_array(y, "ModalityClassifier.cross_validate y")
        if sources is not None and len(sources) != len(y_np):
            raise MmtokError(f"ModalityClassifier.cross_validate: expected one source per image, found "
                             f"{len(sources)} for {len(y_np)}")
        fold, within = _assign_folds(y_np, sources, folds, seed)
        pred = np.full(len(y_np), -1, dtype=np.int64)
        for f in range(folds):
            train, test = fold != f, fold == f
            if not test.any() or not train.any():
                continue
            clf = cls(channels=channels or x.shape[1], width=width)
            clf.fit(x[torch.as_tensor(train)], y_np[train], steps=steps, seed=seed + f, **fit_options)
            pred[test] = clf.predict(x[torch.as_tensor(test)]).numpy()
        recall = {_name(c, label_names): float((pred[y_np == c] == c).mean()) for c in sorted(set(y_np.tolist()))}
        return {"accuracy": float((pred == y_np).mean()), "balanced_accuracy": float(np.mean(list(recall.values()))),
                "per_modality": recall, "folds": int(folds), "split": "by source" if sources is not None else
                "stratified by image", "within_source_split": [_name(c, label_names) for c in within],
                "n": int(len(y_np)), "steps": int(steps)}


def _assign_folds(y: np.ndarray, sources, folds: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Fold index (n,) per image and the labels split image by image despite ``sources``."""
    if folds < 2:
        raise MmtokError(f"ModalityClassifier.cross_validate: folds must be >= 2, found {folds}")
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=np.int64)
    within = []
    for c in sorted(set(y.tolist())):
        idx = np.flatnonzero(y == c)
        groups = sorted({sources[i] for i in idx}) if sources is not None else []
        if len(groups) >= folds:
            sizes = {s: 0 for s in groups}
            for i in idx:
                sizes[sources[i]] += 1
            order = sorted(rng.permutation(groups).tolist(), key=lambda s: -sizes[s])  # stable: ties shuffled
            load = np.zeros(folds)
            for s in order:
                f = int(np.argmin(load))
                load[f] += sizes[s]
                fold[[i for i in idx if sources[i] == s]] = f
        else:
            if sources is not None:
                within.append(c)
            fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    return fold, within


def generation_accuracy(classifier, images, requested_labels, label_names=None) -> dict:
    """How often ``classifier.predict(images)`` equals the requested modality.

    images (b, c, h, w) generated for requested_labels (b,) (indices or names). Returns
    {"accuracy", "n", "per_modality": {name: fraction}, "counts": {name: n}, "predicted":
    {requested name: {predicted name: n}}, "unknown_to_classifier": requested names the classifier
    never saw in training (they can never count as recognised)}.
    """
    requested = _label_array(requested_labels, "generation_accuracy requested_labels")
    pred = _numpy(classifier.predict(images)).astype(np.int64).ravel()
    if len(pred) != len(requested) or len(pred) == 0:
        raise MmtokError(f"generation_accuracy: expected one requested label per image, found {len(requested)} "
                         f"labels for {len(pred)} predictions")
    seen = set(_numpy(classifier.classes).tolist()) if getattr(classifier, "classes", None) is not None else None
    per, counts, predicted = {}, {}, {}
    for c in sorted(set(requested.tolist())):
        sel = requested == c
        name = _name(c, label_names)
        per[name] = float((pred[sel] == c).mean())
        counts[name] = int(sel.sum())
        values, n = np.unique(pred[sel], return_counts=True)
        predicted[name] = {_name(v, label_names): int(m) for v, m in zip(values.tolist(), n.tolist())}
    unknown = [] if seen is None else [_name(c, label_names) for c in sorted(set(requested.tolist()) - seen)]
    return {"accuracy": float((pred == requested).mean()), "n": int(len(pred)), "per_modality": per,
            "counts": counts, "predicted": predicted, "unknown_to_classifier": unknown}


# ----------------------------------------------------------------------------------------------- tables

def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def summarize_seeds(metrics: list[dict]) -> dict:
    """{metric: (mean, std)} over per-seed metric dicts; nested dicts flatten to ``"a.b"`` keys,
    non-numbers and None / NaN skipped; std is the sample std (ddof 1), 0.0 for one seed."""
    values: dict[str, list[float]] = {}
    for m in metrics:
        for key, v in _flatten(m).items():
            if math.isfinite(v):
                values.setdefault(key, []).append(v)
    return {key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for key, v in values.items()}


def markdown_table(rows: dict, metrics: list[tuple[str, str, str]]) -> str:
    """Markdown table, one row per name in ``rows`` ({name: summarize_seeds(...)}), one column per
    (key, label, format spec such as ".3f"): "mean ± std" (a plain number as is; missing "—")."""
    lines = ["| model | " + " | ".join(label for _, label, _ in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for name, summary in rows.items():
        cells = []
        for key, _, fmt in metrics:
            v = summary.get(key)
            if v is None:
                cells.append("—")
            elif isinstance(v, (tuple, list)):
                cells.append(f"{v[0]:{fmt}} ± {v[1]:{fmt}}")
            else:
                cells.append(f"{v:{fmt}}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
