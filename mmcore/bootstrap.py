"""Paired bootstrap of the challenger against the champion on the gate set, resampled by shipment.

Records of one shipment are not independent draws (one parcel, one history, photos that look
alike), so resampling records would make the intervals too narrow. The bootstrap draws
shipments with replacement and every record of a drawn shipment comes along: a draw is a
(B, N) matrix of record weights (how often each record's shipment was drawn). One draw serves
every figure, so the overall macro-F1 gain, each class's F1 drop and each slice's macro-F1 drop
are all measured on the same resampled gate sets, and both models are scored on the same
records in every round (record difficulty cancels).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from mmcore.evaluate import class_f1, confusion


ROUNDS_PER_CHUNK = 100   # weights are (chunk, N): memory stays small on a gate set of 100,000 records


def shipment_weights(shipments: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of (rounds, N) weights: how many times each record's shipment was drawn in each round."""
    _, inverse = np.unique(np.asarray(shipments).astype(str), return_inverse=True)
    n_ship = int(inverse.max()) + 1 if len(inverse) else 0
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, ROUNDS_PER_CHUNK):
        rounds = min(ROUNDS_PER_CHUNK, n_boot - start)
        if n_ship == 0:
            yield np.zeros((rounds, 0))
            continue
        counts = rng.multinomial(n_ship, np.full(n_ship, 1 / n_ship), size=rounds)
        yield counts[:, inverse].astype(np.float64)


def pair_onehot(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(N, n*n) one-hot of each record's (label, prediction) cell of the confusion matrix."""
    pairs = np.zeros((len(y), n * n))
    pairs[np.arange(len(y)), np.asarray(y) * n + np.asarray(pred)] = 1.0
    return pairs


def weighted_f1(weights: np.ndarray, pairs: np.ndarray, n: int) -> np.ndarray:
    """(B, n) per-class F1 of each round: its confusion matrix counts each record `weight` times."""
    return class_f1((weights @ pairs).reshape(len(weights), n, n))


def interval(observed: float, rounds: np.ndarray, ci: float) -> dict[str, float]:
    tail = (1 - ci) / 2 * 100
    low, high = np.percentile(rounds, [tail, 100 - tail]) if len(rounds) else (observed, observed)
    return {"observed": float(observed), "mean": float(np.mean(rounds)) if len(rounds) else float(observed),
            "low": float(low), "high": float(high)}


def paired_bootstrap(y: np.ndarray, pred_new: np.ndarray, pred_old: np.ndarray, shipments: np.ndarray,
                     labels: list[str], slices: dict[str, np.ndarray], n_boot: int, seed: int,
                     ci: float = 0.95) -> dict[str, Any]:
    """Challenger (`new`) against champion (`old`): the macro-F1 gain, and per class and per slice the drop.

    Top level: macro-F1(new) - macro-F1(old) (`observed`, `mean`, `low`, `high`). `classes[c]`:
    F1(old) - F1(new) of class c. `slices[name]`: macro-F1(old) - macro-F1(new) over the records of
    the slice, averaged over the classes present in the slice's labels (the same set for both models).
    A drop's `low` is what the gate reads: the drop is at least that, at level `ci`."""
    y, new, old = (np.asarray(v, dtype=np.int64) for v in (y, pred_new, pred_old))
    n = len(labels)
    p_new, p_old = pair_onehot(y, new, n), pair_onehot(y, old, n)
    masks = {name: np.asarray(sel, bool) for name, sel in slices.items() if np.asarray(sel, bool).any()}
    rounds: dict[str, list[np.ndarray]] = {key: [] for key in ["*", *masks]}   # (chunk, n) F1(old) - F1(new)
    gain: list[np.ndarray] = []
    for w in shipment_weights(shipments, n_boot, seed):
        f_new, f_old = weighted_f1(w, p_new, n), weighted_f1(w, p_old, n)
        gain.append(f_new.mean(1) - f_old.mean(1))
        rounds["*"].append(f_old - f_new)
        for name, sel in masks.items():
            present = np.unique(y[sel])
            sw = w * sel[None, :]
            rounds[name].append(weighted_f1(sw, p_old, n)[:, present].mean(1, keepdims=True)
                                - weighted_f1(sw, p_new, n)[:, present].mean(1, keepdims=True))
    o_new, o_old = class_f1(confusion(y, new, n)), class_f1(confusion(y, old, n))
    per_class = np.concatenate(rounds["*"]) if gain else np.zeros((0, n))
    out: dict[str, Any] = {
        **interval(o_new.mean() - o_old.mean(), np.concatenate(gain) if gain else np.zeros(0), ci),
        "ci": ci, "n_boot": int(n_boot), "seed": int(seed), "resampled_by": "shipment",
        "shipments": int(len(np.unique(np.asarray(shipments).astype(str)))),
        "classes": {c: interval(o_old[i] - o_new[i], per_class[:, i], ci) for i, c in enumerate(labels)},
        "slices": {}}
    for name, sel in masks.items():
        present = np.unique(y[sel])
        obs = (class_f1(confusion(y[sel], old[sel], n))[present].mean()
               - class_f1(confusion(y[sel], new[sel], n))[present].mean())
        drops = np.concatenate(rounds[name])[:, 0] if rounds[name] else np.zeros(0)
        out["slices"][name] = {**interval(obs, drops, ci), "n": int(sel.sum()),
                               "classes": [labels[i] for i in present]}
    return out
