"""Model selection: choices on the validation split only, the grid, and the docs' quality table from its report."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmcore.stages.common import GateSetAccess, split_records
from mmcore.sweep import as_overrides, grid, quality, render, selection_metric

SWEEP = {"metric": "best_val_macro_f1.fused", "date": "2026-12-02T10:00:00Z", "winner": {"model.fusion": "gated",
                                                                                           "train.lr": 0.004},
         "groups": {"a": {"winner": "s-a-1", "trials": [{"name": "s-a-1", "best_val_macro_f1": {"fused": 0.5}}]},
                    "b": {"winner": "s-b-0", "trials": [{"name": "s-b-0", "best_val_macro_f1": {
                        "fused": 0.91, "image": 0.7, "text": 0.6, "sensor": 0.72}}]}}}
METRICS = {"model_version": 3, "macro_f1": 0.9, "accuracy": 0.91, "ece": 0.05, "n": 600,
           "unimodal_macro_f1": {"image": 0.71, "text": 0.61, "sensor": 0.73}}
ABLATION = {"modality_removed": {"image": {"macro_f1": 0.8, "drop": 0.1}},
            "targets": {"fused_macro_f1": {"value": 0.9, "op": ">=", "target": 0.9, "met": True}}}


def test_a_selection_metric_must_be_a_validation_figure() -> None:
    assert selection_metric("best_val_macro_f1.fused") == "best_val_macro_f1.fused"
    for name in ("test_macro_f1", "macro_f1", "comparison.low"):
        with pytest.raises(GateSetAccess, match="val"):
            selection_metric(name)


def test_no_fitting_or_selecting_code_can_read_the_gate_set(tmp_path: Path) -> None:
    with pytest.raises(GateSetAccess, match="only the evaluate stage"):
        split_records(tmp_path / "raw", tmp_path / "splits.parquet", "test")


def test_grid_and_overrides() -> None:
    settings = grid({"model.fusion": ["concat", "gated"], "train.lr": [0.001, 0.002, 0.004]})
    assert len(settings) == 6 and settings[0] == {"model.fusion": "concat", "train.lr": 0.001}
    assert as_overrides(settings[-1]) == {"model": {"fusion": "gated"}, "train": {"lr": 0.004}}


def test_the_quality_table_is_rendered_from_the_winners_one_gate_set_score() -> None:
    params = {"model": {"fusion": "gated"}, "train": {"lr": 0.004}}
    q = quality(SWEEP, METRICS, ABLATION, params)
    assert q["val_macro_f1"]["fused"] == 0.91 and q["gate_set"]["macro_f1"] == 0.9
    table = render(q)
    assert "| fused (image + text + sensor) | 0.910 | 0.900 (accuracy 0.910, ECE 0.050) |" in table
    assert "| sensor only | 0.720 | 0.730 |" in table and "`model.fusion: gated`" in table
    assert q["machine"]["cpus"] and "python -m mmcore.sweep quality" in q["commands"]
    with pytest.raises(ValueError, match="differs from the sweep's winner"):
        quality(SWEEP, METRICS, ABLATION, {"model": {"fusion": "concat"}, "train": {"lr": 0.004}})


def test_the_docs_quality_table_is_what_the_committed_report_renders_to() -> None:
    """No figure typed by hand: the model page asks for the table, and the site renders reports/quality.json."""
    import json

    from mmcore.docs_gen import render_page

    root = Path(__file__).resolve().parents[2]
    q = json.loads((root / "reports" / "quality.json").read_text())
    page = (root / "docs" / "model.md").read_text()
    assert "<!-- docs: figure quality -->" in page and f"{q['gate_set']['macro_f1']:.3f}" not in page
    assert render(q) in render_page(page, root, "model.md")
