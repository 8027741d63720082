"""The classical calibration-transfer baselines on the real Corn data, checked against the reference
packages pycaltransfer 0.1.8 (DS, PDS, SBC) and diPLSlib 2.5 (di-PLS) of the ``[dev]`` extra (required).

Fixed split: calibration = samples 0..59 on m5, test = samples 60..79 on mp6, transfer standards =
every 6th calibration sample (N = 10) or every 3rd (N = 20), unlabeled target spectra = mp6 spectra
of the other calibration samples.
"""

from pathlib import Path

import numpy as np
import pytest
from diPLSlib import functions
from pycaltransfer import caltransfer as ct
from sklearn.cross_decomposition import PLSRegression
from sklearn.model_selection import KFold, cross_val_predict
from threadpoolctl import threadpool_limits

import mmtok_plugin_nir
from mmtok_plugin_nir.baselines import (METHODS, CCATransfer, DirectStandardization, DomainInvariantPLS,
                                        NoTransfer, PiecewiseDirectStandardization, SlopeBiasCorrection,
                                        TransferInputError, TransferTask, cca_fit, dipls_fit, ds_fit,
                                        fit_pls, make_method, pds_fit, sbc_fit)
from mmtok_plugin_nir.metrics import regression_metrics

CAL = np.arange(60)
TEST = np.arange(60, 80)
STD10 = np.arange(0, 60, 6)
STD20 = np.arange(0, 60, 3)
PROPS = {"Moisture": 0, "Protein": 2}
N_LV = 10  # source PLS components where a test does not need the cross-validated choice


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """One BLAS thread: on a busy 2-core machine OpenBLAS threads spinning against other processes
    turned 0.05 s eigendecompositions into seconds. Results do not depend on it."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def corn() -> dict[str, np.ndarray]:
    with np.load(Path(mmtok_plugin_nir.__file__).parent / "data" / "corn.npz") as d:
        return {k: d[k] for k in ("m5spec", "mp6spec", "propvals")}


def make_task(corn, prop: int, std=STD10) -> TransferTask:
    m5, mp6, y = corn["m5spec"], corn["mp6spec"], corn["propvals"][:, prop]
    return TransferTask(m5[CAL], y[CAL], m5[std], mp6[std], y[std], mp6[np.setdiff1d(CAL, std)])


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---------------------------------------------------------------------------------------------- metrics


def test_metrics_against_hand_computed_values():
    y_true = np.array([1.0, 2.0, 3.0, 4.0])
    y_pred = np.array([1.1, 1.9, 3.3, 4.1])  # errors 0.1, -0.1, 0.3, 0.1
    m = regression_metrics(y_true, y_pred)
    assert m["bias"] == pytest.approx(0.1)
    assert m["rmsep"] == pytest.approx(np.sqrt(0.12 / 4))
    assert m["r2"] == pytest.approx(1 - 0.12 / 5.0)  # SS_tot = 5
    sep = np.sqrt(0.08 / 3)  # bias-corrected: errors - bias = 0, -0.2, 0.2, 0
    assert m["rpd"] == pytest.approx(np.sqrt(5 / 3) / sep)  # RPD = SD(y_true, ddof=1) / SEP
    n = 4
    assert m["rmsep"] ** 2 == pytest.approx(sep ** 2 * (n - 1) / n + m["bias"] ** 2)


def test_metrics_perfect_and_mismatched():
    assert regression_metrics([1, 2, 3], [1, 2, 3]) == {"r2": 1.0, "rmsep": 0.0, "rpd": float("inf"), "bias": 0.0}
    with pytest.raises(ValueError, match="same length"):
        regression_metrics([1, 2, 3], [1, 2])


# ---------------------------------------------------------------------------------------------- PLS


def test_fit_pls_coefficients_reproduce_sklearn(corn):
    X, y = corn["m5spec"][CAL], corn["propvals"][CAL, 0]
    cal = fit_pls(X, y, n_components=N_LV)
    ref = PLSRegression(n_components=N_LV, scale=False).fit(X, y)
    X_new = corn["mp6spec"][TEST]
    assert cal.coef.shape == (700,) and cal.rmsecv is None
    np.testing.assert_allclose(X_new @ cal.coef + cal.intercept, ref.predict(X_new).ravel(), rtol=1e-10)
    np.testing.assert_allclose(cal.predict(X_new), cal.model.predict(X_new).ravel(), rtol=1e-10)


@pytest.mark.parametrize("prop", PROPS.values())
def test_fit_pls_cross_validation_choice(corn, prop):
    X, y = corn["m5spec"], corn["propvals"][:, prop]
    cal = fit_pls(X[CAL], y[CAL], max_components=15, cv=5)
    assert cal.rmsecv.shape == (15,)
    # the one-standard-error rule, recomputed: the fewest components whose CV mean squared error is
    # within one standard error (of the n squared residuals) of the minimum; on both properties
    # that is fewer than the minimum's, so a bare argmin fails here
    folds = KFold(n_splits=5, shuffle=True, random_state=0)
    sq = np.array([(cross_val_predict(PLSRegression(n_components=a, scale=False), X[CAL], y[CAL], cv=folds).ravel()
                    - y[CAL]) ** 2 for a in range(1, 16)])
    mse = sq.mean(1)
    np.testing.assert_allclose(cal.rmsecv, np.sqrt(mse), rtol=1e-10)
    best = int(np.argmin(mse))
    within = mse <= mse[best] + sq[best].std(ddof=1) / np.sqrt(len(CAL))
    assert cal.n_components == int(np.argmax(within)) + 1 < best + 1
    # on the same instrument the calibration predicts the test samples well
    assert regression_metrics(y[TEST], cal.predict(X[TEST]))["rpd"] > 2.5


# ---------------------------------------------------------------------------------------------- SBC


@pytest.mark.parametrize("prop", PROPS.values())
def test_sbc_matches_pycaltransfer(corn, prop):
    task = make_task(corn, prop)
    method = SlopeBiasCorrection(n_components=N_LV).fit(task)
    y_pred_std = method.calibration_.predict(task.X_target_std)
    # pycaltransfer fits LinearRegression(y_pred, y): it needs y_pred as a column
    slope, bias = ct.slope_bias_correction(task.y_std, y_pred_std[:, None])
    assert method.slope_ == pytest.approx(float(slope[0]), rel=1e-10)
    assert method.bias_ == pytest.approx(float(bias), rel=1e-10, abs=1e-10)
    X = corn["mp6spec"][TEST]
    np.testing.assert_allclose(method.predict(X), method.calibration_.predict(X) * slope[0] + bias, rtol=1e-10)
    assert sbc_fit([1.0, 3.0, 5.0], [0.0, 1.0, 2.0]) == pytest.approx((2.0, 1.0))


# ---------------------------------------------------------------------------------------------- DS


def test_ds_matches_pycaltransfer(corn):
    Xp, Xs = corn["m5spec"][STD10], corn["mp6spec"][STD10]
    F, a = ds_fit(Xp, Xs)  # rank N - 1 = 9
    F_ref, a_ref = ct.ds_pc_transfer_fit(Xp, Xs, max_ncp=9)
    # the README's 1e-8 (measured 5e-11, though pycaltransfer squares the condition number: svd of Xs'Xs)
    assert rel_diff(F, F_ref) < 1e-8
    assert rel_diff(a, a_ref.ravel()) < 1e-8
    for prop in PROPS.values():
        method = DirectStandardization(n_components=N_LV).fit(make_task(corn, prop))
        X = corn["mp6spec"][TEST]
        ref = method.calibration_.predict(X @ F_ref + a_ref)
        assert rel_diff(method.predict(X), ref) < 1e-8


def test_ds_full_rank_maps_the_standards_exactly(corn):
    Xp, Xs = corn["m5spec"][STD10], corn["mp6spec"][STD10]
    F, a = ds_fit(Xp, Xs)
    np.testing.assert_allclose(Xs @ F + a, Xp, atol=1e-10)
    F3, _ = ds_fit(Xp, Xs, n_components=3)
    assert np.linalg.matrix_rank(F3) == 3


# ---------------------------------------------------------------------------------------------- PDS


class _OldLayoutPLS(PLSRegression):
    """PLSRegression whose coef_ has the pre-1.3 layout (n_features, n_targets).

    pycaltransfer 0.1.8 was written for scikit-learn < 1.3 and reads ``my_pls.coef_[:, 0]`` as the
    window's coefficients; with today's (n_targets, n_features) coef_ that is the single entry
    coef_[0, 0], broadcast over the whole window (silently wrong). A property cannot do this since
    sklearn's own fit reads coef_ back while building it, so the layout is switched after fit.
    """

    def fit(self, X, y):
        super().fit(X, y)
        self.coef_ = self.coef_.T
        return self


@pytest.mark.parametrize(("half_window", "n_components"), [(5, 1), (5, 2), (2, 4), (7, 9)])
def test_pds_matches_pycaltransfer(corn, monkeypatch, half_window, n_components):
    Xp, Xs = corn["m5spec"][STD10], corn["mp6spec"][STD10]
    F, a = pds_fit(Xp, Xs, half_window, n_components)
    monkeypatch.setattr(ct, "PLSRegression", _OldLayoutPLS)
    F_ref, a_ref = ct.pds_pls_transfer_fit(Xp, Xs, max_ncp=n_components, ww=half_window)
    assert rel_diff(F, F_ref) < 1e-8
    assert rel_diff(a, a_ref.ravel()) < 1e-8
    assert np.count_nonzero(F) == np.count_nonzero(F_ref)  # banded: 2 h + 1 channels per column
    method = PiecewiseDirectStandardization(half_window, n_components, n_components=N_LV)
    method.fit(make_task(corn, PROPS["Moisture"]))
    X = corn["mp6spec"][TEST]
    assert rel_diff(method.predict(X), method.calibration_.predict(X @ F_ref + a_ref)) < 1e-8


def test_pycaltransfer_pds_is_wrong_on_current_sklearn(corn):
    """Without the layout fix pycaltransfer's PDS gives different (wrong) matrices: the reason we
    ship our own."""
    Xp, Xs = corn["m5spec"][STD10], corn["mp6spec"][STD10]
    F_broken, _ = ct.pds_pls_transfer_fit(Xp, Xs, max_ncp=2, ww=5)
    F, _ = pds_fit(Xp, Xs, 5, 2)
    assert rel_diff(F_broken, F) > 0.1


def test_pds_equals_one_sklearn_pls_per_window(corn):
    """Independent of pycaltransfer: columns of F are sklearn PLSRegression(scale=False) coefficients."""
    Xp, Xs = corn["m5spec"][STD10], corn["mp6spec"][STD10]
    h, n_lv = 5, 3
    F, a = pds_fit(Xp, Xs, h, n_lv)
    Xp_c, Xs_c = Xp - Xp.mean(axis=0), Xs - Xs.mean(axis=0)
    for j in (0, 2, 5, 350, 697, 699):
        window = np.arange(max(0, j - h), min(699, j + h) + 1)
        ref = PLSRegression(n_components=min(n_lv, window.size), scale=False).fit(Xs_c[:, window], Xp_c[:, j])
        np.testing.assert_allclose(F[window, j], ref.coef_.ravel(), rtol=1e-8, atol=1e-12)
        assert np.count_nonzero(F[:, j]) == window.size
    np.testing.assert_allclose(a, Xp.mean(axis=0) - Xs.mean(axis=0) @ F)


# ---------------------------------------------------------------------------------------------- CCA


def test_cca_improves_on_no_transfer_for_moisture(corn):
    task = make_task(corn, PROPS["Moisture"], STD20)
    y, X = corn["propvals"][TEST, 0], corn["mp6spec"][TEST]
    plain = regression_metrics(y, NoTransfer().fit(task).predict(X))["rmsep"]
    cca = regression_metrics(y, CCATransfer().fit(task).predict(X))["rmsep"]
    assert cca < 0.5 * plain  # ~0.39 against ~1.96 (the source model is thrown off by the instrument offset)


def test_cca_with_all_components_is_ds(corn):
    """With n_pcs = N - 1 both PCA spaces span the whole centred sample space, every canonical
    correlation is 1 and the map is DS's minimum-norm exact solution."""
    Xp, Xs = corn["m5spec"][STD10], corn["mp6spec"][STD10]
    F, a = cca_fit(Xp, Xs, n_pcs=9)
    F_ds, a_ds = ds_fit(Xp, Xs)
    assert rel_diff(F, F_ds) < 1e-6 and rel_diff(a, a_ds) < 1e-6
    F4, _ = cca_fit(Xp, Xs)  # default (N - 1) // 2 = 4 components: a rank-4 map
    assert np.linalg.matrix_rank(F4) == 4


# ---------------------------------------------------------------------------------------------- di-PLS


@pytest.mark.parametrize("l", [0.0, 10.0, 1e5])
@pytest.mark.parametrize("prop", PROPS.values())
def test_dipls_matches_diplslib(corn, prop, l):
    task = make_task(corn, prop)
    A = 5
    method = DomainInvariantPLS(latent_variables=A, l=l, n_components=N_LV).fit(task)
    # diPLSlib's DIPLS estimator calls check_X_y(force_all_finite=...), gone from scikit-learn 1.8,
    # so do what DIPLS.fit / predict do (rescale="Target") around the core routine dipals
    xt = np.vstack([task.X_target_unlabeled, task.X_target_std])
    mu, mu_t, y_mean = task.X_cal.mean(axis=0), xt.mean(axis=0), task.y_cal.mean()
    b = functions.dipals(task.X_cal - mu, (task.y_cal - y_mean)[:, None], task.X_cal - mu, xt - mu_t, A, l)[0]
    X = corn["mp6spec"][TEST]
    ref = (X - mu_t) @ b.ravel() + y_mean
    assert rel_diff(method.b_, b.ravel()) < 1e-8
    assert rel_diff(method.predict(X), ref) < 1e-8
    assert rel_diff(dipls_fit(task.X_cal - mu, task.y_cal - y_mean, task.X_cal - mu, xt - mu_t, A, l),
                    b.ravel()) < 1e-8


def test_dipls_without_regularisation_is_pls(corn):
    task = make_task(corn, 0)
    mu = task.X_cal.mean(axis=0)
    b = dipls_fit(task.X_cal - mu, task.y_cal - task.y_cal.mean(), task.X_cal - mu, task.X_target_std, 6, 0.0)
    ref = PLSRegression(n_components=6, scale=False).fit(task.X_cal, task.y_cal)
    np.testing.assert_allclose(b, ref.coef_.ravel(), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------- all methods


def test_every_method_fits_and_predicts(corn):
    task = make_task(corn, PROPS["Protein"])
    X = corn["mp6spec"][TEST]
    assert set(METHODS) == {"pls-source", "sbc", "ds", "pds", "cca", "dipls"}
    for name in METHODS:
        method = make_method(name, n_components=N_LV).fit(task)
        assert method.name == name
        pred = method.predict(X)
        assert pred.shape == (20,) and np.isfinite(pred).all()
    with pytest.raises(TransferInputError, match="method: expected one of"):
        make_method("pds2")


def test_methods_without_pairs(corn):
    m5, mp6, y = corn["m5spec"], corn["mp6spec"], corn["propvals"][:, 0]
    empty = np.empty((0, 700))
    task = TransferTask(m5[CAL], y[CAL], empty, empty, np.empty(0), mp6[CAL])
    assert task.n_pairs == 0
    for cls in (NoTransfer, DomainInvariantPLS):
        assert cls.min_pairs == 0
        assert cls(n_components=N_LV).fit(task).predict(mp6[TEST]).shape == (20,)
    with pytest.raises(TransferInputError, match=r"sbc: X_source_std / X_target_std: expected at least 2 .*found 0"):
        SlopeBiasCorrection(n_components=N_LV).fit(task)
    no_target = TransferTask(m5[CAL], y[CAL], empty, empty, np.empty(0))
    with pytest.raises(TransferInputError, match="dipls: X_target_unlabeled"):
        DomainInvariantPLS(n_components=N_LV).fit(no_target)


# ---------------------------------------------------------------------------------------------- bad input


def _arrays(corn):
    m5, mp6, y = corn["m5spec"], corn["mp6spec"], corn["propvals"][:, 0]
    return dict(X_cal=m5[CAL], y_cal=y[CAL], X_source_std=m5[STD10], X_target_std=mp6[STD10], y_std=y[STD10],
                X_target_unlabeled=mp6[TEST])


def _with_nan(x, row):
    x = x.copy()
    x[row, 17] = np.nan
    return x


@pytest.mark.parametrize(("field", "change", "pattern"), [
    ("X_target_std", lambda a: _with_nan(a, 3), r"X_target_std: .*found NaN/inf in row\(s\) \[3\]$"),
    ("X_cal", lambda a: _with_nan(a, 59), r"X_cal: .*row\(s\) \[59\]"),
    ("X_target_std", lambda a: a[:9], r"X_target_std: expected 10 rows .*found 9"),
    ("y_std", lambda a: a[:8], r"y_std: expected 10 values \(one per row of X_source_std\), found 8"),
    ("y_cal", lambda a: np.where(np.arange(a.size) == 4, np.inf, a), r"y_cal: expected finite values.*\[4\]"),
    ("X_source_std", lambda a: a[:, :699], r"X_source_std: expected 700 channels \(like X_cal\), found 699"),
    ("X_target_unlabeled", lambda a: a[:, :650], r"X_target_unlabeled: expected 700 channels.*found 650"),
    ("X_cal", lambda a: a[0], r"X_cal: expected a 2-D \(samples, channels\) array, found shape \(700,\)"),
])
def test_task_rejects_bad_input(corn, field, change, pattern):
    arrays = _arrays(corn)
    arrays[field] = change(arrays[field])
    with pytest.raises(TransferInputError, match=pattern):
        TransferTask(**arrays)


def test_bad_input_elsewhere(corn):
    m5, mp6, y = corn["m5spec"], corn["mp6spec"], corn["propvals"][:, 0]
    assert issubclass(TransferInputError, ValueError)
    with pytest.raises(TransferInputError, match=r"n_standards: expected 0\.\.60 .*found 61"):
        TransferTask.from_paired(m5, mp6, y, CAL, n_standards=61)
    with pytest.raises(TransferInputError, match=r"X_target: expected 80 rows"):
        TransferTask.from_paired(m5, mp6[:79], y, CAL, n_standards=10)
    task = TransferTask.from_paired(m5, mp6, y, CAL, n_standards=10, unlabeled_idx=CAL)
    assert task.n_pairs == 10 and task.X_target_unlabeled.shape == (50, 700)  # standards not repeated
    method = NoTransfer(n_components=N_LV).fit(task)
    with pytest.raises(TransferInputError, match=r"X_target: expected 700 channels"):
        method.predict(mp6[TEST, :600])
    with pytest.raises(TransferInputError, match=r"X_target: .*NaN/inf in row\(s\) \[2\]"):
        method.predict(_with_nan(mp6[TEST], 2))
    with pytest.raises(TransferInputError, match=r"n_components: expected 1\.\.9"):
        pds_fit(m5[STD10], mp6[STD10], 5, 10)
    with pytest.raises(TransferInputError, match=r"X_secondary: expected 10 rows"):
        ds_fit(m5[STD10], mp6[STD20])
    with pytest.raises(TransferInputError, match=r"n_components: expected 1\.\.59"):
        fit_pls(m5[CAL], y[CAL], n_components=60)
