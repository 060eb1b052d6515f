"""Paired bootstrap of the challenger against the champion on the gate set, resampled by shipment.

Records of one shipment are not independent draws (one parcel, one history, photos that look
alike), so resampling records would make the intervals too narrow. The bootstrap draws
shipments with replacement and every record of a drawn shipment comes along: a draw is a
(B, N) matrix of record weights (how often each record's shipment was drawn). One draw serves
every figure, so the overall macro-F1 gain, each class's F1 drop and each slice's macro-F1 drop
are all measured on the same resampled gate sets, and both models are scored on the same
records in every round (record difficulty cancels).

Besides macro-F1 (hard labels), the same rounds give the gain on two proper scoring rules of the
records' probabilities (log-loss, Brier): every record counts with its whole probability vector, so
a real improvement shows with far fewer shipments than in macro-F1 (the gate's superiority test).
The class and slice drops also get one simultaneous band (`family`): the bootstrap quantile of the
largest standardised deviation among them, so the gate's per-class and per-slice rules hold
together at the stated level instead of each at its own.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from mmcore.evaluate import class_f1, confusion


ROUNDS_PER_CHUNK = 100   # weights are (chunk, N): memory stays small on a gate set of 100,000 records
EPS = 1e-6               # log-loss floor on a probability: one confidently wrong record costs at most 13.8


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


def ece_classwise_interval(y: np.ndarray, probs: np.ndarray, shipments: np.ndarray, n_boot: int, seed: int,
                           ci: float, bins: int = 15) -> dict[str, float]:
    """Class-wise ECE (mmcore.evaluate.ece_classwise) with its shipment-bootstrap interval: the gate fails a
    model on calibration only when the whole interval lies above the limit, not on a point estimate that
    moves by about 0.004 between gate sets of the default size (gate benchmark). ECE is biased upward (every
    bin's |gap| counts its noise) and a resample, which repeats records, is more so: its percentiles sit above
    the observed value, so the interval is the basic (reverse-percentile) one, 2 x observed - percentile."""
    y, p = np.asarray(y), np.asarray(probs, dtype=np.float64)
    n, k = p.shape
    edges = np.linspace(0.0, 1.0, bins + 1)
    cells = []       # per class, (N, bins) one-hot of its probability's bin, times hit and times probability
    for c in range(k):
        which = np.clip(np.searchsorted(edges, p[:, c], side="left") - 1, 0, bins - 1)
        onehot = np.eye(bins)[which]
        cells.append((onehot * (y == c)[:, None], onehot * p[:, c][:, None]))

    def ece(w: np.ndarray) -> np.ndarray:
        total = np.maximum(w.sum(1), 1e-12)
        return np.mean([np.abs(w @ hit - w @ prob).sum(1) / total for hit, prob in cells], axis=0)

    rounds = np.concatenate([ece(w) for w in shipment_weights(shipments, n_boot, seed)]) if n else np.zeros(0)
    pct = interval(float(ece(np.ones((1, n)))[0]) if n else 0.0, rounds, ci)
    observed = pct["observed"]
    return {"observed": observed, "mean": pct["mean"], "low": max(0.0, 2 * observed - pct["high"]),
            "high": 2 * observed - pct["low"], "method": "basic", "n_boot": int(n_boot), "resampled_by": "shipment"}


def record_scores(y: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per record, the two proper scoring rules (lower is better): log-loss and Brier score."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(p.shape[1])[y]
    return {"log_loss": -np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0)),
            "brier": ((p - onehot) ** 2).sum(1)}


def _score_gains(y: np.ndarray, probs: tuple[np.ndarray, np.ndarray], shipments: np.ndarray, n_boot: int,
                 seed: int, ci: float) -> dict[str, Any]:
    """Per proper score: mean score(champion) - mean score(challenger) (positive: the challenger is better)."""
    new, old = record_scores(y, probs[0]), record_scores(y, probs[1])
    diff = {k: old[k] - new[k] for k in new}
    rounds: dict[str, list[np.ndarray]] = {k: [] for k in diff}
    for w in shipment_weights(shipments, n_boot, seed):
        total = np.maximum(w.sum(1), 1e-12)
        for k, d in diff.items():
            rounds[k].append(w @ d / total)
    return {k: {**interval(float(d.mean()) if len(d) else 0.0,
                           np.concatenate(rounds[k]) if rounds[k] else np.zeros(0), ci),
                "champion": float(old[k].mean()) if len(d) else None,
                "challenger": float(new[k].mean()) if len(d) else None}
            for k, d in diff.items()}


def family_band(drops: np.ndarray, observed: np.ndarray, ci: float) -> tuple[float, np.ndarray]:
    """One simultaneous lower band for several drops: (q, sd), each drop's low is observed - q * sd.

    q is the `1 - (1 - ci) / 2` quantile over rounds of the largest standardised excess
    (drop_b - observed) / sd among the members: all members' true drops lie above their lows together
    at that level (one-sided, as each single interval's low end is)."""
    sd = drops.std(0) if len(drops) else np.zeros(drops.shape[1])
    live = sd > 0
    if not live.any():
        return 0.0, sd
    z = ((drops[:, live] - observed[live]) / sd[live]).max(1)
    return float(np.quantile(z, 1 - (1 - ci) / 2)), sd


def paired_bootstrap(y: np.ndarray, pred_new: np.ndarray, pred_old: np.ndarray, shipments: np.ndarray,
                     labels: list[str], slices: dict[str, np.ndarray], n_boot: int, seed: int,
                     ci: float = 0.95, probs: tuple[np.ndarray, np.ndarray] | None = None,
                     family_min_shipments: int = 30) -> dict[str, Any]:
    """Challenger (`new`) against champion (`old`): the macro-F1 gain, and per class and per slice the drop.

    Top level: macro-F1(new) - macro-F1(old) (`observed`, `mean`, `low`, `high`). `classes[c]`:
    F1(old) - F1(new) of class c. `slices[name]`: macro-F1(old) - macro-F1(new) over the records of
    the slice, averaged over the classes present in the slice's labels (the same set for both models).
    A drop's `low` is its own interval's; `simultaneous_low` holds for every class and every slice of
    at least `family_min_shipments` shipments together (`family`). `probs` (challenger's, champion's):
    adds `scores`, the gain in log-loss and Brier score on the same rounds."""
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
    ships = np.asarray(shipments).astype(str)
    for name, sel in masks.items():
        present = np.unique(y[sel])
        obs = (class_f1(confusion(y[sel], old[sel], n))[present].mean()
               - class_f1(confusion(y[sel], new[sel], n))[present].mean())
        drops = np.concatenate(rounds[name])[:, 0] if rounds[name] else np.zeros(0)
        out["slices"][name] = {**interval(obs, drops, ci), "n": int(sel.sum()),
                               "shipments": int(len(np.unique(ships[sel]))), "classes": [labels[i] for i in present],
                               "rounds": drops}
    add_family(out, per_class, family_min_shipments, ci)
    if probs is not None:
        out["scores"] = _score_gains(y, probs, shipments, n_boot, seed, ci)
    return out


def add_family(out: dict[str, Any], per_class: np.ndarray, min_shipments: int, ci: float) -> None:
    """`simultaneous_low` on every class and every slice of at least `min_shipments` shipments."""
    members = [("classes", c, per_class[:, i]) for i, c in enumerate(out["classes"])]
    members += [("slices", name, info.pop("rounds")) for name, info in out["slices"].items()]
    members = [m for m in members if m[0] == "classes" or out["slices"][m[1]]["shipments"] >= min_shipments]
    for info in out["slices"].values():
        info.pop("rounds", None)
    if not members or not len(members[0][2]):
        out["family"] = {"q": None, "members": len(members), "min_shipments": min_shipments}
        return
    drops = np.stack([m[2] for m in members], 1)
    observed = np.array([out[kind][name]["observed"] for kind, name, _ in members])
    q, sd = family_band(drops, observed, ci)
    for (kind, name, _), o, s in zip(members, observed, sd):
        out[kind][name].update(sd=float(s), simultaneous_low=float(o - q * s))
    out["family"] = {"q": q, "members": len(members), "min_shipments": min_shipments,
                     "level": 1 - (1 - ci) / 2, "sided": "one (lower bound of each drop)"}


def mean_interval(values: np.ndarray, shipments: np.ndarray, n_boot: int, seed: int, ci: float = 0.95
                  ) -> dict[str, float]:
    """Shipment-bootstrap interval of a per-record mean (e.g. prediction-set coverage)."""
    v = np.asarray(values, dtype=np.float64)
    rounds = [w @ v / np.maximum(w.sum(1), 1e-12) for w in shipment_weights(shipments, n_boot, seed)]
    return interval(float(v.mean()) if len(v) else 0.0, np.concatenate(rounds) if rounds else np.zeros(0), ci)
