"""The card's transfer evaluation protocol.

1. Split the samples once (fixed seed) into a calibration pool and a held-out test set: Corn,
   60 / 20 at random; Tablet, Eigenvector's Train (155) / Test (460).
2. Calibrate on the source instrument's calibration pool (spectra + reference values).
3. Transfer with N paired samples drawn at random from the calibration pool (the same physical
   samples measured on both instruments, with their reference values); the target-instrument
   spectra of the whole pool are also given, unlabelled (what di-PLS and test-time training use).
4. Predict the target instrument's held-out test samples; repeat with 10 random N-sample draws
   and report mean +- std of R2, RMSEP, RPD and bias. With N = 0 there is nothing to draw, so the
   setting is evaluated once (std 0).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mmtok_plugin_nir.baselines import TransferInputError, TransferTask
from mmtok_plugin_nir.datasets import PairedSpectra
from mmtok_plugin_nir.metrics import regression_metrics

__all__ = ["TransferSetting", "TransferResult", "calibration_split", "draw_transfer_samples", "make_task",
           "run_transfer", "METRICS"]

METRICS = ("r2", "rmsep", "rpd", "bias")


@dataclass(frozen=True)
class TransferSetting:
    """One cell of the benchmark: a data set, an instrument pair, a property and N."""

    dataset: str
    source: str
    target: str
    property: str
    n_transfer: int
    repeats: int = 10
    seed: int = 0


@dataclass
class TransferResult:
    """Per-repeat metrics (repeats x 4) of one method in one setting, with their summary."""

    method: str
    setting: TransferSetting
    per_repeat: list[dict[str, float]]
    seconds: float = 0.0

    def mean(self, metric: str) -> float:
        return float(np.mean([r[metric] for r in self.per_repeat]))

    def std(self, metric: str) -> float:
        return float(np.std([r[metric] for r in self.per_repeat], ddof=1)) if len(self.per_repeat) > 1 else 0.0

    def summary(self) -> dict[str, float]:
        return {**{m: self.mean(m) for m in METRICS}, **{f"{m}_std": self.std(m) for m in METRICS}}

    def to_json(self) -> dict:
        return {"method": self.method, **self.setting.__dict__, "seconds": round(self.seconds, 3),
                "per_repeat": self.per_repeat, **self.summary()}


def calibration_split(data: PairedSpectra, n_test: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration pool rows, test rows). Uses the data set's own split when it has one
    ("Train" is the pool, "Test" the test set); otherwise a seeded random n_test hold-out."""
    if data.split is not None:
        return np.flatnonzero(data.split == "Train"), np.flatnonzero(data.split == "Test")
    order = np.random.default_rng(seed).permutation(data.n_samples)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def draw_transfer_samples(pool: np.ndarray, n: int, repeat: int, seed: int = 0) -> np.ndarray:
    """N distinct rows of the calibration pool for one repeat (seeded by seed and repeat)."""
    if n < 0:
        raise TransferInputError(f"n_transfer: expected N >= 0, found {n}")
    if n > pool.size:
        raise TransferInputError(f"n_transfer: N = {n} transfer samples requested, but only {pool.size} "
                                 f"paired samples are in the calibration pool")
    rng = np.random.default_rng([seed, repeat, n])
    return np.sort(rng.choice(pool, size=n, replace=False))


def make_task(data: PairedSpectra, source: str, target: str, prop: str, pool: np.ndarray,
              standards: np.ndarray) -> TransferTask:
    """The inputs a transfer method sees for one repeat (never the test rows)."""
    xs, xt, y = data.instrument(source), data.instrument(target), data.property(prop)
    return TransferTask(X_cal=xs[pool], y_cal=y[pool], X_source_std=xs[standards], X_target_std=xt[standards],
                        y_std=y[standards], X_target_unlabeled=xt[pool])


def run_transfer(data: PairedSpectra, setting: TransferSetting, make_method: Callable[[], object],
                 name: str | None = None) -> TransferResult:
    """Run one method (a fresh one per repeat from ``make_method``) over the setting's repeats."""
    if setting.source == setting.target:
        raise TransferInputError(f"source and target are both {setting.source!r}; pick two instruments "
                                 f"of {list(data.instruments)}")
    for inst in (setting.source, setting.target):
        data.instrument(inst)
    pool, test = calibration_split(data, seed=setting.seed)
    y_test = data.property(setting.property)[test]
    x_test = data.instrument(setting.target)[test]
    rows, start = [], time.perf_counter()
    method = None
    # N = 0 has no draw: every repeat would see the same task, so it is evaluated once
    for repeat in range(setting.repeats if setting.n_transfer else 1):
        standards = draw_transfer_samples(pool, setting.n_transfer, repeat, setting.seed)
        task = make_task(data, setting.source, setting.target, setting.property, pool, standards)
        method = make_method()
        method.fit(task)
        rows.append({k: float(v) for k, v in regression_metrics(y_test, method.predict(x_test)).items()})
    return TransferResult(name or getattr(method, "name", "method"), setting, rows, time.perf_counter() - start)
