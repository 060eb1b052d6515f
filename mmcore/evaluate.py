"""Scores of a model on labelled records: the numbers the gate and the reports use."""
from __future__ import annotations

from typing import Any

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def per_class(cm: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for c, name in enumerate(labels):
        tp, fp, fn = cm[c, c], cm[:, c].sum() - cm[c, c], cm[c, :].sum() - cm[c, c]
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[name] = {"precision": float(prec), "recall": float(rec), "f1": float(f1),
                     "support": int(cm[c, :].sum())}
    return out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> float:
    stats = per_class(confusion(y_true, y_pred, n), [str(i) for i in range(n)])
    return float(np.mean([v["f1"] for v in stats.values()]))


def score(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """macro-F1, accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    y_pred = probs.argmax(1)
    cm = confusion(y_true, y_pred, len(labels))
    classes = per_class(cm, labels)
    return {"macro_f1": float(np.mean([v["f1"] for v in classes.values()])),
            "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
            "n": int(len(y_true)), "per_class": classes, "confusion_matrix": cm.tolist()}
