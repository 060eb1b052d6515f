"""Calibrating when the model may decide alone, on the `calib` split, once per retrain.

One temperature (mmcore.selective.scaling) is fitted by likelihood on records the guarantees do not use:
the val split (`selective.scaling_split: val`, the default: it only early-stopped training), or
`scaling_share` of the calib shipments (`calib`: cut by shipment, so the parts are independent). The calib
records left, scored with the scaled probabilities, give everything that carries a guarantee. On the
default data, half of calib (~200 records) is too few to certify 0.94 at delta 0.1 for half the answers
(measured on val: 0.50 or 0 automation, by luck of the split; all of calib: 0.62), hence val.

What travels with a model version in `selective.json` (JSON, no pickle):

- `temperature`: applied by every predictor after its softmax (torch, ONNX Runtime, evaluation).
- `set_quantile`: MAPIE's `SplitConformalClassifier` (LAC score 1 - p_true, prefit) at `alpha`. A class
  is in an answer's set when 1 - p_class <= set_quantile; over exchangeable records the set holds the
  observed class with probability >= 1 - alpha. An empty set is never served (mmcore.selective.decide).
- `confidence_thresholds`, per class: Learn then Test for the precision of automatic decisions
  against observed labels, `min_auto_precision`, with confidence 1 - delta. Pooled (one threshold, all
  automatic decisions together) until the second part holds `per_class_min_records` records of every
  class; then per class, one-vs-rest, delta / K each. Fixed-sequence testing over GRID from the most
  conservative threshold down, starting where the test has power (`start_support`), stopping at the
  first threshold it cannot certify. None when nothing is certified: those answers go to review, and
  `info["why_uncertified"]` says why (the train stage prints it and writes it to reports/train.json).
- `disagreement_threshold`: the conformal (1 - max_clean_flag_rate) quantile of the modalities'
  disagreement (`selective.detector`) on all calib records with two or more modalities (it does not
  depend on the temperature): a clean record is flagged with probability at most max_clean_flag_rate.

Why not MAPIE's `MultiClassificationLTTController` here: its fixed-sequence testing picks the direction
from the empirical risk curve, and a grid point with no predictions scores risk 1, so the search began at
the least precise threshold and stopped at its first failure (STACK-NOTES, "Checked 2026-12-07"). The
p-value is the one MAPIE's `compute_hoeffding_bentkus_p_value(binary=True)` computes for a 0/1 loss
(the exact binomial tail, LTT §3.2), taken from scipy without its float round trip.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmcore.config import CLASSES, SelectiveConfig
from mmcore.selective.scaling import apply_temperature, fit_temperature

FILE = "selective.json"
GRID = np.round(1 - np.geomspace(0.5, 1e-4, 121), 6)   # top-class probabilities 0.5 .. 0.9999, finer near 1
MIN_SCALING_RECORDS = 50       # fewer records to fit it on: no temperature is fitted (T = 1)
START_POWER = 0.7              # the fixed sequence starts where a noise-only model passes this often


@dataclass(frozen=True)
class Calibration:
    """What serving needs to turn the model's probabilities into scaled ones, a set and a decision."""

    alpha: float
    set_quantile: float
    confidence_thresholds: dict[str, float | None]
    disagreement_threshold: float | None
    min_auto_precision: float
    delta: float
    detector: str = "leave_one_out"
    temperature: float = 1.0       # a calibration written before scaling existed loads unscaled
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, model_dir: Path) -> "Calibration | None":
        """None for a model registered before calibration existed: its answers all go to review."""
        path = Path(model_dir) / FILE
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def scale(probs: np.ndarray, cal: Calibration | None) -> np.ndarray:
    """The probabilities a model version serves: its calibration's temperature applied (none: unchanged)."""
    return probs if cal is None else apply_temperature(probs, cal.temperature)


def _passthrough(n_classes: int) -> Any:
    """A fitted scikit-learn classifier whose input already is the probabilities (MAPIE's prefit mode)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Probabilities(ClassifierMixin, BaseEstimator):
        def fit(self, X: np.ndarray, y: Any = None) -> "Probabilities":
            self.classes_ = np.arange(n_classes)
            return self

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            return np.asarray(X, dtype=np.float64)

        def predict(self, X: np.ndarray) -> np.ndarray:
            return np.asarray(X).argmax(1)

    return Probabilities().fit(np.zeros((1, n_classes)))


def conformal_sets(probs: np.ndarray, y: np.ndarray, alpha: float) -> Any:
    """MAPIE's split-conformal classifier calibrated on (probs, y); `.predict_set` gives MAPIE's sets."""
    from mapie.classification import SplitConformalClassifier

    scc = SplitConformalClassifier(estimator=_passthrough(probs.shape[1]), confidence_level=1 - alpha,
                                   conformity_score="lac", prefit=True)
    return scc.conformalize(probs, y)


def set_quantile(probs: np.ndarray, y: np.ndarray, alpha: float) -> float:
    scc = conformal_sets(probs, y, alpha)
    score_fn = scc._mapie_classifier.conformity_score_function_
    q = float(np.asarray(score_fn.get_conformity_score_quantiles(
        scc.conformity_scores, np.array([alpha]), cv="prefit")).ravel()[0])
    return min(q, 1.0)     # too few records for the level: every class is in every set


def lower_bound(right: int, n: int, delta: float) -> float | None:
    """One-sided Clopper-Pearson bound: the precision is at least this with confidence 1 - delta."""
    from scipy.stats import beta

    return None if n == 0 else float(beta.ppf(delta, right, n - right + 1)) if right else 0.0


@functools.lru_cache(maxsize=64)
def start_support(target: float, delta: float, label_noise: float) -> int | None:
    """Automatic decisions the first tested threshold needs: the fewest with which a model whose only errors
    are the labels' noise is certified with probability START_POWER. Thresholds with less support are not
    tested: the test has little power there, and a fixed sequence stops at its first failure (at 50 % power
    it stopped at the top on the default data's calib split). None: the target is above 1 - noise."""
    from scipy.stats import binom

    if label_noise >= 1 - target:
        return None
    n = np.arange(1, 20001)
    k = binom.ppf(delta, n, 1 - target)                      # most errors that still certify, per n
    k = np.where(binom.cdf(k, n, 1 - target) <= delta, k, k - 1)
    ok = np.flatnonzero((k >= 0) & (binom.cdf(k, n, label_noise) >= START_POWER))
    return int(n[ok[0]]) if ok.size else None


def fixed_sequence(top: np.ndarray, right: np.ndarray, target: float, delta: float,
                   support: int | None) -> dict[str, Any]:
    """Learn then Test down GRID from its top: the lowest threshold before the first one whose precision
    (share of `right` among records with `top` >= it) cannot be certified >= target at level delta."""
    from scipy.stats import binom

    out: dict[str, Any] = {"threshold": None, "tested": 0, "start_support": support}
    for t in GRID[::-1] if support else ():
        auto = top >= t
        n = int(auto.sum())
        if n < support:
            continue
        k = int(right[auto].sum())
        p_value = float(binom.cdf(n - k, n, 1 - target))
        out["tested"] += 1
        if p_value > delta:
            out["stopped_at"] = {"threshold": float(t), "n": n, "precision": k / n, "p_value": p_value}
            break
        out.update(threshold=float(t), n=n, precision=k / n, p_value=p_value, lower_bound=lower_bound(k, n, delta))
    if out["threshold"] is None:
        out["why"] = _why(out, len(top), target, delta)
    return out


def _why(out: dict[str, Any], records: int, target: float, delta: float) -> str:
    if out["start_support"] is None:
        return f"precision {target} is above what the assumed label noise lets observed labels show"
    if "stopped_at" not in out:
        return (f"{records} calib records: fewer than the {out['start_support']} automatic decisions the first "
                "tested threshold needs")
    s = out["stopped_at"]
    return (f"the most conservative threshold with support, {s['threshold']} ({s['n']} decisions, precision "
            f"{s['precision']:.3f}), is not certified at {target} (p-value {s['p_value']:.3f} > delta {delta})")


def confidence_thresholds(probs: np.ndarray, y: np.ndarray, cfg: SelectiveConfig,
                          labels: tuple[str, ...]) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Pooled, or per class once every class has `per_class_min_records` records; and what was certified."""
    k, top, pred = len(labels), probs.max(1), probs.argmax(1)
    counts = np.bincount(y, minlength=k)
    if counts.min() >= cfg.per_class_min_records:
        support = start_support(cfg.min_auto_precision, cfg.delta / k, cfg.label_noise)
        tests = {c: fixed_sequence(top[pred == i], y[pred == i] == i, cfg.min_auto_precision, cfg.delta / k, support)
                 for i, c in enumerate(labels)}
        return {c: t["threshold"] for c, t in tests.items()}, {"mode": "per_class", "tests": tests}
    support = start_support(cfg.min_auto_precision, cfg.delta, cfg.label_noise)
    test = fixed_sequence(top, pred == y, cfg.min_auto_precision, cfg.delta, support)
    return dict.fromkeys(labels, test["threshold"]), {"mode": "pooled", "tests": {"pooled": test}}


def precision_thresholds(probs: np.ndarray, y: np.ndarray, target: float, delta: float,
                         label_noise: float = 0.0) -> list[float | None]:
    """Per class (one-vs-rest, delta / K each), the threshold certified for `target`, or None."""
    cfg = SelectiveConfig(min_auto_precision=target, delta=delta, label_noise=label_noise, per_class_min_records=0)
    return list(confidence_thresholds(probs, y, cfg, tuple(str(i) for i in range(probs.shape[1])))[0].values())


def scaling_part(groups: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """Which records fit the temperature: `share` of the shipments, drawn with a fixed seed."""
    shipments = np.unique(groups)
    chosen = np.random.default_rng(seed).permutation(shipments)[:int(round(len(shipments) * share))]
    return np.isin(groups, chosen)


def disagreement_threshold(disagreement: np.ndarray, multimodal: np.ndarray, flag_rate: float) -> float | None:
    clean = np.sort(disagreement[multimodal])
    rank = int(np.ceil((clean.size + 1) * (1 - flag_rate)))      # split-conformal order statistic
    return float(clean[rank - 1]) if 20 <= clean.size and rank <= clean.size else None


def calibrate(probs: np.ndarray, y: np.ndarray, disagreement: np.ndarray, multimodal: np.ndarray,
              cfg: SelectiveConfig, labels: tuple[str, ...] = CLASSES, shipments: np.ndarray | None = None,
              scaling: tuple[np.ndarray, np.ndarray] | None = None) -> Calibration:
    """Fit the temperature on `scaling` (the val split's probabilities and labels: `selective.scaling_split:
    val`) and everything else on all of calib; or, without `scaling`, on `scaling_share` of the calib
    shipments (each record its own shipment when `shipments` is None) and everything else on the rest.
    `disagreement` is scored on records with two or more modalities present (`multimodal`)."""
    fit = scaling_part(np.arange(len(y)) if shipments is None else np.asarray(shipments), cfg.scaling_share)
    if scaling is not None or fit.sum() < MIN_SCALING_RECORDS:
        fit[:] = False       # fitted elsewhere, or nothing to fit on: every calib record calibrates the rest
    on = scaling if scaling is not None else (probs[fit], y[fit])
    temperature = fit_temperature(*on) if len(on[1]) >= MIN_SCALING_RECORDS else 1.0
    scaled, yr = apply_temperature(probs[~fit], temperature), y[~fit]
    thresholds, tests = confidence_thresholds(scaled, yr, cfg, labels)
    why = {name: t["why"] for name, t in tests["tests"].items() if t["threshold"] is None}
    info = {"records": int(len(y)), "scaling_records": int(len(on[1])), "threshold_records": int(len(yr)),
            "scaling_split": "val" if scaling is not None else "calib",
            "calib_records_per_class": dict(zip(labels, np.bincount(yr, minlength=len(labels)).tolist())),
            "per_class_min_records": cfg.per_class_min_records, "label_noise": cfg.label_noise,
            "certified": [c for c, t in thresholds.items() if t is not None], "why_uncertified": why,
            "multimodal_records": int(multimodal.sum()), "library": _mapie_version(), **tests}
    return Calibration(cfg.alpha, set_quantile(scaled, yr, cfg.alpha), thresholds,
                       disagreement_threshold(disagreement, multimodal, cfg.max_clean_flag_rate),
                       cfg.min_auto_precision, cfg.delta, cfg.detector, temperature, info)


def _mapie_version() -> str:
    from importlib.metadata import version

    return f"mapie {version('mapie')}"
