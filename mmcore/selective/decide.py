"""From probabilities to an answer a hub can act on: the prediction set and `auto` or `review`.

Pure numpy/scipy over the calibrated numbers (mmcore.selective.calibrate), so serving, evaluation
and the MLflow pyfunc route records the same way, and serving imports no MAPIE. `probs` here are the
served ones: the calibration's temperature already applied (`mmcore.selective.calibrate.scale`).
"""
from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from mmcore.selective.calibrate import Calibration

EPSILON = 1e-8      # MAPIE's LAC set rule: 1 - p <= quantile + EPSILON (mapie._machine_precision)


def prediction_sets(probs: np.ndarray, set_quantile: float) -> np.ndarray:
    """(N, C) membership: class c is in the set when 1 - p_c <= set_quantile (LAC)."""
    return (1.0 - probs) - set_quantile <= EPSILON


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence per row, in bits (0..1)."""
    return np.nan_to_num(jensenshannon(p, q, axis=1, base=2) ** 2)


def pairwise_disagreement(opinions: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Largest Jensen-Shannon divergence between two unimodal models' probabilities.

    opinions (N, M, C): each modality's own model; present (N, M): which modalities the record has.
    Only present modalities have an opinion; a record with fewer than two scores 0."""
    out = np.zeros(len(opinions))
    for a, b in combinations(range(opinions.shape[1]), 2):
        both = present[:, a] & present[:, b]
        if both.any():
            out[both] = np.maximum(out[both], _js(opinions[both, a], opinions[both, b]))
    return out


def leave_one_out_disagreement(opinions: np.ndarray, others: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Largest Jensen-Shannon divergence between a modality's own model and the fused model without it.

    others (N, M, C): the fused model with modality m masked, i.e. what the rest of the record says.
    Chosen over `pairwise_disagreement` on the validation split (mmcore.selective.sweep): the rest of
    the record is a stronger witness than any single other modality."""
    out = np.zeros(len(opinions))
    enough = present.sum(1) >= 2
    for j in range(opinions.shape[1]):
        rows = present[:, j] & enough
        if rows.any():
            out[rows] = np.maximum(out[rows], _js(opinions[rows, j], others[rows, j]))
    return out


DETECTORS = ("leave_one_out", "pairwise")


def review_reasons(probs: np.ndarray, dis: np.ndarray, cal: Calibration | None) -> tuple[np.ndarray, list[list[str]]]:
    """Prediction sets and, per record, why it goes to review ([] = decided automatically)."""
    if cal is None:   # nothing calibrated, nothing excluded: every class in the set, a person decides
        return np.ones(probs.shape, dtype=bool), [["uncalibrated"] for _ in probs]
    sets = prediction_sets(probs, cal.set_quantile)
    top, pred = probs.max(1), probs.argmax(1)
    empty = ~sets.any(1)
    sets[empty, pred[empty]] = True      # never an empty set: the top class, and `set_size` sends it to review
    thresholds = list(cal.confidence_thresholds.values())
    out = []
    for i in range(len(probs)):
        why = []
        if sets[i].sum() != 1 or empty[i]:
            why.append("set_size")
        if thresholds[pred[i]] is None or top[i] < thresholds[pred[i]]:
            why.append("low_confidence")
        if cal.disagreement_threshold is not None and dis[i] > cal.disagreement_threshold:
            why.append("modalities_disagree")
        out.append(why)
    return sets, out


def answers(probs: np.ndarray, dis: np.ndarray, cal: Calibration | None, labels: list[str]) -> list[dict[str, Any]]:
    """The fields every served answer gains: prediction_set, decision, review_reason, disagreement."""
    sets, why = review_reasons(probs, dis, cal)
    return [{"prediction_set": [c for c, keep in zip(labels, s) if keep],
             "decision": "review" if w else "auto", "review_reason": w, "disagreement": float(d)}
            for s, w, d in zip(sets, why, dis)]
