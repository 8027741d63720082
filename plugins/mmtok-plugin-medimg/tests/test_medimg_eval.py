"""Evaluation metrics and figures of the medical-image VAEs on synthetic data with known structure:
separated vs overlapping latent blobs, scale invariance of the separation ratio, SSIM / MSE at
28 and 64 pixels with 1 and 3 channels, the independent modality classifier on a trivially
separable task, generation accuracy counts, seed summaries and every figure writing a PNG."""

import numpy as np
import pytest
import torch

from mmtok import MmtokError
from mmtok_plugin_medimg.evaluate import (ModalityClassifier, _assign_folds, generation_accuracy, latent_metrics,
                                          markdown_table, reconstruction_metrics, summarize_seeds)
from mmtok_plugin_medimg.figures import (plot_conditional_samples, plot_latents, plot_modality_swap,
                                         plot_reconstructions)


def _blobs(separation: float, n: int = 40, classes=(0, 5, 6, 8), d: int = 8, seed: int = 0):
    """Gaussian blobs (std 1) with centres ``separation`` apart along distinct axes."""
    rng = np.random.default_rng(seed)
    z, y = [], []
    for i, c in enumerate(classes):
        centre = np.zeros(d)
        centre[i] = separation
        z.append(centre + rng.standard_normal((n, d)))
        y += [c] * n
    return np.concatenate(z), np.asarray(y)


def test_separated_blobs_score_high_and_overlapping_blobs_score_chance():
    z_tr, y_tr = _blobs(12.0, seed=0)
    z_te, y_te = _blobs(12.0, seed=1)
    sep = latent_metrics(z_tr, y_tr, z_te, y_te)
    z_tr, y_tr = _blobs(0.0, seed=0)
    z_te, y_te = _blobs(0.0, seed=1)
    mixed = latent_metrics(z_tr, y_tr, z_te, y_te)
    assert sep["silhouette"] > 0.7 and sep["silhouette_train"] > 0.7
    assert abs(mixed["silhouette"]) < 0.1
    assert sep["knn_accuracy"] > 0.97 and sep["knn_balanced_accuracy"] > 0.97
    assert 0.05 < mixed["knn_accuracy"] < 0.5  # chance is 0.25 with four modalities
    # centres 12 * sqrt(2) apart, spread of an 8-d unit gaussian ~ sqrt(8)
    assert sep["centroid_distance_min"] == pytest.approx(12 * np.sqrt(2), rel=0.1)
    assert sep["separation_ratio_min"] > 4 > 1 > mixed["separation_ratio_mean"]
    assert sep["counts"] == {"xray": {"train": 40, "test": 40}, "pathology": {"train": 40, "test": 40},
                             "dermatoscopy": {"train": 40, "test": 40}, "oct": {"train": 40, "test": 40}}
    assert set(sep["knn_per_modality"]) == {"xray", "pathology", "dermatoscopy", "oct"}


def test_separation_ratio_and_silhouette_are_scale_free_raw_distance_is_not():
    z_tr, y_tr = _blobs(3.0, seed=0)
    z_te, y_te = _blobs(3.0, seed=1)
    a = latent_metrics(z_tr, y_tr, z_te, y_te)
    b = latent_metrics(10 * z_tr, y_tr, 10 * z_te, y_te)
    for key in ("centroid_distance_min", "centroid_distance_mean", "within_modality_spread"):
        assert b[key] == pytest.approx(10 * a[key], rel=1e-9)
    for key in ("separation_ratio_min", "separation_ratio_mean", "silhouette", "silhouette_train", "knn_accuracy"):
        assert b[key] == pytest.approx(a[key], rel=1e-9)


def test_modalities_in_one_split_only_are_reported_and_skipped():
    z_tr, y_tr = _blobs(12.0, classes=(0, 5, 7), seed=0)  # fundus only in train
    z_te, y_te = _blobs(12.0, classes=(0, 5, 3), seed=1)  # ultrasound only in test
    m = latent_metrics(torch.as_tensor(z_tr), torch.as_tensor(y_tr), z_te, y_te, k=5)
    assert m["only_train"] == ["fundus"] and m["only_test"] == ["ultrasound"]
    assert m["counts"]["fundus"] == {"train": 40, "test": 0} and m["counts"]["ultrasound"] == {"train": 0, "test": 40}
    assert set(m["knn_per_modality"]) == {"xray", "pathology"} and m["knn_accuracy"] > 0.97
    # one modality in test, one image per modality: undefined parts are None, nothing raises
    one = latent_metrics(z_tr, y_tr, z_te[:1], y_te[:1], k=500)
    assert one["silhouette"] is None and one["centroid_distance_min"] is None and one["knn_k"] == len(y_tr)
    with pytest.raises(MmtokError, match="z_test"):
        latent_metrics(z_tr, y_tr, z_te[:, :3], y_te)


@pytest.mark.parametrize("size,channels", [(28, 1), (28, 3), (64, 1), (64, 3), (5, 1)])
def test_reconstruction_metrics(size, channels):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, channels, size, size, generator=g) * 0.5 + 0.25
    same = reconstruction_metrics(x, x.clone())
    assert same["mse"] == 0.0 and same["ssim"] == pytest.approx(1.0)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    worse = reconstruction_metrics(x, noisy)
    assert worse["ssim"] < 0.9 and worse["mse"] == pytest.approx(float(((x - noisy) ** 2).mean()), rel=1e-5)
    more = reconstruction_metrics(x, (x + 0.4 * torch.randn(x.shape, generator=g)).clamp(0, 1))
    assert more["ssim"] < worse["ssim"] and more["mse"] > worse["mse"]


def test_reconstruction_metrics_refuses_bad_input():
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(MmtokError, match="one shape"):
        reconstruction_metrics(x, x[:, :, :20])
    with pytest.raises(MmtokError, match=r"\[0, 1\]"):
        reconstruction_metrics(x, x * 3)


def _toy_images(n_per_class: int, seed: int):
    """Three trivially separable 'modalities' (28x28 grey): dark, bright, mid-grey stripes."""
    g = torch.Generator().manual_seed(seed)
    noise = lambda: 0.05 * torch.randn(n_per_class, 1, 28, 28, generator=g)
    stripes = torch.zeros(1, 1, 28, 28)
    stripes[..., ::4] = 1.0
    x = torch.cat([0.15 + noise(), 0.85 + noise(), 0.2 + 0.6 * stripes + noise()]).clamp(0, 1)
    y = torch.tensor([0] * n_per_class + [5] * n_per_class + [8] * n_per_class)
    return x, y


def test_modality_classifier_learns_a_separable_task_deterministically():
    x, y = _toy_images(16, seed=0)
    x_test, y_test = _toy_images(10, seed=1)
    clf = ModalityClassifier(channels=1, width=8)
    history = clf.fit(x, y, steps=40, seed=0, batch_size=24, threads=1)
    pred = clf.predict(x_test)
    assert pred.dtype == torch.long and set(pred.tolist()) <= {0, 5, 8}
    assert float((pred == y_test).float().mean()) > 0.9
    assert history[-1]["loss"] < history[0]["loss"]
    again = ModalityClassifier(channels=1, width=8)
    again.fit(x, y, steps=40, seed=0, batch_size=24, threads=1)
    assert all(torch.equal(a, b) for a, b in zip(clf.net.state_dict().values(), again.net.state_dict().values()))
    # generated images, requested as in y_test, half of the 'oct' ones swapped for 'xray' images
    fake = x_test.clone()
    fake[20:25] = x_test[:5]
    report = generation_accuracy(clf, fake, torch.cat([y_test[:20], y_test[20:]]))
    assert report["counts"] == {"xray": 10, "pathology": 10, "oct": 10}
    assert report["per_modality"]["oct"] == pytest.approx(float((clf.predict(fake[20:]) == 8).float().mean()))
    assert report["per_modality"]["oct"] <= 0.6 and report["unknown_to_classifier"] == []
    with pytest.raises(MmtokError, match="channels|expected images"):
        clf.predict(torch.rand(2, 3, 28, 28))


def test_modality_classifier_cross_validation_holds_out_sources():
    x, y = _toy_images(8, seed=2)
    sources = [f"{int(c)}-{i % 4}" for i, c in enumerate(y)]
    sources[16:] = ["oct-one-file"] * 8  # one source only: split image by image, and said so
    fold, within = _assign_folds(y.numpy(), sources, folds=2, seed=0)
    for s in set(sources[:16]):
        assert len({int(fold[i]) for i in range(24) if sources[i] == s}) == 1  # a source lies in one fold
    assert within == [8] and sorted(fold[16:].tolist()) == [0] * 4 + [1] * 4
    assert [int((fold[y.numpy() == c] == 0).sum()) for c in (0, 5)] == [4, 4]  # two sources of 4 per fold
    cv = ModalityClassifier.cross_validate(x, y, sources=sources, folds=2, steps=30, seed=0, width=8,
                                           batch_size=24, threads=1)
    assert cv["split"] == "by source" and cv["within_source_split"] == ["oct"] and cv["n"] == 24
    assert cv["accuracy"] > 0.8 and set(cv["per_modality"]) == {"xray", "pathology", "oct"}


class _FixedClassifier:
    """Stub: predicts fixed labels, has seen labels 0 and 1 only."""

    classes = torch.tensor([0, 1])

    def __init__(self, pred):
        self.pred = torch.tensor(pred)

    def predict(self, images):
        return self.pred


def test_generation_accuracy_counts_exactly():
    clf = _FixedClassifier([0, 0, 1, 1, 1, 0, 0])
    report = generation_accuracy(clf, torch.zeros(7, 1, 8, 8), ["xray", "xray", "xray", "ct", "ct", "mr", "mr"])
    assert report["accuracy"] == pytest.approx(4 / 7)
    assert report["per_modality"] == {"xray": pytest.approx(2 / 3), "ct": 1.0, "mr": 0.0}
    assert report["predicted"]["xray"] == {"xray": 2, "ct": 1} and report["predicted"]["mr"] == {"xray": 2}
    assert report["unknown_to_classifier"] == ["mr"]
    with pytest.raises(MmtokError, match="one requested label per image"):
        generation_accuracy(clf, torch.zeros(7, 1, 8, 8), [0, 1])


def test_summarize_seeds_and_markdown_table():
    seeds = [{"silhouette": 0.1, "knn_accuracy": 0.5, "counts": {"xray": {"test": 4}}, "only_test": ["ct"]},
             {"silhouette": 0.3, "knn_accuracy": None, "counts": {"xray": {"test": 4}}, "only_test": []}]
    s = summarize_seeds(seeds)
    assert s["silhouette"] == pytest.approx((0.2, np.std([0.1, 0.3], ddof=1)))
    assert s["knn_accuracy"] == (0.5, 0.0) and s["counts.xray.test"] == (4.0, 0.0) and "only_test" not in s
    table = markdown_table({"baseline": s, "disentangled": {"silhouette": (0.61, 0.02)}},
                           [("silhouette", "silhouette", ".2f"), ("knn_accuracy", "k-NN acc.", ".3f")])
    lines = table.strip().splitlines()
    assert lines[0] == "| model | silhouette | k-NN acc. |" and len(lines) == 4
    assert lines[2] == "| baseline | 0.20 ± 0.14 | 0.500 ± 0.000 |"
    assert lines[3] == "| disentangled | 0.61 ± 0.02 | — |"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_plot_latents_writes_png(tmp_path, method):
    z, y = _blobs(6.0, n=12, seed=0)
    path = plot_latents({"baseline": z, "disentangled": 2 * z}, y, None, tmp_path / "sub" / f"{method}.png",
                        method=method, seed=0)
    assert _is_png(path) and [p.name for p in path.parent.iterdir()] == [f"{method}.png"]  # no temp file left
    with pytest.raises(MmtokError, match="method"):
        plot_latents({"a": z}, y, None, tmp_path / "x.png", method="umap")


def test_image_figures_write_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 28, 28, generator=g)
    labels = torch.tensor([0, 0, 0, 5, 5, 8])
    assert _is_png(plot_reconstructions(x, {"baseline": x * 0.9, "disentangled": x.flip(3)}, labels, None,
                                        tmp_path / "recon.png", n_per_modality=2))
    samples = {0: torch.rand(4, 1, 28, 28, generator=g), "pathology": torch.rand(3, 1, 28, 28, generator=g) * 2}
    assert _is_png(plot_conditional_samples(samples, tmp_path / "samples.png", "conditional samples"))
    decoded = {c: torch.rand(3, 64, 64, generator=g) for c in (0, 5, 6, 8)}
    assert _is_png(plot_modality_swap(torch.rand(3, 64, 64, generator=g), decoded, tmp_path / "swap.png",
                                      source_label=0))
    with pytest.raises(MmtokError, match="c = 1 or 3"):
        plot_modality_swap(torch.rand(2, 8, 8), decoded, tmp_path / "bad.png")
