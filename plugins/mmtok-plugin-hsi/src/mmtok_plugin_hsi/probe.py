"""Evaluation of a pretrained `GuidedSpectralGPT` on labelled chips: a linear probe on frozen
HSI-only embeddings, and a small supervised fine-tune.

- `embed_chips`: HSI-only embeddings (n, dim) of chips (n, bands, size, size), in batches, with
  an optional progress bar.
- `linear_probe`: standardised features -> multinomial logistic regression (scikit-learn, L2,
  C chosen by stratified cross-validation on the training set only).
- `finetune`: a linear head on the mean-pooled HSI-only encoder tokens, the encoder trained with a
  lower learning rate (AdamW, cosine decay, no masking, random flips / 90-degree rotations of the
  chips); a copy of the model is trained, the caller's is left as it was.
"""

import copy
import math

import numpy as np
import torch
from torch import Tensor, nn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["embed_chips", "linear_probe", "fit_probe", "finetune"]


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, seed: int = 0,
                 cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), max_iter: int = 2000,
                 blas_threads: int | None = 1) -> np.ndarray:
    """Predicted labels (m,) for ``x_test`` (m, d) of a logistic regression fitted on
    ``x_train`` (n, d) / ``y_train`` (n,); C from 3-fold stratified CV (fewer folds when a class
    has fewer than 3 training samples, none when it has 1). ``blas_threads``: BLAS threads during
    the fit (threadpoolctl; None = unchanged): these problems are small, and a multi-threaded
    BLAS on a busy machine made them 10x slower (measured)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return fit_probe(x_train, y_train, seed=seed, cs=cs, max_iter=max_iter).predict(
            np.asarray(x_test, np.float64))


def fit_probe(x_train, y_train, *, seed: int = 0, cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
              max_iter: int = 2000):
    """The fitted probe of `linear_probe` (a scikit-learn estimator: StandardScaler + LogisticRegression,
    wrapped in GridSearchCV when C is cross-validated)."""
    x_train = np.asarray(x_train, np.float64)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    folds = min(3, int(np.bincount(np.asarray(y_train)).compress(np.bincount(np.asarray(y_train)) > 0).min()))
    if folds >= 2 and len(cs) > 1:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        clf = GridSearchCV(clf, {"logisticregression__C": list(cs)}, cv=cv, n_jobs=1)
    else:
        clf.set_params(logisticregression__C=1.0)
    return clf.fit(x_train, y_train)


def _probe_head(probe, dim: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """(weight (k, dim), bias (k,)) of a linear layer on raw features equal to the fitted probe's
    logits (its standardisation folded in); classes the probe never saw get a bias far below."""
    pipe = getattr(probe, "best_estimator_", probe)
    scaler, lr = pipe.named_steps["standardscaler"], pipe.named_steps["logisticregression"]
    coef, intercept = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps the logit of the second class only
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
    w_std = coef / scaler.scale_                                 # (k', dim)
    b_std = intercept - w_std @ scaler.mean_                     # (k',)
    weight, bias = torch.zeros(num_classes, dim), torch.full((num_classes,), float(b_std.min()) - 10.0)
    idx = torch.as_tensor(lr.classes_.astype(np.int64))
    weight[idx], bias[idx] = torch.as_tensor(w_std, dtype=torch.float32), torch.as_tensor(b_std, dtype=torch.float32)
    return weight, bias


def embed_chips(model, chips, norm=None, *, batch_size: int = 256, progress: bool = False,
                desc: str = "embed") -> np.ndarray:
    """HSI-only embeddings (n, dim) float32 of ``chips`` (n, bands, size, size) (numpy or torch,
    normalised by ``norm`` batch by batch, so the whole set is never copied)."""
    from mmtok_plugin_hsi.pretrain import embed_cubes

    n = len(chips)
    out = np.zeros((n, model.config.dim), dtype=np.float32)
    bar = _bar(n, desc, progress, unit="chip")
    for i in range(0, n, batch_size):
        x = torch.as_tensor(np.asarray(chips[i:i + batch_size], dtype=np.float32))
        out[i:i + len(x)] = embed_cubes(model, x, norm, batch_size=batch_size).numpy()
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    return out


def _bar(total: int, desc: str, progress: bool, unit: str = "it"):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False)


class _Classifier(nn.Module):
    """Encoder tokens (b, n, dim), HSI only, no mask -> mean over tokens -> linear -> logits (b, k)."""

    def __init__(self, model, num_classes: int):
        super().__init__()
        self.encoder = model.encoder
        self.head = nn.Linear(model.config.dim, num_classes)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.01)

    def forward(self, cube: Tensor) -> Tensor:
        return self.head(self.encoder(cube).tokens.mean(1))


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """The same random dihedral transform (flip, 90-degree rotation) of every chip's grid (b, c, s, s)."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    if bool(torch.randint(0, 2, (1,), generator=generator)):
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def finetune(model, norm, x_train, y_train, x_test, num_classes: int, *, steps: int = 300, lr: float = 1e-3,
             encoder_lr_scale: float = 0.1, batch_size: int = 32, weight_decay: float = 0.01, warmup: int = 20,
             augment: bool = True, head_init: str = "zero", seed: int = 0, progress: bool = False,
             eval_batch_size: int = 256) -> np.ndarray:
    """Fine-tune a copy of ``model`` on labelled chips, return predicted labels (m,) of ``x_test``.

    x_train (n, bands, size, size), y_train (n,) ints in [0, num_classes), x_test (m, bands, size,
    size), numpy or torch, on the model's grid and NOT normalised (``norm``, a `CubeNorm` or None,
    is applied here). A linear head (num_classes outputs) on the mean of the HSI-only encoder
    tokens; AdamW with ``lr`` for the head and ``lr * encoder_lr_scale`` for the encoder, linear
    warm-up (``warmup`` steps, at most a fifth of them) then cosine decay over ``steps`` mini-batches of ``batch_size`` drawn uniformly from
    the training set (seeded), cross-entropy. The decoder and conditioners are not used.
    ``head_init="zero"``: a head initialised near zero (what the Indian Pines table used).
    ``"probe"`` (LP-FT, Kumar et al., ICLR 2022): the head starts as the `linear_probe` fitted on
    the frozen embeddings of the training chips, so fine-tuning starts from the probe's solution
    (Indian Pines (a) seed 0, 100 steps: OA 47.6 % -> 76.4 %; (b) seed 0, 200 steps: 30.2 % -> 24.5 %).
    """
    from mmtok import MmtokError

    y_train = np.asarray(y_train, dtype=np.int64).ravel()
    if len(x_train) != len(y_train) or len(x_train) == 0:
        raise MmtokError(f"finetune: expected x_train and y_train of the same non-zero length, found "
                         f"{len(x_train)} and {len(y_train)}")
    if y_train.min() < 0 or y_train.max() >= num_classes:
        raise MmtokError(f"finetune: y_train must lie in [0, {num_classes}), found {y_train.min()}..{y_train.max()}")
    torch.manual_seed(seed)
    net = _Classifier(copy.deepcopy(model).float(), num_classes)
    net.train()
    xt = torch.as_tensor(np.asarray(x_train, dtype=np.float32))
    xt = xt if norm is None else norm(xt)
    yt = torch.as_tensor(y_train)
    if head_init == "probe":
        from threadpoolctl import threadpool_limits

        net.eval()
        with torch.no_grad():
            feats = torch.cat([net.encoder(xt[i:i + eval_batch_size]).tokens.mean(1)
                               for i in range(0, len(xt), eval_batch_size)]).numpy()
        with threadpool_limits(limits=1, user_api="blas"):
            probe = fit_probe(feats, y_train, seed=seed)
        weight, bias = _probe_head(probe, feats.shape[1], num_classes)
        with torch.no_grad():
            net.head.weight.copy_(weight)
            net.head.bias.copy_(bias)
        net.train()
    elif head_init != "zero":
        raise MmtokError(f"finetune: head_init must be 'probe' or 'zero', found {head_init!r}")
    opt = torch.optim.AdamW([{"params": net.encoder.parameters(), "lr": lr * encoder_lr_scale},
                             {"params": net.head.parameters(), "lr": lr}], weight_decay=weight_decay)

    warmup = min(warmup, steps // 5)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    batches = torch.Generator().manual_seed(seed)
    bar = _bar(steps, "finetune", progress, unit="step")
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (min(batch_size, len(xt)),), generator=batches)
        xb = _augment(xt[idx], batches) if augment else xt[idx]
        loss = loss_fn(net(xb), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if bar is not None:
            bar.set_postfix(loss=f"{float(loss):.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    net.eval()
    pred = np.zeros(len(x_test), dtype=np.int64)
    bar = _bar(len(x_test), "finetune predict", progress, unit="chip")
    with torch.no_grad():
        for i in range(0, len(x_test), eval_batch_size):
            xb = torch.as_tensor(np.asarray(x_test[i:i + eval_batch_size], dtype=np.float32))
            xb = xb if norm is None else norm(xb)
            pred[i:i + len(xb)] = net(xb).argmax(1).numpy()
            if bar is not None:
                bar.update(len(xb))
    if bar is not None:
        bar.close()
    return pred
