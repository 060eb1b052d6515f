"""What the served answers say about the model: predicted class mix, confidence, live quality once
labels have joined, and estimated quality while they have not.

Inputs are the capture log's lines (mmcore.serving.capture: `label` is the predicted class, `p_<class>`
the probabilities, `model_version` the version that answered) and the raw profile, where a label from
the feed has joined the captured record through its `prediction_id` (mmcore.monitor.labels).

Live quality is resampled by shipment, as the gate's bootstrap is (mmcore.bootstrap): one parcel's
records are not independent draws. Estimated quality is confidence-based performance estimation
(CBPE, the method NannyML implements): with calibrated probabilities, the expected confusion matrix of
unlabelled answers is the sum of each answer's probability vector into its predicted column, and
F1 and accuracy follow from it. It is only as good as the calibration, which the gate bounds
(gate.max_ece on the gate set); a shifted hub can break calibration, so a drop in the estimate is
an alarm, never a verdict: live quality is.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from mmcore.bootstrap import interval, pair_onehot, shipment_weights, weighted_f1
from mmcore.evaluate import class_f1, confusion
from mmcore.schema import LABEL_SOURCES

CONFIDENCE_BINS = 10


def predictions(lines: Iterable[dict[str, Any]], classes: list[str]) -> pd.DataFrame:
    """One row per captured answer: prediction_id, model_version, hub, answered_at, predicted class
    (index into `classes`), confidence, and the probabilities as p_<class>. Lines missing a
    probability are left out (a capture from another model's class list is not comparable)."""
    cols = [f"p_{c}" for c in classes]
    rows = [ln for ln in lines if all(isinstance(ln.get(c), (int, float)) for c in cols)]
    df = pd.DataFrame(rows, columns=["prediction_id", "model_version", "hub", "shipment_id", "answered_at",
                                     "x_request_id", *cols])
    probs = df[cols].to_numpy(float) if len(df) else np.zeros((0, len(classes)))
    df["model_version"] = df["model_version"].astype(str)
    df["predicted"] = probs.argmax(1) if len(df) else np.zeros(0, int)
    df["confidence"] = probs.max(1) if len(df) else np.zeros(0)
    return df.drop_duplicates("prediction_id").reset_index(drop=True)


def probs_of(df: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return df[[f"p_{c}" for c in classes]].to_numpy(float)


def class_mix(predicted: np.ndarray, reference: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Predicted class shares against the gate set's label shares; `distance` is the total
    variation distance (half the L1 distance: 0 same mix, 1 disjoint)."""
    n = len(classes)
    cur = np.bincount(predicted, minlength=n) / max(len(predicted), 1)
    ref = np.bincount(reference, minlength=n) / max(len(reference), 1)
    return {"window": dict(zip(classes, np.round(cur, 4).tolist())),
            "gate_set": dict(zip(classes, np.round(ref, 4).tolist())),
            "distance": round(float(0.5 * np.abs(cur - ref).sum()), 4)}


def confidence_histogram(confidence: np.ndarray, bins: int = CONFIDENCE_BINS) -> dict[str, Any]:
    counts, edges = np.histogram(confidence, bins=bins, range=(0.0, 1.0))
    return {"edges": np.round(edges, 4).tolist(), "counts": counts.tolist(),
            "mean": round(float(confidence.mean()), 4) if len(confidence) else None}


def live_quality(y: np.ndarray, pred: np.ndarray, shipments: np.ndarray, classes: list[str], n_boot: int,
                 seed: int, ci: float) -> dict[str, Any]:
    """Macro-F1, accuracy and per-class F1 of labelled answers with shipment-bootstrap intervals.
    Macro-F1 averages the classes that occur among the labels or the predictions (a class that does
    neither has no F1 to miss; one only predicted counts as 0)."""
    n = len(classes)
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    present = np.unique(np.concatenate([y, pred]))   # as sklearn's macro average: labels and predictions
    pairs, hit = pair_onehot(y, pred, n), (y == pred).astype(float)
    f1_rounds, acc_rounds = [], []
    for w in shipment_weights(shipments, n_boot, seed):
        f1_rounds.append(weighted_f1(w, pairs, n))
        acc_rounds.append((w @ hit) / np.maximum(w.sum(1), 1e-12))
    f1s, accs = np.concatenate(f1_rounds), np.concatenate(acc_rounds)
    observed = class_f1(confusion(y, pred, n))
    return {"n": int(len(y)), "shipments": int(len(np.unique(shipments))),
            "macro_f1": interval(float(observed[present].mean()), f1s[:, present].mean(1), ci),
            "accuracy": interval(float(hit.mean()), accs, ci),
            "per_class": {classes[k]: {"n": int((y == k).sum()), **interval(float(observed[k]), f1s[:, k], ci)}
                          for k in np.unique(y)}}


def estimated_quality(probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """CBPE: expected confusion matrix from calibrated probabilities, and the macro-F1 and accuracy
    it implies. Classes the model never predicts and barely expects (expected support < 0.5) are
    left out of the macro average, as an absent class is from live quality's."""
    n = len(classes)
    if not len(probs):
        return {"n": 0, "macro_f1": None, "accuracy": None}
    cm = np.zeros((n, n))
    np.add.at(cm.T, probs.argmax(1), probs)   # column = predicted class, rows = expected true class
    f1 = class_f1(cm[None])[0]
    present = cm.sum(1) >= 0.5
    return {"n": int(len(probs)), "macro_f1": round(float(f1[present].mean()), 4),
            "accuracy": round(float(np.trace(cm) / cm.sum()), 4),
            "per_class_f1": dict(zip(classes, np.round(f1, 4).tolist()))}


def labelled_answers(profile: pd.DataFrame, preds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Captured answers whose record has a label from the feed (inspection, claim, review): the
    prediction, the label, the shipment and the hub, joined by prediction_id."""
    fed = profile[profile["prediction_id"].notna() & profile["label_source"].isin(LABEL_SOURCES)
                  & profile["label"].isin(classes)]
    cols = ["prediction_id", "label", "shipment_id", "hub", "labelled_at"]
    joined = preds.drop(columns=["hub", "shipment_id"]).merge(fed[cols], on="prediction_id", how="inner")
    joined["y"] = joined["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
    return joined
