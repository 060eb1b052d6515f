"""Live quality per label source (mmcore.monitor.window.quality_section): review labels are the
champion's hard cases, so they are reported apart and kept out of the live figure the live_drop
trigger compares with the gate set's."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from mmcore.config import CLASSES, load_params
from mmcore.monitor.window import quality_section
from tests.conftest import ROOT


def test_live_quality_is_reported_per_source_and_review_labels_stay_out_of_the_live_figure() -> None:
    p = load_params(ROOT / "params.yaml")
    p = dataclasses.replace(p, monitor=dataclasses.replace(p.monitor, min_live_labels=20, n_boot=50))
    n, rng = 120, np.random.default_rng(0)
    truth = rng.integers(0, len(CLASSES), n)
    source = np.array(["inspection", "claim", "review"])[np.arange(n) % 3]
    predicted = np.where(source == "review", (truth + 1) % len(CLASSES), truth)   # the model is wrong on review
    probs = np.eye(len(CLASSES))[predicted] * 0.9 + 0.02
    preds = pd.DataFrame({"prediction_id": [f"p{i}" for i in range(n)], "model_version": "2",
                          **{f"p_{c}": probs[:, k] for k, c in enumerate(CLASSES)},
                          "hub": "SHA01", "shipment_id": [f"S{i}" for i in range(n)]})
    preds["predicted"] = predicted
    profile = pd.DataFrame({"record_id": [f"cap-p{i}" for i in range(n)], "prediction_id": preds["prediction_id"],
                            "label": [CLASSES[k] for k in truth], "label_source": source,
                            "shipment_id": [f"S{i}" for i in range(n)], "hub": "SHA01",
                            "labelled_at": "2026-12-01T00:00:00+00:00"})
    out = quality_section(profile, preds, {}, p, seed=0)
    v2 = out["versions"]["2"]
    assert out["labelled_answers"] == n == out["labels_joined"] and v2["n"] == n
    assert {s: e["n"] for s, e in v2["sources"].items()} == {"inspection": 40, "claim": 40, "review": 40}
    assert v2["sources"]["review"]["accuracy"]["observed"] == 0.0
    assert v2["sources"]["inspection"]["accuracy"]["observed"] == 1.0
    assert v2["live"]["n"] == 80 and v2["live"]["accuracy"]["observed"] == 1.0   # inspections and claims only
