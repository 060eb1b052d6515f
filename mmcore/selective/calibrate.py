"""Calibrating when the model may decide alone, on the `calib` split, once per retrain (MAPIE 1.x).

Three numbers travel with a model version in `selective.json` (JSON, no pickle):

- `set_quantile`: MAPIE's `SplitConformalClassifier` (LAC score 1 - p_true, the model's own
  probabilities, no refit) at `alpha`. A class is in an answer's prediction set when
  1 - p_class <= set_quantile; over exchangeable records the set holds the true class with
  probability >= 1 - alpha.
- `confidence_thresholds`, per class: MAPIE's `MultiClassificationLTTController` (Learn then Test)
  with that class's one-vs-rest precision risk and fixed-sequence testing over GRID: the smallest
  top-class probability at which automatic decisions of the class are right at least
  `min_auto_precision` of the time, with confidence 1 - delta for all classes at once (delta / K
  each). None for a class when no threshold can be certified with the calibration records at hand:
  then that class is never decided automatically (the review queue's labels grow the calib split).
- `disagreement_threshold`: the conformal (1 - max_clean_flag_rate) quantile of the modalities'
  disagreement (`selective.detector`) on calibration records with two or more modalities: a clean
  record from the same distribution is flagged with probability at most max_clean_flag_rate.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmcore.config import CLASSES, SelectiveConfig

FILE = "selective.json"
GRID = np.round(np.linspace(0.5, 0.99, 50), 4)   # top-class probabilities the threshold is chosen among


@dataclass(frozen=True)
class Calibration:
    """What serving needs to turn probabilities into a set and a decision."""

    alpha: float
    set_quantile: float
    confidence_thresholds: dict[str, float | None]
    disagreement_threshold: float | None
    min_auto_precision: float
    delta: float
    detector: str = "leave_one_out"
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


def precision_thresholds(probs: np.ndarray, y: np.ndarray, target: float, delta: float) -> list[float | None]:
    """Learn then Test over GRID, per class: the threshold MAPIE certifies for its precision, or None."""
    from mapie.risk_control import MultiClassificationLTTController
    from mapie.risk_control.risks import build_precision_ovr

    k, out = probs.shape[1], []
    for c in range(k):
        ctrl = MultiClassificationLTTController(
            predict_function=lambda x: np.asarray(x, dtype=np.float64), risks=build_precision_ovr([c]),
            target_level=[target], confidence_level=1 - delta / k, list_predict_params=GRID,
            classes=np.arange(k), fwer_method="fixed_sequence")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctrl.calibrate(probs, y)
        valid = np.asarray(ctrl.valid_predict_params, dtype=np.float64).ravel()
        out.append(float(valid.min()) if valid.size else None)
    return out


def needed_records(target: float, delta: float, k: int = 5) -> int:
    """Error-free automatic decisions a class needs before any threshold can be certified for it:
    Hoeffding-Bentkus (MAPIE's p-value) at its best, e * target**n <= delta / k."""
    return int(np.ceil(np.log(delta / (k * np.e)) / np.log(target)))


def calibrate(probs: np.ndarray, y: np.ndarray, disagreement: np.ndarray, multimodal: np.ndarray,
              cfg: SelectiveConfig, labels: tuple[str, ...] = CLASSES) -> Calibration:
    """Fit the three numbers on the calib split; `disagreement` is scored on records with two or more
    modalities present (`multimodal`)."""
    scc = conformal_sets(probs, y, cfg.alpha)
    score_fn = scc._mapie_classifier.conformity_score_function_
    quantile = float(np.asarray(score_fn.get_conformity_score_quantiles(
        scc.conformity_scores, np.array([cfg.alpha]), cv="prefit")).ravel()[0])
    quantile = min(quantile, 1.0)     # too few records for the level: every class is in every set
    thresholds = dict(zip(labels, precision_thresholds(probs, y, cfg.min_auto_precision, cfg.delta)))
    clean = np.sort(disagreement[multimodal])
    rank = int(np.ceil((clean.size + 1) * (1 - cfg.max_clean_flag_rate)))      # split-conformal order statistic
    dis = float(clean[rank - 1]) if 20 <= clean.size and rank <= clean.size else None
    pred = probs.argmax(1)
    per_class = {int(c): int((pred == c).sum()) for c in range(probs.shape[1])}
    info = {"records": int(len(y)), "predicted_per_class": per_class,
            "certified": [c for c, t in thresholds.items() if t is not None],
            "needed_per_class": needed_records(cfg.min_auto_precision, cfg.delta, len(labels)),
            "multimodal_records": int(multimodal.sum()), "library": _mapie_version()}
    return Calibration(cfg.alpha, quantile, thresholds, dis, cfg.min_auto_precision, cfg.delta, cfg.detector, info)


def _mapie_version() -> str:
    from importlib.metadata import version

    return f"mapie {version('mapie')}"
