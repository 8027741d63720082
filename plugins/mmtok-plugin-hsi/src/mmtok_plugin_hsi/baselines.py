"""Classical baselines: SVM (RBF) on spectra, PCA + SVM, FCLS unmixing and PCA reconstruction.

`run_baselines` measures all of them on the shipped scenes (Indian Pines under both split
protocols, Jasper Ridge unmixing and reconstruction) and returns / writes the numbers.
"""

import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import nnls
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from mmtok import MmtokError, write_json
from mmtok_plugin_hsi.datasets import load_indian_pines, load_jasper_ridge
from mmtok_plugin_hsi.metrics import classification_report
from mmtok_plugin_hsi.splits import class_counts, random_per_class, spatially_disjoint

__all__ = ["SVM_GRID", "svm_rbf", "pca_svm", "fit_svm", "fcls", "pca_reconstruction", "run_baselines"]

#: default grid: C values and gamma as multiples of sklearn's "scale" (1 / (features * variance))
SVM_GRID = {"C": (1.0, 10.0, 100.0, 1000.0), "gamma_factor": (0.1, 1.0, 10.0)}


def _check_xy(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray) -> None:
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise MmtokError(f"X_train / X_test: expected (n, d) arrays with the same d, found "
                         f"{X_train.shape} and {X_test.shape}")
    if y_train.shape != (len(X_train),):
        raise MmtokError(f"y_train: expected shape ({len(X_train)},), found {y_train.shape}")


def fit_svm(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, *, n_components: int | None = None,
            seed: int = 0, grid: dict | None = None, n_jobs: int = 2) -> tuple[np.ndarray, dict]:
    """StandardScaler [+ PCA(n_components)] + SVC(rbf), C and gamma by stratified grid-search CV.

    Everything (scaler, PCA, SVM, the gamma scale) is fitted on X_train only. CV uses
    min(3, smallest class count) folds, at least 2. Returns (y_pred (m,), best params).
    """
    X_train, X_test, y_train = np.asarray(X_train), np.asarray(X_test), np.asarray(y_train)
    _check_xy(X_train, y_train, X_test)
    grid = SVM_GRID if grid is None else grid
    steps = [("scale", StandardScaler())]
    if n_components is not None:
        if not 0 < n_components <= min(X_train.shape):
            raise MmtokError(f"n_components: expected 1..{min(X_train.shape)}, found {n_components}")
        steps.append(("pca", PCA(n_components=n_components, random_state=seed)))
    pre = Pipeline(steps).fit(X_train)
    gamma_scale = 1.0 / float(pre.transform(X_train).var() * (n_components or X_train.shape[1]))
    pipe = Pipeline(steps + [("svm", SVC(kernel="rbf"))])
    param_grid = {"svm__C": list(grid["C"]), "svm__gamma": [f * gamma_scale for f in grid["gamma_factor"]]}
    folds = max(2, min(3, int(np.bincount(np.unique(y_train, return_inverse=True)[1]).min())))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    search = GridSearchCV(pipe, param_grid, cv=cv, n_jobs=n_jobs)
    with warnings.catch_warnings():  # classes with fewer members than folds: sklearn warns, that is fine
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        search.fit(X_train, y_train)
    gamma = float(search.best_params_["svm__gamma"])
    best = {"C": float(search.best_params_["svm__C"]), "gamma": gamma, "gamma_factor": round(gamma / gamma_scale, 6),
            "cv_accuracy": float(search.best_score_), "folds": folds}
    return search.predict(X_test), best


def svm_rbf(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, seed: int = 0,
            grid: dict | None = None, n_jobs: int = 2) -> np.ndarray:
    """SVM (RBF) on standardised raw spectra: X (n, bands) -> predictions (m,). See `fit_svm`."""
    return fit_svm(X_train, y_train, X_test, seed=seed, grid=grid, n_jobs=n_jobs)[0]


def pca_svm(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_components: int = 30, seed: int = 0,
            grid: dict | None = None, n_jobs: int = 2) -> np.ndarray:
    """PCA (fitted on the training pixels only) to n_components, then SVM (RBF): predictions (m,)."""
    return fit_svm(X_train, y_train, X_test, n_components=n_components, seed=seed, grid=grid, n_jobs=n_jobs)[0]


def fcls(pixels: np.ndarray, endmembers: np.ndarray, delta: float = 1e3) -> np.ndarray:
    """Fully constrained least-squares unmixing (Heinz & Chang 2001): abundances (n, k).

    pixels: (n, bands); endmembers: (bands, k), same units. Solves min ||x - M a|| with a >= 0
    (scipy.optimize.nnls) and sum(a) = 1 enforced by the augmented row ``delta * 1^T`` (target
    ``delta``): the larger delta, the tighter the sum-to-one constraint.
    """
    pixels, endmembers = np.asarray(pixels, dtype=np.float64), np.asarray(endmembers, dtype=np.float64)
    if pixels.ndim != 2 or endmembers.ndim != 2 or pixels.shape[1] != endmembers.shape[0]:
        raise MmtokError(f"fcls: expected pixels (n, bands) and endmembers (bands, k), found "
                         f"{pixels.shape} and {endmembers.shape}")
    k = endmembers.shape[1]
    A = np.vstack([endmembers, np.full((1, k), delta)])
    b = np.empty(pixels.shape[1] + 1)
    b[-1] = delta
    out = np.empty((len(pixels), k))
    for i, x in enumerate(pixels):
        b[:-1] = x
        out[i] = nnls(A, b)[0]
    return out


def pca_reconstruction(train: np.ndarray, test: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """PCA with k components fitted on train (n, d); test (m, d) -> (reconstruction (m, d), RMSE)."""
    train, test = np.asarray(train, dtype=np.float64), np.asarray(test, dtype=np.float64)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise MmtokError(f"pca_reconstruction: expected train (n, d) and test (m, d), found {train.shape} and {test.shape}")
    if not 0 < k <= min(train.shape):
        raise MmtokError(f"pca_reconstruction: k must be in 1..{min(train.shape)}, found {k}")
    pca = PCA(n_components=k, svd_solver="full").fit(train)
    rec = pca.inverse_transform(pca.transform(test))
    return rec, float(np.sqrt(np.mean((rec - test) ** 2)))


def _summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def _indian_pines(seeds, log) -> dict:
    scene = load_indian_pines()
    labels, nc = scene.labels, len(scene.class_names)
    flat = labels.ravel()
    protocols = {
        "random_10pct": lambda s: random_per_class(labels, 0.1, seed=s),
        "spatial_chip9": lambda s: spatially_disjoint(labels, chip_size=9, seed=s)[:2],
    }
    out = {"num_labelled": int((flat > 0).sum()), "bands": int(scene.cube.shape[0])}
    for protocol, split in protocols.items():
        res = {"svm_rbf": [], "pca30_svm": []}
        params = {"svm_rbf": [], "pca30_svm": []}
        counts = []
        for s in seeds:
            tr, te = split(s)
            counts.append(class_counts(labels, tr, te, nc)[1:].tolist())
            Xtr, Xte, ytr, yte = scene.spectra(tr), scene.spectra(te), flat[tr], flat[te]
            for name, n_comp in (("svm_rbf", None), ("pca30_svm", 30)):
                t = time.perf_counter()
                pred, best = fit_svm(Xtr, ytr, Xte, n_components=n_comp, seed=s)
                rep = classification_report(yte, pred, nc)
                res[name].append(rep)
                params[name].append(best)
                log(f"indian_pines {protocol} seed {s} {name}: OA {rep['oa']:.4f} AA {rep['aa']:.4f} "
                    f"kappa {rep['kappa']:.4f} (n_train {len(tr)}, n_test {len(te)}, {time.perf_counter() - t:.1f} s)")
        out[protocol] = {
            name: {**{m: _summary([r[m] for r in reps]) for m in ("oa", "aa", "kappa")},
                   "per_class": [r["per_class"] for r in reps], "best_params": params[name]}
            for name, reps in res.items()}
        out[protocol]["class_counts_train_test"] = {f"seed{s}": c for s, c in zip(seeds, counts)}
    return out


def _jasper_ridge(log) -> dict:
    scene = load_jasper_ridge()
    bands, h, w = scene.cube.shape
    X = scene.cube.reshape(bands, -1).T.astype(np.float64)            # (h*w, bands), row-major pixels
    A = scene.extra["abundances"].reshape(4, -1).T.astype(np.float64)  # (h*w, 4)
    M = scene.extra["endmembers"].astype(np.float64)
    right = (np.arange(h * w) % w) >= w // 2                          # columns 50..99
    t = time.perf_counter()
    est = fcls(X, M)
    fcls_s = time.perf_counter() - t
    rmse = lambda a, b: float(np.sqrt(np.mean((a - b) ** 2)))
    out = {
        "fcls_seconds": fcls_s,
        "fcls_abundance_rmse": {"all": rmse(est, A), "right_half": rmse(est[right], A[right]),
                                "per_endmember_all": dict(zip(scene.extra["endmember_names"],
                                                              np.sqrt(((est - A) ** 2).mean(0)).tolist()))},
        "fcls_reconstruction_rmse_right_half": rmse(est[right] @ M.T, X[right]),
        "gt_abundance_reconstruction_rmse_right_half": rmse(A[right] @ M.T, X[right]),
        "pca_reconstruction_rmse_right_half": {},
        "pca_linear_abundance_rmse_right_half": {},
        "units": "cube / max_value (5000), i.e. reflectance-like, cube values 0..1.087",
    }
    for k in (4, 8, 16):
        _, r = pca_reconstruction(X[~right], X[right], k)
        out["pca_reconstruction_rmse_right_half"][str(k)] = r
        pca = PCA(n_components=k, svd_solver="full").fit(X[~right])
        reg = LinearRegression().fit(pca.transform(X[~right]), A[~right])
        out["pca_linear_abundance_rmse_right_half"][str(k)] = rmse(reg.predict(pca.transform(X[right])), A[right])
    log(f"jasper_ridge: FCLS abundance RMSE all {out['fcls_abundance_rmse']['all']:.4f}, right half "
        f"{out['fcls_abundance_rmse']['right_half']:.4f} ({fcls_s:.1f} s); PCA reconstruction RMSE right half "
        + ", ".join(f"k={k} {v:.4f}" for k, v in out["pca_reconstruction_rmse_right_half"].items()))
    return out


def run_baselines(out_json: Path | None = None, seeds=(0, 1, 2), log=print) -> dict:
    """Measure the baselines on the shipped scenes; write JSON to ``out_json`` if given.

    Indian Pines: SVM (RBF) on raw spectra and PCA(30) + SVM under the random 10 %-per-class
    split and the spatially disjoint split (chip_size 9), OA / AA / kappa mean +- std over seeds.
    Jasper Ridge: FCLS abundance RMSE vs ground truth (whole scene and right half, columns
    50-99); PCA (fitted on the left half) reconstruction RMSE and linear abundance regression
    RMSE on the right half for k = 4, 8, 16.
    """
    t0 = time.perf_counter()
    result = {"indian_pines": _indian_pines(tuple(seeds), log), "jasper_ridge": _jasper_ridge(log)}
    result["seconds"] = time.perf_counter() - t0
    if out_json is not None:
        write_json(Path(out_json), result)
    return result
