"""Gate rules: a floor for the first model, a strict improvement over an existing champion."""
from __future__ import annotations

from mmcore.config import GateConfig
from mmcore.gate import decide

CFG = GateConfig(min_macro_f1=0.6, min_delta=0.0)


def test_first_model_passes_on_floor_alone() -> None:
    assert decide({"macro_f1": 0.7, "champion": None}, CFG)[0]
    assert not decide({"macro_f1": 0.5, "champion": None}, CFG)[0]


def test_identical_or_worse_challenger_is_not_promoted() -> None:
    same = {"macro_f1": 0.8, "champion": {"version": 1, "macro_f1": 0.8}}
    worse = {"macro_f1": 0.75, "champion": {"version": 1, "macro_f1": 0.8}}
    better = {"macro_f1": 0.85, "champion": {"version": 1, "macro_f1": 0.8}}
    assert not decide(same, CFG)[0] and not decide(worse, CFG)[0] and decide(better, CFG)[0]
    ok, rules = decide(worse, CFG)
    assert [r["rule"] for r in rules if not r["passed"]] == ["min_delta_vs_champion"]
