"""Estimates compared like with like: a window's CBPE against the same estimate on the gate set
(never the gate set's observed figure), and where labels have joined, the gap between a version's
estimate and its live figure on the same answers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mmcore.config import CLASSES, load_params
from mmcore.monitor import quality
from mmcore.monitor.window import answers_section, quality_section
from tests.conftest import ROOT

PARAMS = load_params(ROOT / "params.yaml")


def answers(n: int, version: str, seed: int, confident: float) -> pd.DataFrame:
    """Captured answers whose top class has probability `confident`, the rest spread evenly."""
    rng = np.random.default_rng(seed)
    top = rng.integers(0, len(CLASSES), n)
    probs = np.full((n, len(CLASSES)), (1 - confident) / (len(CLASSES) - 1))
    probs[np.arange(n), top] = confident
    lines = [{"prediction_id": f"{version}-{i}", "model_version": version, "hub": "AMS04", "shipment_id": f"s{i}",
              "answered_at": "2026-12-01T10:00:00+00:00", **{f"p_{c}": float(p) for c, p in zip(CLASSES, probs[i])}}
             for i in range(n)]
    return quality.predictions(lines, list(CLASSES))


def test_the_drop_is_against_the_gate_sets_estimate_not_its_observed_figure() -> None:
    preds = pd.concat([answers(300, "2", 0, 0.8), answers(300, "1", 1, 0.8)], ignore_index=True)
    gate = {"2": {"macro_f1": 0.95, "cbpe_macro_f1": 0.82}, "1": {"macro_f1": 0.95}}   # v1: evaluated before CBPE
    est = answers_section(preds, np.arange(100) % len(CLASSES), gate)["estimated"]
    v2 = est["2"]
    assert v2["gate_set_cbpe_macro_f1"] == 0.82 and v2["gate_set_macro_f1"] == 0.95
    assert v2["drop"] == round(0.82 - v2["macro_f1"], 4) and abs(v2["drop"]) < 0.1   # no alarm: like with like
    assert 0.95 - v2["macro_f1"] > 0.1            # against the observed figure it would have alarmed
    assert est["1"]["drop"] is None               # no gate-set estimate: no drop rather than a mixed one


def test_live_quality_reports_the_estimates_gap_on_the_same_answers() -> None:
    preds = answers(200, "2", 2, 0.9)             # the model says 90% sure ...
    truth = preds["predicted"].to_numpy().copy()
    truth[::2] = (truth[::2] + 1) % len(CLASSES)  # ... and is right half the time
    profile = pd.DataFrame({"prediction_id": preds["prediction_id"], "label": [CLASSES[k] for k in truth],
                            "label_source": "claim", "labelled_at": "2026-12-02T00:00:00+00:00",
                            "shipment_id": preds["shipment_id"], "hub": "AMS04"})
    entry = quality_section(profile, preds, {"2": {"macro_f1": 0.95}}, PARAMS, seed=0)["versions"]["2"]
    live = entry["live"]["macro_f1"]["observed"]
    assert entry["estimated_macro_f1"] > 0.85 and live < 0.6
    assert entry["estimate_gap"] == round(entry["estimated_macro_f1"] - live, 4) > 0.3
