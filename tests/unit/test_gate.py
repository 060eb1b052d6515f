"""Gate rules: floors, a latency budget and a held-out gate set for every model; against a champion,
non-inferiority in macro-F1 with superiority on a proper score, the slow-decline guard, and per-class and
per-slice drops on one simultaneous band. Every rule reports value, limit, verdict; `verdict` tells
rejected from inconclusive."""
from __future__ import annotations

import copy
from typing import Any

from mmcore.config import CLASSES, GateConfig, load_params
from mmcore.gate import BEHAVIOUR_SUITES, champion_rule, decide, reasons, verdict
from tests.conftest import ROOT

CFG = GateConfig(min_macro_f1=0.6, min_accuracy=0.6, min_class_f1=0.4, max_ece=0.15, max_latency_p95_ms=500,
                 max_class_f1_drop=0.05, max_slice_f1_drop=0.10, min_slice_shipments=30, noninferiority_margin=0.02,
                 proper_score="log_loss", min_score_gain=0.0, max_decline_from_best=0.02)
SHIPMENTS = {"hub=SHA01": 40, "missing=image": 5, "note_lang=empty": 35, "missing=text": 35}


def scores(f1: float = 0.8, **over: Any) -> dict[str, Any]:
    """A model's numbers as the evaluate stage writes them."""
    m = {"macro_f1": f1, "accuracy": f1, "ece": 0.05, "ece_classwise": 0.02, "latency_ms": {"p50": 40.0, "p95": 90.0},
         "per_class": {c: {"f1": f1} for c in CLASSES},
         "slices": {"hub=SHA01": {"macro_f1": f1, "n": 100}, "missing=image": {"macro_f1": f1, "n": 12}},
         "leak": {"challenger": {"records": 0}, "champion": {"records": 0}},
         "behaviour": {s: {"failure_rate": 0.1, "n": 100, "examples": []} for s in BEHAVIOUR_SUITES}}
    m.update(over)
    return m


def drop(observed: float, half_width: float = 0.03, band: float | None = None) -> dict[str, float]:
    """A bootstrap interval of a drop (champion minus challenger) around `observed`; `band`: the
    simultaneous band's half width (wider than the drop's own interval), the interval's unless given."""
    band = half_width if band is None else band
    return {"observed": observed, "low": observed - half_width, "high": observed + half_width,
            "simultaneous_low": observed - band}


def gain(low: float, high: float) -> dict[str, float]:
    return {"observed": (low + high) / 2, "mean": (low + high) / 2, "low": low, "high": high}


def with_champion(new: dict[str, Any], old: dict[str, Any], low: float, high: float = 0.05,
                  score: tuple[float, float] = (0.01, 0.05), **drops: dict[str, float]) -> dict[str, Any]:
    """[low, high]: the macro-F1 gain's interval; `score`: the log-loss improvement's. `drops` name a class
    (`tampered`) or a slice (`hub=SHA01`) and give its drop interval; others 0."""
    classes = {c: drops.get(c, drop(old["per_class"][c]["f1"] - new["per_class"][c]["f1"])) for c in CLASSES}
    slices = {s: {**drops.get(s, drop(old["slices"][s]["macro_f1"] - v["macro_f1"])), "shipments": SHIPMENTS[s]}
              for s, v in new["slices"].items()}
    return {**new, "champion": {"version": 1, **old},
            "comparison": {**gain(low, high), "classes": classes, "slices": slices,
                           "scores": {"log_loss": gain(*score), "brier": gain(*score)}}}


def failed(metrics: dict[str, Any], cfg: GateConfig = CFG) -> list[str]:
    return [r["rule"] for r in decide(metrics, cfg)[1] if not r["passed"]]


def test_every_rule_has_value_limit_and_verdict() -> None:
    _, rules = decide(with_champion(scores(0.85), scores(0.8), low=0.01), CFG)
    assert {"min_macro_f1", "min_accuracy", "min_class_f1", "max_ece", "max_latency_p95_ms",
            "macro_f1_noninferiority", "log_loss_superiority", "decline_from_best", "class_f1_drop:wet",
            "slice_f1_drop:hub=SHA01"} <= {r["rule"] for r in rules}
    for r in rules:
        assert {"rule", "value", "limit", "passed"} <= set(r)
    assert len(reasons(rules)) == len(rules)


def test_first_model_is_judged_on_floors_and_latency_alone() -> None:
    promoted, rules = decide({**scores(0.7), "champion": None, "comparison": None}, CFG)
    assert promoted
    assert [r["rule"] for r in rules] == ["min_macro_f1", "min_accuracy", "min_class_f1", "max_ece",
                                          "max_ece_classwise", "max_latency_p95_ms", "gate_set_held_out:challenger"]
    assert failed({**scores(0.5), "champion": None}) == ["min_macro_f1", "min_accuracy"]


def test_floors_each_fail_on_their_own() -> None:
    weak_class = scores(0.8)
    weak_class["per_class"]["wet"] = {"f1": 0.3}
    assert failed(weak_class) == ["min_class_f1"]
    rule = next(r for r in decide(weak_class, CFG)[1] if r["rule"] == "min_class_f1")
    assert rule["worst_class"] == "wet" and rule["value"] == 0.3
    assert failed(scores(0.8, ece=0.2)) == ["max_ece"]
    assert failed(scores(0.8, ece_classwise=0.031)) == ["max_ece_classwise"]
    assert failed(scores(0.8, ece_classwise=0.03)) == []


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
    assert failed(no_comparison) == ["macro_f1_noninferiority", "log_loss_superiority",
                                     *(f"class_f1_drop:{c}" for c in CLASSES), "slice_f1_drop:hub=SHA01",
                                     "slice_f1_drop:missing=image"]     # every rule the bootstrap feeds
    assert verdict(decide(no_comparison, CFG)[1]) == "rejected"          # unchecked is not "unproven"


def test_promotion_needs_noninferior_macro_f1_and_a_better_proper_score() -> None:
    better = with_champion(scores(0.82), scores(0.8), low=-0.01, high=0.05, score=(0.005, 0.03))
    assert decide(better, CFG)[0] and verdict(decide(better, CFG)[1]) == "promoted"
    worse = with_champion(scores(0.78), scores(0.8), low=-0.04, high=0.0, score=(0.005, 0.03))
    assert failed(worse) == ["macro_f1_noninferiority"]
    same_scores = with_champion(scores(0.8), scores(0.8), low=0.0, high=0.0, score=(0.0, 0.0))
    assert failed(same_scores) == ["log_loss_superiority"]
    brier = GateConfig(**{**CFG.__dict__, "proper_score": "brier"})
    assert failed(same_scores, brier) == ["brier_superiority"]
    rule = next(r for r in decide(worse, CFG)[1] if r["rule"] == "macro_f1_noninferiority")
    assert rule["value"] == -0.04 and rule["limit"] == -0.02 and rule["high"] == 0.0 and rule["champion_version"] == 1
    assert "gain -0.0200 [-0.0400, +0.0000], low end" in reasons([rule])[0]


def test_unproven_is_inconclusive_shown_worse_or_unsafe_is_rejected() -> None:
    unproven = with_champion(scores(0.8), scores(0.8), low=-0.03, high=0.03, score=(-0.01, 0.02))
    assert failed(unproven) == ["macro_f1_noninferiority", "log_loss_superiority"]
    assert verdict(decide(unproven, CFG)[1]) == "inconclusive"
    shown_worse = with_champion(scores(0.74), scores(0.8), low=-0.09, high=-0.03, score=(-0.01, 0.02))
    assert verdict(decide(shown_worse, CFG)[1]) == "rejected"               # the whole interval below -margin
    unsafe = with_champion(scores(0.8), scores(0.8), low=-0.03, high=0.03, score=(-0.01, 0.02),
                           tampered=drop(0.2, 0.03))
    assert verdict(decide(unsafe, CFG)[1]) == "rejected"
    assert verdict(decide(with_champion(scores(0.85), scores(0.8), low=0.01), CFG)[1]) == "promoted"


def test_never_promoted_far_below_the_best_seen_on_this_gate_set() -> None:
    m = with_champion(scores(0.80), scores(0.79), low=-0.01, high=0.03)
    assert failed(m) == []
    m["best_seen"] = {"macro_f1": 0.83, "version": 5, "fingerprint": "x"}          # an earlier, better version
    assert failed(m) == ["decline_from_best"]
    rule = next(r for r in decide(m, CFG)[1] if r["rule"] == "decline_from_best")
    assert abs(rule["value"] + 0.03) < 1e-12 and rule["best_version"] == 5 and rule["limit"] == -0.02
    m["best_seen"]["macro_f1"] = 0.815
    assert failed(m) == []
    worse_than_champion = with_champion(scores(0.77), scores(0.8), low=-0.01, high=0.03)
    assert "decline_from_best" in failed(worse_than_champion)               # no tag: the champion is the best


def test_a_class_fails_only_when_its_interval_lies_beyond_the_limit() -> None:
    new = scores(0.86)
    metrics = with_champion(new, scores(0.8), low=0.01, tampered=drop(0.09, 0.03))     # [0.06, 0.12]: surely > 0.05
    assert failed(metrics) == ["class_f1_drop:tampered"]
    rule = next(r for r in decide(metrics, CFG)[1] if r["rule"] == "class_f1_drop:tampered")
    assert abs(rule["value"] - 0.06) < 1e-12 and rule["observed"] == 0.09 and rule["measure"] == "drop_ci_low"
    assert "drop 0.0900 [0.0600, 0.1200]" in reasons([rule])[0]
    noisy = with_champion(new, scores(0.8), low=0.01, tampered=drop(0.07, 0.05))       # [0.02, 0.12]: maybe noise
    assert failed(noisy) == []
    family = with_champion(new, scores(0.8), low=0.01, tampered=drop(0.09, 0.03, band=0.05))
    assert failed(family) == []           # beyond on its own interval, not on the band over all classes and slices
    del noisy["comparison"]["classes"]["wet"]
    assert failed(noisy) == ["class_f1_drop:wet"]                                       # missing: not checked


def test_slices_fail_on_their_interval_and_small_or_duplicate_slices_are_not_gated() -> None:
    new = scores(0.86)
    new["slices"] = {**copy.deepcopy(new["slices"]), "note_lang=empty": {"macro_f1": 0.5, "n": 40},
                     "missing=text": {"macro_f1": 0.5, "n": 40, "duplicate_of": "note_lang=empty"}}
    old = scores(0.8)
    old["slices"] = {**old["slices"], "note_lang=empty": {"macro_f1": 0.8, "n": 40},
                     "missing=text": {"macro_f1": 0.8, "n": 40}}
    metrics = with_champion(new, old, low=0.01, **{"hub=SHA01": drop(0.15, 0.03), "missing=image": drop(0.7, 0.1),
                                                 "note_lang=empty": drop(0.3, 0.05), "missing=text": drop(0.3, 0.05)})
    assert failed(metrics) == ["slice_f1_drop:hub=SHA01", "slice_f1_drop:note_lang=empty"]
    rules = {r["rule"]: r for r in decide(metrics, CFG)[1]}
    small, dup = rules["slice_f1_drop:missing=image"], rules["slice_f1_drop:missing=text"]
    assert small["passed"] and "min_slice_shipments" in small["skipped"] and small["shipments"] == 5
    assert dup["passed"] and dup["skipped"] == "same records as note_lang=empty"
    metrics["comparison"]["slices"]["hub=SHA01"] = drop(0.15, 0.08)                     # [0.07, 0.23]: not surely
    assert failed(metrics) == ["slice_f1_drop:note_lang=empty"]


def test_the_gate_refuses_when_fitted_records_are_in_the_gate_set() -> None:
    leak = {"records": 7, "by": {"record_id": 5, "content_sha256": 7, "image_sha256": 0}, "examples": ["r1"]}
    metrics = with_champion(scores(0.9), scores(0.8), low=0.05)
    metrics["leak"] = {"challenger": {"records": 0}, "champion": leak}
    assert failed(metrics) == ["gate_set_held_out:champion"]
    text = " ".join(reasons(decide(metrics, CFG)[1]))
    assert "7 gate-set records" in text and "split.salt" in text and "retire" in text
    first = {**scores(0.9), "champion": None, "leak": {"challenger": leak}}
    assert failed(first) == ["gate_set_held_out:challenger"]
    unchecked = {**scores(0.9), "champion": None, "leak": {}}
    assert failed(unchecked) == ["gate_set_held_out:challenger"]


def test_project_params_configure_the_gate() -> None:
    p = load_params(ROOT / "params.yaml")
    assert 0 < p.gate.min_macro_f1 < 1 and 0 <= p.gate.noninferiority_margin < 0.05
    assert p.gate.min_slice_shipments >= 30 and p.gate.proper_score in ("log_loss", "brier")
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


def behaviour(**rates: float) -> dict[str, Any]:
    """Suite results as mmcore.behaviour.score_cases writes them; unnamed suites fail 10 % of 100 cases."""
    return {s: {"failure_rate": rates.get(s, 0.1), "n": 100, "failed": int(rates.get(s, 0.1) * 100),
                "examples": [f"{s} example"]} for s in BEHAVIOUR_SUITES}


def test_a_behavioural_suite_fails_when_its_failure_rate_rises_beyond_the_limit() -> None:
    old = scores(0.8, behaviour=behaviour())
    worse = with_champion(scores(0.86, behaviour=behaviour(minimum_functionality=0.3)), old, low=0.01)
    assert failed(worse) == ["behaviour_regression:minimum_functionality"]
    rule = next(r for r in decide(worse, CFG)[1] if r["rule"] == "behaviour_regression:minimum_functionality")
    assert abs(rule["value"] - 0.2) < 1e-12 and rule["limit"] == 0.05
    assert (rule["challenger_rate"], rule["champion_rate"], rule["n"]) == (0.3, 0.1, 100)
    assert rule["examples"] == ["minimum_functionality example"]
    assert "failure rate 0.3000 vs champion 0.1000 (+0.2000) fails limit 0.05" in reasons([rule])[0]
    at_limit = with_champion(scores(0.86, behaviour=behaviour(invariance=0.15, directional=0.0)), old, low=0.01)
    assert failed(at_limit) == []                        # +0.05 (float noise aside) passes; a fall always does
    strict = GateConfig(**{**CFG.__dict__, "max_behaviour_regression": 0.0})
    assert failed(at_limit, strict) == ["behaviour_regression:invariance"]


def test_behaviour_rules_need_both_models_rates_and_only_apply_against_a_champion() -> None:
    first = {**scores(0.8, behaviour=behaviour(invariance=0.9)), "champion": None}
    assert failed(first) == []                           # nothing to compare with: reported, not gated
    m = with_champion(scores(0.86), scores(0.8), low=0.01)
    del m["champion"]["behaviour"]["directional"]
    del m["behaviour"]["invariance"]
    assert failed(m) == ["behaviour_regression:invariance", "behaviour_regression:directional"]
    rules = {r["rule"]: r for r in decide(m, CFG)[1]}
    assert rules["behaviour_regression:invariance"]["value"] is None
    assert "missing" in " ".join(reasons(list(rules.values())))


def test_the_gate_gates_every_suite_the_behaviour_module_runs() -> None:
    from mmcore.behaviour import SUITES

    assert BEHAVIOUR_SUITES == SUITES
    assert 0 < load_params(ROOT / "params.yaml").gate.max_behaviour_regression < 0.2
