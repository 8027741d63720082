"""Figures of merit for a property prediction: R², RMSEP, RPD and bias.

Conventions (those of the NIR calibration-transfer literature):

- ``bias = mean(y_pred - y_true)`` (positive: the model over-predicts);
- ``rmsep = sqrt(mean((y_pred - y_true)^2))``, bias included;
- ``sep = sqrt(sum((e - bias)^2) / (n - 1))`` with ``e = y_pred - y_true``: the bias-corrected
  standard error of prediction, so that ``rmsep^2 ~= sep^2 + bias^2``;
- ``rpd = std(y_true, ddof=1) / sep`` (RPD = SD / SEP, Williams' ratio of performance to
  deviation). Some papers divide by RMSEP instead; with a bias the two differ, ours is the
  larger one;
- ``r2`` is scikit-learn's ``r2_score`` (1 - SS_res / SS_tot, so it can be negative).
"""

import numpy as np
from sklearn.metrics import mean_squared_error, r2_score

__all__ = ["regression_metrics"]


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    """Compare predictions (n,) with reference values (n,), n >= 2.

    Returns ``{"r2", "rmsep", "rpd", "bias"}`` as floats (conventions in the module docstring).
    """
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"regression_metrics: y_true and y_pred must have the same length, found "
                         f"{y_true.size} and {y_pred.size}")
    if y_true.size < 2:
        raise ValueError(f"regression_metrics: need at least 2 samples, found {y_true.size}")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError("regression_metrics: y_true and y_pred must be finite")
    error = y_pred - y_true
    bias = float(error.mean())
    sep = float(np.sqrt(np.sum((error - bias) ** 2) / (error.size - 1)))
    sd = float(np.std(y_true, ddof=1))
    return {
        "r2": float(r2_score(y_true, y_pred)),
        "rmsep": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        "rpd": sd / sep if sep > 0 else float("inf"),
        "bias": bias,
    }
