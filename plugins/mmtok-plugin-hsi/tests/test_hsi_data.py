"""Shipped scenes, splits, chips, metrics and baselines, on the real data in mmtok_plugin_hsi/data."""

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from mmtok import MmtokError
from mmtok_plugin_hsi.baselines import fcls, pca_reconstruction, pca_svm, svm_rbf
from mmtok_plugin_hsi.chips import extract_chips, tile
from mmtok_plugin_hsi.datasets import (DATA_DIR, load_houston2013, load_indian_pines, load_jasper_ridge)
from mmtok_plugin_hsi.metrics import classification_report
from mmtok_plugin_hsi.splits import class_counts, random_per_class, spatially_disjoint

INDIAN_PINES_COUNTS = [46, 1428, 830, 237, 483, 730, 28, 478, 20, 972, 2455, 593, 205, 1265, 386, 93]
HOUSTON_TRAIN_COUNTS = [198, 190, 192, 188, 186, 182, 196, 191, 193, 191, 181, 192, 184, 181, 187]


@pytest.fixture(scope="module")
def indian_pines():
    return load_indian_pines()


@pytest.fixture(scope="module")
def jasper():
    return load_jasper_ridge()


@pytest.fixture(scope="module")
def houston():
    return load_houston2013()


# --- data files and loaders -------------------------------------------------------------------------

def test_data_md_hashes_match_the_shipped_files():
    text = (DATA_DIR / "DATA.md").read_text()
    for name in ("indian_pines.npz", "jasper_ridge.npz", "HSI_TrSet.mat", "LiDAR_TrSet.mat", "TrLabel.mat",
                 "houston2013_classes.json"):
        digest = hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest()
        assert digest in text, name


def test_indian_pines_loader(indian_pines):
    s = indian_pines
    assert s.cube.shape == (200, 145, 145) and s.cube.dtype == np.float32
    assert s.labels.shape == (145, 145) and s.labels.dtype == np.int64
    assert np.bincount(s.labels.ravel(), minlength=17)[1:].tolist() == INDIAN_PINES_COUNTS
    assert (s.labels > 0).sum() == 10249 and len(s.class_names) == 17 and s.class_names[2] == "Corn-notill"
    assert np.all(np.diff(s.wavelength_nm) > 0)
    assert s.wavelength_nm[0] == pytest.approx(400.02) and s.wavelength_nm[-1] == pytest.approx(2498.96)
    assert s.cube.min() == pytest.approx(0.0955) and s.cube.max() == pytest.approx(0.9604)
    # the repaired typos sit between their neighbours; the cube's bands follow the same order
    assert s.wavelength_nm[170] == pytest.approx(2212.223, abs=1e-2)
    with np.load(DATA_DIR / "indian_pines.npz", allow_pickle=False) as d:
        raw = d["cube"]
    order = s.extra["band_order"]
    assert sorted(order.tolist()) == list(range(200)) and order[30] == 31 and order[31] == 30
    np.testing.assert_array_equal(s.cube[:, 7, 11], raw[7, 11, order].astype(np.float32) / np.float32(1e4))
    assert s.spectra(np.array([7 * 145 + 11])).shape == (1, 200)


def test_jasper_ridge_loader(jasper):
    s = jasper
    assert s.cube.shape == (198, 100, 100) and s.cube.dtype == np.float32 and s.labels is None
    assert np.all(np.diff(s.wavelength_nm) > 0)
    ab, em = s.extra["abundances"], s.extra["endmembers"]
    assert ab.shape == (4, 100, 100) and em.shape == (198, 4)
    np.testing.assert_allclose(ab.sum(0), 1.0, atol=1e-5)
    assert s.extra["endmember_names"] == ["tree", "water", "dirt", "road"]
    # endmembers are in the cube's units (cube / max_value): the ground-truth mixture reproduces the cube
    X = s.cube.reshape(198, -1).T
    mix = ab.reshape(4, -1).T @ em.T
    assert np.sqrt(np.mean((mix - X) ** 2)) < 0.07
    assert np.sqrt(np.mean((mix * s.extra["max_value"] - X) ** 2)) > 100


def test_houston_loader(houston):
    h = houston
    assert h.hsi.shape == (2832, 144) and h.lidar.shape == (2832, 21) and h.labels.dtype == np.int64
    assert np.bincount(h.labels, minlength=16)[1:].tolist() == HOUSTON_TRAIN_COUNTS
    assert len(h.class_names) == 16 and h.class_names[0] == "Unlabelled" and h.class_names[6] == "Water"
    assert h.wavelength_nm.shape == (144,) and np.all(np.diff(h.wavelength_nm) > 0)
    assert 0 <= h.lidar.min() and h.lidar.max() <= 1 and h.hsi.dtype == np.float32
    assert np.all(h.lidar[:, :10] <= h.lidar[:, 20:21] + 1e-6)  # anti-extensive profile below the DSM


# --- splits -----------------------------------------------------------------------------------------

def test_random_per_class_split(indian_pines):
    labels = indian_pines.labels
    tr, te = random_per_class(labels, 0.1, seed=0)
    flat = labels.ravel()
    assert np.intersect1d(tr, te).size == 0
    assert np.array_equal(np.union1d(tr, te), np.flatnonzero(flat > 0))
    n_tr = np.bincount(flat[tr], minlength=17)[1:]
    for n, t in zip(INDIAN_PINES_COUNTS, n_tr):
        assert t == min(max(round(0.1 * n), 5), n // 2)  # 10 %, at least 5, at most half
    assert n_tr[8] == 5 and n_tr[1] == 143  # Oats 20 -> 5, Corn-notill 1428 -> 143
    tr2, te2 = random_per_class(labels, 0.1, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert not np.array_equal(tr, random_per_class(labels, 0.1, seed=1)[0])
    tr_1d, _ = random_per_class(flat, 0.1, seed=0)  # (n,) labels give the same indices
    assert np.array_equal(tr, tr_1d)


def test_spatially_disjoint_split(indian_pines):
    labels, chip = indian_pines.labels, 9
    tr, te, region = spatially_disjoint(labels, chip_size=chip, seed=0)
    flat = labels.ravel()
    assert np.intersect1d(tr, te).size == 0 and np.all(flat[tr] > 0) and np.all(flat[te] > 0)
    train_mask = np.zeros(labels.size, bool)
    train_mask[tr] = True
    # Chebyshev distance from every test pixel to the nearest training pixel >= chip size: no shared patch
    dist = ndimage.distance_transform_cdt(~train_mask.reshape(labels.shape), metric="chessboard")
    assert dist.ravel()[te].min() >= chip
    rr, cc = np.divmod(te[::50], 145)
    tr_r, tr_c = np.divmod(tr, 145)
    brute = np.maximum(np.abs(rr[:, None] - tr_r[None]), np.abs(cc[:, None] - tr_c[None])).min(1)
    assert brute.min() >= chip
    assert np.all(region.ravel()[tr] == 1) and np.all(region.ravel()[te] == 2)
    counts = class_counts(labels, tr, te, 17)[1:]
    assert np.all(counts[:, 0] > 0)  # every class has training pixels
    assert 0.4 < len(tr) / (len(tr) + len(te)) < 0.6 and len(te) > 2500
    again = spatially_disjoint(labels, chip_size=chip, seed=0)
    assert np.array_equal(tr, again.train_idx) and np.array_equal(te, again.test_idx)


# --- chips ------------------------------------------------------------------------------------------

def test_chips_centred_and_reflect_padded(indian_pines):
    cube = indian_pines.cube
    rows, cols = np.array([0, 70, 144, 3]), np.array([0, 80, 144, 140])
    chips = extract_chips(cube, rows, cols, size=5)
    assert chips.shape == (4, 200, 5, 5) and chips.dtype == np.float32
    np.testing.assert_array_equal(chips[:, :, 2, 2], cube[:, rows, cols].T)
    np.testing.assert_array_equal(chips[1], cube[:, 68:73, 78:83])
    for i in range(5):  # corner (0, 0): reflection without repeating the edge, index |i - 2|
        for j in range(5):
            np.testing.assert_array_equal(chips[0, :, i, j], cube[:, abs(i - 2), abs(j - 2)])
            np.testing.assert_array_equal(chips[2, :, i, j], cube[:, 144 - abs(i - 2), 144 - abs(j - 2)])
    with pytest.raises(MmtokError, match="odd"):
        extract_chips(cube, rows, cols, size=4)
    with pytest.raises(MmtokError, match="rows"):
        extract_chips(cube, [145], [0], size=3)


def test_tile(jasper):
    cube = jasper.cube
    chips, origins = tile(cube, 32)
    assert chips.shape == (9, 198, 32, 32) and origins.tolist()[:4] == [[0, 0], [0, 32], [0, 64], [32, 0]]
    np.testing.assert_array_equal(chips[4], cube[:, 32:64, 32:64])
    padded, origins_p = tile(cube, 32, remainder="pad")
    assert padded.shape == (16, 198, 32, 32) and origins_p[-1].tolist() == [96, 96]
    np.testing.assert_array_equal(padded[-1][:, :4, :4], cube[:, 96:, 96:])
    with pytest.raises(MmtokError, match="remainder"):
        tile(cube, 32, remainder="wrap")


# --- metrics ----------------------------------------------------------------------------------------

def test_classification_report_hand_example():
    y_true, y_pred = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 0]
    r = classification_report(y_true, y_pred, num_classes=4)  # class 3 absent: not in AA
    assert r["oa"] == pytest.approx(4 / 6)
    assert r["per_class"] == pytest.approx({0: 2 / 3, 1: 1.0, 2: 0.0})
    assert r["aa"] == pytest.approx(5 / 9)
    assert r["kappa"] == pytest.approx(3 / 7)  # po = 24/36, pe = (3*3 + 2*3 + 1*0) / 36
    assert r["confusion"][0] == [2, 1, 0, 0]
    with pytest.raises(MmtokError, match="y_pred"):
        classification_report([0, 1], [0], 2)


# --- baselines --------------------------------------------------------------------------------------

def test_fcls_recovers_synthetic_mixtures_of_jasper_endmembers(jasper):
    em = jasper.extra["endmembers"].astype(np.float64)
    truth = np.random.default_rng(0).dirichlet(np.ones(4), size=300)
    truth[:50, 3] = 0  # some pixels on the simplex boundary
    truth[:50] /= truth[:50].sum(1, keepdims=True)
    est = fcls(truth @ em.T, em)
    assert est.shape == (300, 4) and est.min() >= 0
    np.testing.assert_allclose(est.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(est, truth, atol=1e-5)


def test_fcls_on_the_real_jasper_scene(jasper):
    X = jasper.cube.reshape(198, -1).T
    truth = jasper.extra["abundances"].reshape(4, -1).T
    est = fcls(X, jasper.extra["endmembers"])
    assert est.min() >= 0 and np.allclose(est.sum(1), 1.0, atol=1e-3)
    rmse = np.sqrt(np.mean((est - truth) ** 2))
    assert 0.05 < rmse < 0.1  # measured 0.085 against the ground truth


def test_pca_reconstruction_on_jasper(jasper):
    X = jasper.cube.reshape(198, 100, 100)
    left, right = X[:, :, :50].reshape(198, -1).T, X[:, :, 50:].reshape(198, -1).T
    errors = [pca_reconstruction(left, right, k)[1] for k in (4, 8, 16)]
    assert errors[0] > errors[1] > errors[2] and errors[0] < 0.03  # measured 0.016, 0.008, 0.005
    rec, _ = pca_reconstruction(left, right, 4)
    assert rec.shape == right.shape


def test_svm_baselines_on_houston(houston):
    tr, te = random_per_class(houston.labels, 0.3, seed=0)
    grid = {"C": (100.0,), "gamma_factor": (1.0,)}
    pred = svm_rbf(houston.hsi[tr], houston.labels[tr], houston.hsi[te], grid=grid, n_jobs=1)
    assert classification_report(houston.labels[te], pred, 16)["oa"] > 0.85
    pred = pca_svm(houston.hsi[tr], houston.labels[tr], houston.hsi[te], n_components=10, grid=grid, n_jobs=1)
    assert classification_report(houston.labels[te], pred, 16)["oa"] > 0.85
