"""Property heads on frozen features, and their choice by nested validation.

A head maps features Z (n, f) to one property y (n,). Each one picks its own hyperparameters
inside the data it is fitted on, never on test rows:

- ``ridge``: ridge regression, alpha by efficient leave-one-out CV over 1e-6 .. 1e3 (sklearn RidgeCV);
- ``pls``: PLS1 (`baselines.fit_pls`: latent variables by 5-fold CV, one-standard-error rule);
- ``mlp``: a one-hidden-layer MLP on standardised y (64 GELU units, AdamW lr 3e-3, full batch, 300 steps) whose weight decay
  is chosen by 5-fold CV from (1e-3, 1e-1, 1).

`select_head` chooses among heads by a validation split of the calibration / transfer samples:
with N >= 5 target standards, K = min(5, N) folds over the standards (each fold: fit on the
calibration features and the other standards, score on the held-out standards, i.e. on the target
instrument); with fewer, 5-fold CV over the calibration samples (source instrument, standards
always in the training part). The chosen head is refitted on everything.
"""

import math

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

from mmtok_plugin_nir.baselines import TransferInputError, fit_pls

__all__ = ["HEADS", "RidgeHead", "PLSHead", "MLPHead", "make_head", "select_head", "validation_rmse"]


class RidgeHead:
    """Ridge on Z (n, f); alpha by leave-one-out CV."""

    name = "ridge"

    def fit(self, z: np.ndarray, y: np.ndarray) -> "RidgeHead":
        self.model = RidgeCV(alphas=np.logspace(-6, 3, 19)).fit(z, y)
        self.coef, self.intercept = self.model.coef_, float(self.model.intercept_)
        return self

    def predict(self, z: np.ndarray) -> np.ndarray:
        return z @ self.coef + self.intercept


class PLSHead:
    """PLS1 on Z (n, f); latent variables by 5-fold CV (one-standard-error rule)."""

    name = "pls"

    def fit(self, z: np.ndarray, y: np.ndarray) -> "PLSHead":
        cv = min(5, z.shape[0])
        self.model = fit_pls(z, y, max_components=min(15, z.shape[0] - math.ceil(z.shape[0] / cv) - 1), cv=cv)
        return self

    def predict(self, z: np.ndarray) -> np.ndarray:
        return self.model.predict(z)


class MLPHead:
    """f -> 64 (GELU) -> 1, AdamW lr 3e-3, 300 full-batch steps, weight decay by 5-fold CV."""

    name = "mlp"
    decays = (1e-3, 1e-1, 1.0)

    def __init__(self, hidden: int = 64, steps: int = 300, seed: int = 0) -> None:
        self.hidden, self.steps, self.seed = hidden, steps, seed

    def _train(self, z: np.ndarray, y: np.ndarray, decay: float) -> torch.nn.Module:
        g = torch.Generator().manual_seed(self.seed)
        net = torch.nn.Sequential(torch.nn.Linear(z.shape[1], self.hidden), torch.nn.GELU(),
                                  torch.nn.Linear(self.hidden, 1))
        with torch.no_grad():
            for p in net.parameters():   # seeded init, independent of the global RNG
                p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() == 1 else 1 / math.sqrt(p.shape[1])))
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=decay)
        zt, yt = torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        for _ in range(self.steps):
            loss = torch.nn.functional.mse_loss(net(zt)[:, 0], yt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return net.eval()

    @staticmethod
    @torch.no_grad()
    def _apply(net: torch.nn.Module, z: np.ndarray) -> np.ndarray:
        return net(torch.as_tensor(z, dtype=torch.float32))[:, 0].double().numpy()

    def fit(self, z: np.ndarray, y: np.ndarray) -> "MLPHead":
        self.y_mean, self.y_scale = float(y.mean()), float(y.std() + 1e-12)   # trains on standardised y
        y = (y - self.y_mean) / self.y_scale
        folds = KFold(min(5, z.shape[0]), shuffle=True, random_state=self.seed)
        errors = []
        for decay in self.decays:
            sq = [(self._apply(self._train(z[tr], y[tr], decay), z[va]) - y[va]) ** 2 for tr, va in folds.split(z)]
            errors.append(float(np.concatenate(sq).mean()))
        self.decay = self.decays[int(np.argmin(errors))]
        self.net = self._train(z, y, self.decay)
        return self

    def predict(self, z: np.ndarray) -> np.ndarray:
        return self._apply(self.net, z) * self.y_scale + self.y_mean


HEADS = {"ridge": RidgeHead, "pls": PLSHead, "mlp": MLPHead}


def make_head(name: str, seed: int = 0):
    """A fresh head by name (a key of HEADS)."""
    if name not in HEADS:
        raise TransferInputError(f"head: expected one of {sorted(HEADS)} or 'auto', found {name!r}")
    return HEADS[name](seed=seed) if name == "mlp" else HEADS[name]()


def validation_rmse(name: str, z_cal: np.ndarray, y_cal: np.ndarray, z_std: np.ndarray, y_std: np.ndarray,
                    seed: int = 0) -> float:
    """RMSE of head `name` on a validation split of the calibration / transfer samples (see the
    module docstring); z_* (n, f), y_* (n,)."""
    n_std = len(y_std)
    sq = []
    if n_std >= 5:    # validate on the target instrument: folds over the standards
        for tr, va in KFold(min(5, n_std), shuffle=True, random_state=seed).split(z_std):
            head = make_head(name, seed).fit(np.vstack([z_cal, z_std[tr]]), np.concatenate([y_cal, y_std[tr]]))
            sq.append((head.predict(z_std[va]) - y_std[va]) ** 2)
    else:             # no target labels to spare: folds over the calibration samples
        for tr, va in KFold(5, shuffle=True, random_state=seed).split(z_cal):
            head = make_head(name, seed).fit(np.vstack([z_cal[tr], z_std]), np.concatenate([y_cal[tr], y_std]))
            sq.append((head.predict(z_cal[va]) - y_cal[va]) ** 2)
    return float(np.sqrt(np.concatenate(sq).mean()))


def select_head(candidates, z_cal: np.ndarray, y_cal: np.ndarray, z_std: np.ndarray, y_std: np.ndarray,
                seed: int = 0) -> tuple[object, dict[str, float]]:
    """The candidate head with the lowest `validation_rmse`, refitted on all calibration and
    transfer samples, and every candidate's validation RMSE."""
    scores = {name: validation_rmse(name, z_cal, y_cal, z_std, y_std, seed) for name in candidates}
    best = min(scores, key=scores.get)
    head = make_head(best, seed).fit(np.vstack([z_cal, z_std]), np.concatenate([y_cal, y_std]))
    return head, scores
