"""Scores of a model on labelled records: the numbers the gate and the reports use.

Pure functions over labels, predictions and probabilities (plus two small helpers
that run a model on a `Batch`), so each can be tested alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from mmcore.config import EvaluateConfig
from mmcore.model import MODALITIES, Batch


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


def class_f1(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 of one (C, C) or many (..., C, C) confusion matrices: 2tp / (2tp + fp + fn), 0 when undefined."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    denom = cm.sum(-1) + cm.sum(-2)           # (tp + fn) + (tp + fp)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> float:
    """Mean F1 over all n classes (an absent, never-predicted class counts as 0)."""
    return float(class_f1(confusion(y_true, y_pred, n)).mean())


def score(y_true: np.ndarray, probs: np.ndarray, labels: list[str], ece_bins: int = 15) -> dict[str, Any]:
    """macro-F1, accuracy, per-class precision/recall/F1/support, the confusion matrix and the ECE."""
    y_pred = probs.argmax(1)
    cm = confusion(y_true, y_pred, len(labels))
    classes = per_class(cm, labels)
    return {"macro_f1": float(np.mean([v["f1"] for v in classes.values()])),
            "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
            "n": int(len(y_true)), "per_class": classes, "confusion_matrix": cm.tolist(),
            "ece": ece(probs, y_true, ece_bins)}


# --- calibration -------------------------------------------------------------------------

def reliability(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> list[dict[str, Any]]:
    """Top-label reliability: per equal-width confidence bin, mean confidence, accuracy and count."""
    conf = probs.max(1) if len(probs) else np.zeros(0)
    correct = probs.argmax(1) == np.asarray(y_true) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi], first bin [0, hi]
    out = []
    for b in range(bins):
        sel = which == b
        k = int(sel.sum())
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": k,
                    "confidence": float(conf[sel].mean()) if k else None,
                    "accuracy": float(correct[sel].mean()) if k else None})
    return out


def ece(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: count-weighted mean |accuracy - confidence| over the reliability bins."""
    n = len(probs)
    if n == 0:
        return 0.0
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability(probs, y_true, bins) if b["count"]))


def ece_classwise(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """Class-wise ECE (Kull et al. 2019): per class, one-vs-rest, the count-weighted |observed frequency -
    mean probability| over equal-width bins of that class's probability; the mean over classes. Unlike the
    top-label ECE it also charges the probabilities of the classes not predicted, which the prediction
    sets read."""
    n, k = probs.shape if len(probs) else (0, 0)
    if n == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for c in range(k):
        p, hit = probs[:, c], np.asarray(y_true) == c
        which = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, bins - 1)
        count = np.bincount(which, minlength=bins)
        gap = np.abs(np.bincount(which, hit, bins) - np.bincount(which, p, bins))   # summed per bin
        out.append(float(gap[count > 0].sum() / n))
    return float(np.mean(out))


# --- slices and ablation -----------------------------------------------------------------

def slice_scores(y_true: np.ndarray, y_pred: np.ndarray, groups: dict[str, np.ndarray],
                 n_classes: int) -> dict[str, dict[str, Any]]:
    """macro-F1, accuracy and size of each named boolean slice of the records.

    A slice's macro-F1 averages over the classes present in its labels, so a small hub without
    `wet` parcels is not charged a zero for `wet`, and two models scored on one slice are averaged
    over the same classes. A slice holding exactly the records of an earlier one (by name order;
    `note_lang=empty` and `missing=text` often do) says so in `duplicate_of`."""
    out: dict[str, dict[str, Any]] = {}
    seen: dict[bytes, str] = {}
    for name in sorted(groups):
        sel = np.asarray(groups[name], bool)
        yt, yp = np.asarray(y_true)[sel], np.asarray(y_pred)[sel]
        present = np.unique(yt).astype(int)
        f1 = class_f1(confusion(yt, yp, n_classes))
        out[name] = {"macro_f1": float(f1[present].mean()) if len(present) else 0.0,
                     "accuracy": float((yt == yp).mean()) if len(yt) else 0.0, "n": int(sel.sum())}
        key = np.packbits(sel).tobytes() + len(sel).to_bytes(8, "little")
        if key in seen:
            out[name]["duplicate_of"] = seen[key]
        seen.setdefault(key, name)
    return out


def mask_modality(batch: Batch, modality: str) -> Batch:
    """The same batch with one modality marked absent: the model's learned missing embedding stands in."""
    mask = batch.mask.clone()
    mask[:, MODALITIES.index(modality)] = 0
    return dataclasses.replace(batch, mask=mask)


def model_probs(model: torch.nn.Module, batch: Batch) -> np.ndarray:
    """(N, C) class probabilities of a model on a prepared batch (eval mode, no grad)."""
    if model.training:  # `eval()` walks every submodule: a cost per call that serving pays per request
        model.eval()
    with torch.inference_mode():
        logits = model(batch)
    return torch.softmax(logits.float(), dim=-1).numpy()


def ablation(model: torch.nn.Module, batch: Batch, y_true: np.ndarray, n_classes: int) -> dict[str, float]:
    """macro-F1 with each modality masked at test time: `drop_image`, `drop_text`, `drop_sensor`."""
    return {f"drop_{m}": macro_f1(y_true, model_probs(model, mask_modality(batch, m)).argmax(1), n_classes)
            for m in MODALITIES}


def ablation_report(metrics: dict[str, Any], cfg: EvaluateConfig) -> dict[str, Any]:
    """The fused model against its unimodal baselines and against itself with a modality masked, with targets.

    Why both: the unimodal models say whether fusion earns its cost; the masked runs say
    whether the fused model survives a hub that stops sending one modality."""
    fused, uni = metrics["macro_f1"], metrics["unimodal_macro_f1"]
    best = max(uni, key=uni.get)
    removed = {m: {"macro_f1": metrics["ablation"][f"drop_{m}"], "drop": fused - metrics["ablation"][f"drop_{m}"]}
               for m in MODALITIES}
    worst = max(removed, key=lambda m: removed[m]["drop"])
    checks = {"fused_macro_f1": (fused, ">=", cfg.target_macro_f1),
              "margin_over_best_unimodal": (fused - uni[best], ">=", cfg.target_margin_over_unimodal),
              "max_modality_drop": (removed[worst]["drop"], "<=", cfg.target_max_modality_drop)}
    targets = {k: {"value": v, "op": op, "target": t, "met": bool(v >= t if op == ">=" else v <= t)}
               for k, (v, op, t) in checks.items()}
    return {"fused_macro_f1": fused, "unimodal_macro_f1": uni, "best_unimodal": best,
            "modality_removed": removed, "worst_modality_removed": worst, "targets": targets,
            "all_met": all(t["met"] for t in targets.values())}


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p95 in milliseconds of measured durations."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    if len(ms) == 0:
        return {"p50": 0.0, "p95": 0.0, "n": 0}
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "n": int(len(ms))}
