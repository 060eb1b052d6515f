"""Live and estimated quality of served answers (mmcore.monitor.quality): intervals that widen when
records come in shipments, an estimate that tracks the truth when probabilities are calibrated,
and a label join that only counts labels from the feed."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from mmcore.config import CLASSES
from mmcore.evaluate import class_f1, confusion
from mmcore.monitor import quality

N = len(CLASSES)


def test_perfect_answers_have_a_degenerate_interval_at_one() -> None:
    y = np.arange(200) % N
    out = quality.live_quality(y, y, np.arange(200), list(CLASSES), n_boot=200, seed=0, ci=0.95)
    assert out["macro_f1"] == {"observed": 1.0, "mean": 1.0, "low": 1.0, "high": 1.0}
    assert out["accuracy"]["low"] == 1.0 and out["per_class"]["wet"]["n"] == 40


def test_interval_covers_the_observed_figure_and_widens_when_records_share_shipments() -> None:
    rng = np.random.default_rng(0)
    ship = np.repeat(np.arange(60), 10)               # 600 records in 60 shipments of 10
    y = rng.integers(0, N, 60)[ship]                   # a shipment's records share their class ...
    right = rng.random(60)[ship] < 0.7                 # ... and whether the model gets them right
    pred = np.where(right, y, (y + 1) % N)
    grouped = quality.live_quality(y, pred, ship, list(CLASSES), 1000, 0, 0.95)
    single = quality.live_quality(y, pred, np.arange(600), list(CLASSES), 1000, 0, 0.95)
    for out in (grouped, single):
        assert out["accuracy"]["low"] < out["accuracy"]["observed"] < out["accuracy"]["high"]
        assert out["macro_f1"]["low"] < out["macro_f1"]["observed"] < out["macro_f1"]["high"]
    width = {k: o["accuracy"]["high"] - o["accuracy"]["low"] for k, o in (("g", grouped), ("s", single))}
    assert width["g"] > 2 * width["s"], width
    assert grouped["accuracy"]["observed"] == pytest.approx(right.mean())


def test_macro_f1_counts_a_class_that_is_only_predicted_as_zero() -> None:
    y = np.array([0] * 50 + [1] * 50)
    pred = y.copy()
    pred[:5] = 4                                       # five normal parcels called tampered
    out = quality.live_quality(y, pred, np.arange(100), list(CLASSES), 100, 0, 0.95)
    expected = class_f1(confusion(y, pred, N))[[0, 1, 4]].mean()
    assert out["macro_f1"]["observed"] == pytest.approx(expected) and set(out["per_class"]) == {"normal", "damaged"}


def test_cbpe_tracks_the_truth_when_probabilities_are_calibrated() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.full(N, 0.4), size=6000)
    y = np.array([rng.choice(N, p=p) for p in probs])   # labels drawn from the probabilities: calibrated
    truth = class_f1(confusion(y, probs.argmax(1), N)).mean()
    est = quality.estimated_quality(probs, list(CLASSES))
    assert est["macro_f1"] == pytest.approx(truth, abs=0.02)
    assert est["accuracy"] == pytest.approx((y == probs.argmax(1)).mean(), abs=0.02)
    sure = quality.estimated_quality(np.eye(N)[np.arange(100) % N], list(CLASSES))
    assert sure["macro_f1"] == sure["accuracy"] == 1.0
    assert quality.estimated_quality(np.zeros((0, N)), list(CLASSES))["macro_f1"] is None


def test_class_mix_distance_and_confidence_histogram() -> None:
    same = quality.class_mix(np.arange(100) % N, np.arange(50) % N, list(CLASSES))
    assert same["distance"] == 0.0 and same["window"]["normal"] == 0.2
    assert quality.class_mix(np.zeros(10, int), np.ones(10, int), list(CLASSES))["distance"] == 1.0
    hist = quality.confidence_histogram(np.array([0.25, 0.95, 0.99, 1.0]))
    assert sum(hist["counts"]) == 4 and hist["counts"][-1] == 3 and hist["counts"][2] == 1


def line(pid: str, probs: list[float], version: str = "2", **extra) -> dict:
    return {"prediction_id": pid, "model_version": version, "hub": "SHA01", "shipment_id": "s1",
            "answered_at": datetime(2026, 12, 1, 10, tzinfo=timezone.utc).isoformat(), "x_request_id": "r1",
            **{f"p_{c}": p for c, p in zip(CLASSES, probs)}, **extra}


def test_predictions_and_the_label_join_count_only_feed_labels() -> None:
    lines = [line("a", [0.9, 0.1, 0, 0, 0]), line("b", [0.2, 0.8, 0, 0, 0]), line("b", [0.2, 0.8, 0, 0, 0]),
             line("c", [0.1, 0.1, 0.8, 0, 0]), {**line("d", [1, 0, 0, 0, 0]), "p_tampered": None}]
    preds = quality.predictions(lines, list(CLASSES))
    assert preds["prediction_id"].tolist() == ["a", "b", "c"]   # the duplicate and the broken line left out
    assert preds["predicted"].tolist() == [0, 1, 2] and preds["confidence"].tolist() == [0.9, 0.8, 0.8]
    profile = pd.DataFrame({"record_id": ["cap-a", "cap-b", "cap-c", "x"], "prediction_id": ["a", "b", "c", None],
                            "label": ["normal", "wet", None, "wet"], "label_source": ["inspection", "landing", None, "claim"],
                            "labelled_at": ["t", "t", None, "t"], "shipment_id": ["s1", "s2", "s3", "s4"],
                            "hub": ["H", "H", "H", "H"]})
    joined = quality.labelled_answers(profile, preds, list(CLASSES))
    assert joined["prediction_id"].tolist() == ["a"] and joined["y"].tolist() == [0]
