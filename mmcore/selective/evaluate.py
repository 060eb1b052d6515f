"""How a model's routing does on the gate set: what evaluate reports and the gate reads.

Coverage (overall, per class), mean set size, the share of empty sets served (always 0: the top class
fills one), automation rate, precision of automatic decisions against the observed labels, pooled and
per class, each with its lower bound, and the modality-disagreement detector on synthetic contradictions: each record that
has a note (or a trace) and another modality gets the note (trace) of a record of another class,
swapped in the embedded batch, so no record is encoded twice.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from mmcore.model import MODALITIES, Batch
from mmcore.selective.calibrate import Calibration, lower_bound
from mmcore.selective.decide import prediction_sets, review_reasons
from mmcore.selective.router import Router

SWAPPED = ("text", "sensor")
GOALS = {"automation_rate": 0.50, "auto_precision_pooled": 0.94, "empty_set_rate": 0.0, "coverage": 0.89, "contradiction_auroc": 0.90, "clean_flag_rate": 0.05}


def routing_metrics(probs: np.ndarray, y: np.ndarray, dis: np.ndarray, cal: Calibration | None,
                    labels: list[str], shipments: np.ndarray | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """`probs`: the served ones (temperature applied). Precision is against the observed labels, each with
    its one-sided Clopper-Pearson lower bound at the calibration's confidence 1 - delta. `shipments`:
    coverage also gets its shipment-bootstrap interval (`low`, `high`: the gate reads `high`)."""
    sets, why = review_reasons(probs, dis, cal)
    auto = np.array([not w for w in why], dtype=bool)
    pred = probs.argmax(1)
    covered = sets[np.arange(len(y)), y]
    per_class = {c: float(covered[y == i].mean()) if (y == i).any() else None for i, c in enumerate(labels)}
    delta = 0.1 if cal is None else cal.delta
    precision = {c: _precision(y[auto & (pred == i)] == i, delta) for i, c in enumerate(labels)}
    reasons = {r: int(sum(r in w for w in why)) for r in sorted({r for w in why for r in w})}
    filled = 0 if cal is None else int((~prediction_sets(probs, cal.set_quantile).any(1)).sum())
    return {"calibrated": cal is not None, "n": int(len(y)), "alpha": None if cal is None else cal.alpha,
            "temperature": None if cal is None else cal.temperature,
            "coverage": {"overall": float(covered.mean()) if len(y) else None, "per_class": per_class},
            "mean_set_size": float(sets.sum(1).mean()) if len(y) else None,
            "empty_set_rate": float((sets.sum(1) == 0).mean()) if len(y) else None, "empty_sets_filled": filled,
            "automation_rate": float(auto.mean()) if len(y) else None, "auto_precision": precision,
            "auto_precision_pooled": _precision(pred[auto] == y[auto], delta),
            "certified_on_calib": None if cal is None else {k: cal.info.get(k) for k in (
                "mode", "tests", "why_uncertified", "threshold_records", "scaling_records", "label_noise")},
            "auto_accuracy": float((pred[auto] == y[auto]).mean()) if auto.any() else None,
            "review_reasons": reasons,
            "confidence_thresholds": None if cal is None else cal.confidence_thresholds} | _coverage_ci(
                covered, shipments, n_boot)


def _coverage_ci(covered: np.ndarray, shipments: np.ndarray | None, n_boot: int) -> dict[str, Any]:
    if shipments is None or not len(covered):
        return {}
    from mmcore.bootstrap import mean_interval

    ci = mean_interval(covered, shipments, n_boot, seed=0)
    return {"coverage_ci": {"low": ci["low"], "high": ci["high"], "resampled_by": "shipment"}}


def _precision(right: np.ndarray, delta: float) -> dict[str, Any]:
    n, k = int(right.size), int(right.sum())
    return {"precision": k / n if n else None, "lower_bound": lower_bound(k, n, delta), "n": n,
            "confidence": 1 - delta}


def contradicted(batch: Batch, y: np.ndarray, modality: str, seed: int) -> tuple[Batch, np.ndarray]:
    """`batch` with `modality` of each eligible record replaced by another class's; and which were."""
    j = MODALITIES.index(modality)
    mask = batch.mask.numpy() > 0
    eligible = np.flatnonzero(mask[:, j] & (mask.sum(1) >= 2))
    rng = np.random.default_rng(seed)
    donors = np.flatnonzero(mask[:, j])
    out = {k: v.clone() for k, v in dataclasses.asdict(batch).items()}
    chosen = []
    for i in eligible:
        other = donors[y[donors] != y[i]]
        if other.size == 0:
            continue
        d = int(rng.choice(other))
        fields = ("text", "ngrams") if modality == "text" else (modality,)
        for f in fields:
            out[f][i] = getattr(batch, f)[d]
        chosen.append(i)
    return Batch(**out), np.asarray(chosen, dtype=np.int64)


def contradiction_metrics(router: Router, batch: Batch, y: np.ndarray, seed: int, detector: str | None = None,
                          thr: float | None = None, scores: np.ndarray | None = None) -> dict[str, Any]:
    """AUROC of the disagreement score, clean multimodal records against contradicted ones, and the
    shares over the threshold (the calibrated one unless `thr`; clean: false alarms; contradicted: detected).
    `scores`: the batch's disagreement, when the caller has it already."""
    from sklearn.metrics import roc_auc_score

    if not router.opinions:
        return {"available": False, "note": "the model directory has no unimodal opinions"}
    multimodal = (batch.mask.numpy() > 0).sum(1) >= 2
    clean = (router.disagreement(batch, detector) if scores is None else scores)[multimodal]
    if thr is None and detector is None:
        thr = router.calibration.disagreement_threshold if router.calibration else None
    out: dict[str, Any] = {"available": True, "detector": detector or router.detector, "threshold": thr,
                           "clean_n": int(clean.size),
                           "clean_flag_rate": float((clean > thr).mean()) if thr is not None and clean.size else None}
    scores = []
    for k, modality in enumerate(SWAPPED):
        swapped, idx = contradicted(batch, y, modality, seed + k)
        s = router.disagreement(swapped, detector)[idx]
        scores.append(s)
        detected = float((s > thr).mean()) if thr is not None and idx.size else None
        out[modality] = {"n": int(idx.size), "detected": detected,
                         "auroc": _auroc(clean, s, roc_auc_score)}
    out["auroc"] = _auroc(clean, np.concatenate(scores), roc_auc_score)
    return out


def _auroc(clean: np.ndarray, bad: np.ndarray, roc_auc_score: Any) -> float | None:
    if not clean.size or not bad.size:
        return None
    labels = np.r_[np.zeros(clean.size), np.ones(bad.size)]
    return float(roc_auc_score(labels, np.r_[clean, bad]))


def selective_section(router: Router, probs: np.ndarray, batch: Batch, y: np.ndarray, labels: list[str],
                      seed: int, shipments: np.ndarray | None = None) -> dict[str, Any]:
    with torch.inference_mode():
        dis = router.disagreement(batch)
        out = routing_metrics(probs, y, dis, router.calibration, labels, shipments)
        out["contradictions"] = contradiction_metrics(router, batch, y, seed, scores=dis)
    return out


def goals(section: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's goals on the default data, each with its value and whether it is met."""
    if not section:
        return {}
    pooled = section.get("auto_precision_pooled") or {}
    con = section.get("contradictions") or {}
    values = {"automation_rate": (section["automation_rate"], ">="),
              "auto_precision_pooled": (pooled.get("precision"), ">="),
              "empty_set_rate": (section.get("empty_set_rate"), "<="),
              "coverage": (section["coverage"]["overall"], ">="), "contradiction_auroc": (con.get("auroc"), ">="),
              "clean_flag_rate": (con.get("clean_flag_rate"), "<=")}
    return {k: {"value": v, "op": op, "goal": GOALS[k],
                "met": v is not None and (v >= GOALS[k] if op == ">=" else v <= GOALS[k])}
            for k, (v, op) in values.items()}
