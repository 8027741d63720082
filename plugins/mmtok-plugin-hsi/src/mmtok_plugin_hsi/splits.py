"""Train/test splits of labelled pixels (label 0 = unlabelled, never in either set).

- `random_per_class`: the common protocol, a fixed random fraction of each class's pixels for
  training. Neighbouring pixels are strongly correlated, so its test scores are optimistic.
- `spatially_disjoint`: whole square blocks go to train or test, then every test pixel whose
  chip would overlap a training pixel's chip is dropped, so train and test share no patch.

Indices are flat (row-major) indices into ``labels.ravel()``, sorted, int64.
"""

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from mmtok import MmtokError

__all__ = ["random_per_class", "spatially_disjoint", "SpatialSplit", "class_counts"]


def random_per_class(labels: np.ndarray, fraction: float = 0.1, seed: int = 0, min_per_class: int = 5
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Random per-class split: (train_idx, test_idx).

    labels: (h, w) or (n,), 0 = unlabelled. For a class of n_c pixels, the training count is
    ``min(max(round(fraction * n_c), min_per_class), n_c // 2)``: 10 % by default, at least
    ``min_per_class`` for tiny classes (Indian Pines Oats: 20 px -> 5), never more than half.
    Deterministic for a given seed.
    """
    if not 0 < fraction < 1:
        raise MmtokError(f"fraction: expected a value in (0, 1), found {fraction}")
    flat = np.asarray(labels).ravel()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(flat[flat > 0]):
        idx = np.flatnonzero(flat == c)
        n_train = min(max(int(round(fraction * idx.size)), min_per_class), idx.size // 2)
        perm = rng.permutation(idx)
        train.append(perm[:n_train])
        test.append(perm[n_train:])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
    return cat(train), cat(test)


class SpatialSplit(NamedTuple):
    """train_idx, test_idx: flat indices. region_map: (h, w) uint8, 0 gap/unused, 1 train, 2 test."""

    train_idx: np.ndarray
    test_idx: np.ndarray
    region_map: np.ndarray


def _block_ids(h: int, w: int, block: int) -> tuple[np.ndarray, int]:
    """Block id of every pixel (h, w) for a grid of about ``block``-pixel squares covering the image."""
    nr, nc = max(1, round(h / block)), max(1, round(w / block))
    rows = np.minimum(np.arange(h) * nr // h, nr - 1)
    cols = np.minimum(np.arange(w) * nc // w, nc - 1)
    return rows[:, None] * nc + cols[None, :], nr * nc


def _evaluate(assign: np.ndarray, block_id: np.ndarray, labels: np.ndarray, chip_size: int,
              train_fraction: float, num_classes: int):
    """Train / test / train-region masks (h, w) after the gap, and the assignment's score (a tuple)."""
    in_train = assign[block_id]
    train = in_train & (labels > 0)
    test = ~in_train & (labels > 0) & ~_near(train, chip_size)
    n_tr = np.bincount(labels[train], minlength=num_classes)[1:]
    n_te = np.bincount(labels[test], minlength=num_classes)[1:]
    kept = n_tr.sum() + n_te.sum()
    fraction = n_tr.sum() / max(1, kept)
    balance = np.where(n_tr + n_te > 0, np.minimum(n_tr, n_te) / np.maximum(1, n_tr + n_te), 0.0).mean()
    value = kept / max(1, (labels > 0).sum()) - 2 * abs(fraction - train_fraction) + balance
    return train, test, in_train, (int((n_tr > 0).sum()), int(((n_tr > 0) & (n_te > 0)).sum()), float(value))


def _near(train: np.ndarray, chip_size: int) -> np.ndarray:
    """Pixels (h, w) at Chebyshev distance < chip_size from a training pixel (their chips overlap)."""
    return ndimage.maximum_filter(train, size=2 * chip_size - 1, mode="constant", cval=False)


def spatially_disjoint(labels: np.ndarray, chip_size: int, block: int = 24, train_fraction: float = 0.5,
                       seed: int = 0, trials: int = 200) -> SpatialSplit:
    """Spatially disjoint split of a label map (h, w) for chips of ``chip_size`` pixels.

    The image is cut into a grid of about ``block`` x ``block`` pixel blocks; each block goes
    wholly to train or test. Then every test pixel at Chebyshev distance < chip_size from a
    training pixel is removed (a gap of chip_size - 1 pixels), so no test chip overlaps a
    training chip. Among ``trials`` random assignments (seeded), each then refined by
    single-block flips, the kept one maximises, in order: (1) the classes with training pixels,
    (2) the classes with both training and test pixels, (3) ``kept - 2 |f - train_fraction| +
    balance``, where kept = share of labelled pixels left in train or test, f = train / (train +
    test) after the gap, balance = mean over classes of min(train, test) / (train + test).
    Classes whose pixels all lie within chip_size of each other (Indian Pines
    Grass-pasture-mowed, 7 x 4 px, for chip_size 9) cannot have both: check with `class_counts`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise MmtokError(f"labels: expected an (h, w) label map, found shape {labels.shape}")
    if chip_size < 1:
        raise MmtokError(f"chip_size: expected a positive integer, found {chip_size}")
    if not 0 < train_fraction < 1:
        raise MmtokError(f"train_fraction: expected a value in (0, 1), found {train_fraction}")
    labels = labels.astype(np.int64)
    num_classes = int(labels.max()) + 1
    block_id, n_blocks = _block_ids(*labels.shape, block)
    useful = np.flatnonzero(np.bincount(block_id[labels > 0], minlength=n_blocks))  # blocks with labels
    rng = np.random.default_rng(seed)
    key = lambda assign: _evaluate(assign, block_id, labels, chip_size, train_fraction, num_classes)[3]

    best, best_key = None, None
    for _ in range(trials):
        assign = np.zeros(n_blocks, dtype=bool)
        assign[useful] = rng.random(useful.size) < train_fraction
        k = key(assign)
        if best_key is None or k > best_key:
            best, best_key = assign, k
    improved = True
    while improved:  # hill-climb: flip single blocks while that improves the score
        improved = False
        for b in rng.permutation(useful):
            cand = best.copy()
            cand[b] = ~cand[b]
            k = key(cand)
            if k > best_key:
                best, best_key, improved = cand, k, True
    train, test, in_train, _ = _evaluate(best, block_id, labels, chip_size, train_fraction, num_classes)
    region = np.where(in_train, 1, 0).astype(np.uint8)
    region[~in_train & ~_near(train, chip_size)] = 2
    return SpatialSplit(np.flatnonzero(train.ravel()).astype(np.int64),
                        np.flatnonzero(test.ravel()).astype(np.int64), region)


def class_counts(labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                 num_classes: int | None = None) -> np.ndarray:
    """Per-class pixel counts (num_classes, 2): column 0 train, column 1 test (row = label)."""
    flat = np.asarray(labels).ravel()
    n = int(flat.max()) + 1 if num_classes is None else num_classes
    return np.stack([np.bincount(flat[train_idx], minlength=n), np.bincount(flat[test_idx], minlength=n)], axis=1)
