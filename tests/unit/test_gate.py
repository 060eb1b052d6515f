"""Gate rules: floors and a latency budget for every model; against a champion, the bootstrap lower
bound of the macro-F1 gain, per-class and per-slice drops. Every rule reports value, limit, verdict."""
from __future__ import annotations

import copy
from typing import Any

from mmcore.config import CLASSES, GateConfig, load_params
from mmcore.gate import champion_rule, decide, reasons
from tests.conftest import ROOT

CFG = GateConfig(min_macro_f1=0.6, min_accuracy=0.6, min_class_f1=0.4, max_ece=0.15, max_latency_p95_ms=500,
                 min_delta=0.0, max_class_f1_drop=0.05, max_slice_f1_drop=0.10, min_slice_n=30)


def scores(f1: float = 0.8, **over: Any) -> dict[str, Any]:
    """A model's numbers as the evaluate stage writes them."""
    m = {"macro_f1": f1, "accuracy": f1, "ece": 0.05, "latency_ms": {"p50": 40.0, "p95": 90.0},
         "per_class": {c: {"f1": f1} for c in CLASSES},
         "slices": {"hub=SHA01": {"macro_f1": f1, "n": 100}, "missing=image": {"macro_f1": f1, "n": 12}}}
    m.update(over)
    return m


def with_champion(new: dict[str, Any], old: dict[str, Any], low: float, high: float = 0.05) -> dict[str, Any]:
    return {**new, "champion": {"version": 1, **old},
            "comparison": {"observed": (low + high) / 2, "mean": (low + high) / 2, "low": low, "high": high}}


def failed(metrics: dict[str, Any], cfg: GateConfig = CFG) -> list[str]:
    return [r["rule"] for r in decide(metrics, cfg)[1] if not r["passed"]]


def test_every_rule_has_value_limit_and_verdict() -> None:
    _, rules = decide(with_champion(scores(0.85), scores(0.8), low=0.01), CFG)
    assert {"min_macro_f1", "min_accuracy", "min_class_f1", "max_ece", "max_latency_p95_ms",
            "macro_f1_delta_ci_low", "class_f1_drop:wet", "slice_f1_drop:hub=SHA01"} <= {r["rule"] for r in rules}
    for r in rules:
        assert {"rule", "value", "limit", "passed"} <= set(r)
    assert len(reasons(rules)) == len(rules)


def test_first_model_is_judged_on_floors_and_latency_alone() -> None:
    promoted, rules = decide({**scores(0.7), "champion": None, "comparison": None}, CFG)
    assert promoted
    assert [r["rule"] for r in rules] == ["min_macro_f1", "min_accuracy", "min_class_f1", "max_ece",
                                          "max_latency_p95_ms"]
    assert failed({**scores(0.5), "champion": None}) == ["min_macro_f1", "min_accuracy"]


def test_floors_each_fail_on_their_own() -> None:
    weak_class = scores(0.8)
    weak_class["per_class"]["wet"] = {"f1": 0.3}
    assert failed(weak_class) == ["min_class_f1"]
    rule = next(r for r in decide(weak_class, CFG)[1] if r["rule"] == "min_class_f1")
    assert rule["worst_class"] == "wet" and rule["value"] == 0.3
    assert failed(scores(0.8, ece=0.2)) == ["max_ece"]


def test_latency_budget() -> None:
    assert failed(scores(0.8, latency_ms={"p50": 300.0, "p95": 800.0})) == ["max_latency_p95_ms"]
    assert failed(scores(0.8, latency_ms={"p50": 300.0, "p95": 500.0})) == []


def test_a_number_missing_from_the_report_fails_its_rule() -> None:
    m = scores(0.8)
    del m["latency_ms"], m["ece"]
    assert failed(m) == ["max_ece", "max_latency_p95_ms"]
    assert "missing" in " ".join(reasons(decide(m, CFG)[1]))
    no_comparison = with_champion(scores(0.9), scores(0.8), low=0.1)
    del no_comparison["comparison"]
    assert failed(no_comparison) == ["macro_f1_delta_ci_low"]


def test_bootstrap_lower_bound_must_exceed_min_delta() -> None:
    better = with_champion(scores(0.85), scores(0.8), low=0.01, high=0.09)
    unsure = with_champion(scores(0.85), scores(0.8), low=-0.01, high=0.11)   # better on average, not surely
    same = with_champion(scores(0.8), scores(0.8), low=0.0, high=0.0)
    assert decide(better, CFG)[0]
    assert failed(unsure) == ["macro_f1_delta_ci_low"] and failed(same) == ["macro_f1_delta_ci_low"]
    strict = GateConfig(**{**CFG.__dict__, "min_delta": 0.02})
    assert failed(better, strict) == ["macro_f1_delta_ci_low"]
    rule = next(r for r in decide(unsure, CFG)[1] if r["rule"] == "macro_f1_delta_ci_low")
    assert rule["value"] == -0.01 and rule["limit"] == 0.0 and rule["high"] == 0.11 and rule["champion_version"] == 1


def test_a_class_may_not_drop_more_than_its_limit() -> None:
    new = scores(0.86)
    new["per_class"]["tampered"] = {"f1": 0.74}                # the champion had 0.80: a 0.06 drop
    assert failed(with_champion(new, scores(0.8), low=0.01)) == ["class_f1_drop:tampered"]
    new["per_class"]["tampered"] = {"f1": 0.76}                # 0.04: within 0.05
    assert failed(with_champion(new, scores(0.8), low=0.01)) == []


def test_a_slice_may_not_drop_more_than_its_limit_and_small_slices_are_not_gated() -> None:
    new = scores(0.86)
    new["slices"] = copy.deepcopy(new["slices"])
    new["slices"]["hub=SHA01"]["macro_f1"] = 0.65              # champion 0.80: 0.15 drop on 100 records
    new["slices"]["missing=image"]["macro_f1"] = 0.10          # huge drop, but only 12 records
    metrics = with_champion(new, scores(0.8), low=0.01)
    assert failed(metrics) == ["slice_f1_drop:hub=SHA01"]
    small = next(r for r in decide(metrics, CFG)[1] if r["rule"] == "slice_f1_drop:missing=image")
    assert small["passed"] and "min_slice_n" in small["skipped"] and small["n"] == 12


def test_project_params_configure_the_gate() -> None:
    p = load_params(ROOT / "params.yaml")
    assert 0 < p.gate.min_macro_f1 < 1 and p.gate.min_delta >= 0
    assert p.evaluate.n_boot >= 1000 and p.evaluate.ci == 0.95


def test_the_champion_must_still_be_the_one_the_challenger_beat() -> None:
    m = {**with_champion(scores(0.85), scores(0.8), low=0.01), "model_version": 3}   # scored against version 1
    assert champion_rule(m, "1")["passed"]
    moved = champion_rule(m, "2")                               # another gate promoted version 2 meanwhile
    assert not moved["passed"] and (moved["value"], moved["limit"]) == ("2", "1")
    assert "run evaluate again" in reasons([moved])[0]
    assert champion_rule(m, "3")["passed"]                      # a re-run: the challenger already is champion
    first = {**scores(0.8), "champion": None, "model_version": 1}
    assert champion_rule(first, None)["passed"] and not champion_rule(first, "4")["passed"]
