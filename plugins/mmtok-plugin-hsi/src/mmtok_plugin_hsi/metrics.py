"""Classification scores of the hyperspectral literature: OA, AA and Cohen's kappa."""

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from mmtok import MmtokError

__all__ = ["classification_report"]


def classification_report(y_true, y_pred, num_classes: int) -> dict:
    """OA / AA / kappa of integer labels in [0, num_classes).

    Returns ``{"oa", "aa", "kappa", "per_class", "confusion", "n"}``: oa = accuracy; per_class =
    {label: recall} for the labels present in y_true; aa = mean of those recalls; kappa = Cohen's
    kappa (sklearn); confusion = (num_classes, num_classes) counts, row = true, column = predicted.
    """
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise MmtokError(f"y_pred: expected {y_true.size} predictions like y_true, found {y_pred.size}")
    if y_true.size == 0:
        raise MmtokError("y_true: expected at least one labelled pixel, found none")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.min() < 0 or y.max() >= num_classes:
            raise MmtokError(f"{name}: expected labels in [0, {num_classes}), found {y.min()}..{y.max()}")
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    support = cm.sum(axis=1)
    present = np.flatnonzero(support)
    recall = {int(c): float(cm[c, c] / support[c]) for c in present}
    return {"oa": float(np.trace(cm) / cm.sum()), "aa": float(np.mean(list(recall.values()))),
            "kappa": float(cohen_kappa_score(y_true, y_pred)), "per_class": recall,
            "confusion": cm.tolist(), "n": int(y_true.size)}
