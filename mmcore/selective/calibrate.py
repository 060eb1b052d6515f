"""Calibrating when the model may decide alone, on the `calib` split, once per retrain (MAPIE 1.x).

Three numbers travel with a model version in `selective.json` (JSON, no pickle):

- `set_quantile`: MAPIE's `SplitConformalClassifier` (LAC score 1 - p_true, the model's own
  probabilities, no refit) at `alpha`. A class is in an answer's prediction set when
  1 - p_class <= set_quantile; over exchangeable records the set holds the true class with
  probability >= 1 - alpha.
- `confidence_threshold`: MAPIE's `MultiClassificationLTTController` (Learn then Test) with one
  one-vs-rest precision risk per class: the smallest top-class probability at which the precision
  of automatic decisions of every class is >= `min_auto_precision` with confidence 1 - delta.
  None when no threshold on the grid can be certified with the calibration records at hand: then
  no answer is decided automatically (the review queue's labels grow the calibration split).
- `disagreement_threshold`: the (1 - max_clean_flag_rate) quantile of the unimodal models'
  disagreement on calibration records, so about that share of clean records is flagged.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmcore.config import SelectiveConfig

FILE = "selective.json"
GRID = np.round(np.linspace(0.5, 0.99, 50), 4)   # top-class probabilities the threshold is chosen among


@dataclass(frozen=True)
class Calibration:
    """What serving needs to turn probabilities into a set and a decision."""

    alpha: float
    set_quantile: float
    confidence_threshold: float | None
    disagreement_threshold: float | None
    min_auto_precision: float
    delta: float
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, model_dir: Path) -> "Calibration | None":
        """None for a model registered before calibration existed: its answers all go to review."""
        path = Path(model_dir) / FILE
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return scc.conformalize(probs, y)


def precision_threshold(probs: np.ndarray, y: np.ndarray, target: float, delta: float) -> float | None:
    """Learn then Test over GRID: the threshold MAPIE certifies for every class's precision, or None."""
    from mapie.risk_control import MultiClassificationLTTController
    from mapie.risk_control.risks import build_precision_ovr

    k = probs.shape[1]
    ctrl = MultiClassificationLTTController(
        predict_function=lambda x: np.asarray(x, dtype=np.float64), risks=build_precision_ovr(list(range(k))),
        target_level=[target] * k, confidence_level=1 - delta, list_predict_params=GRID, classes=np.arange(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl.calibrate(probs, y)
    valid = np.asarray(ctrl.valid_predict_params, dtype=np.float64).ravel()
    return float(valid.min()) if valid.size else None


def needed_records(target: float, delta: float) -> int:
    """Error-free automatic decisions a class needs before any threshold can be certified for it.

    Hoeffding-Bentkus (MAPIE's p-value) at its best: e * target**n <= delta / tests (Bonferroni-Holm
    over the classes and the grid's first threshold)."""
    tests = 5 * len(GRID)
    return int(np.ceil(np.log(delta / (tests * np.e)) / np.log(target)))


def calibrate(probs: np.ndarray, y: np.ndarray, disagreement: np.ndarray, multimodal: np.ndarray,
              cfg: SelectiveConfig) -> Calibration:
    """Fit the three numbers on the calib split; `disagreement` is scored on records with two or more
    modalities present (`multimodal`)."""
    scc = conformal_sets(probs, y, cfg.alpha)
    score_fn = scc._mapie_classifier.conformity_score_function_
    quantile = float(np.asarray(score_fn.get_conformity_score_quantiles(
        scc.conformity_scores, np.array([cfg.alpha]), cv="prefit")).ravel()[0])
    quantile = min(quantile, 1.0)     # too few records for the level: every class is in every set
    threshold = precision_threshold(probs, y, cfg.min_auto_precision, cfg.delta)
    clean = disagreement[multimodal]
    dis = float(np.quantile(clean, 1 - cfg.max_clean_flag_rate, method="higher")) if clean.size >= 20 else None
    pred = probs.argmax(1)
    per_class = {int(c): int((pred == c).sum()) for c in range(probs.shape[1])}
    info = {"records": int(len(y)), "predicted_per_class": per_class,
            "certified": threshold is not None, "needed_per_class": needed_records(cfg.min_auto_precision, cfg.delta),
            "multimodal_records": int(multimodal.sum()), "library": _mapie_version()}
    return Calibration(cfg.alpha, quantile, threshold, dis, cfg.min_auto_precision, cfg.delta, info)


def _mapie_version() -> str:
    from importlib.metadata import version

    return f"mapie {version('mapie')}"
