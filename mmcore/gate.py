"""The gate's rules: pure functions over the evaluation report (reports/metrics.json).

Every rule is `{"rule", "value", "limit", "passed"}` (plus context). A number the report
lacks fails its rule: the gate never promotes on what it could not check. The first
model (no champion) is judged on the floors and the latency budget alone; later ones
also on the paired bootstrap intervals (resampled by shipment, one set of rounds for all) of the
macro-F1 gain and of the per-class and per-slice drops: a drop fails only when its interval lies
beyond its limit, and on the behavioural suites (mmcore.behaviour: invariance, directional,
minimum functionality): no suite's failure rate may exceed the champion's by more than
`max_behaviour_regression` (the first model's rates are reported, not gated: nothing to compare with).
`champion_rule` is checked by the gate stage just before the alias switch: the champion must
still be the one the challenger was scored against.
"""
from __future__ import annotations

from typing import Any, Callable

from mmcore.config import GateConfig, SelectiveConfig
from mmcore.leak import leak_message

Rule = dict[str, Any]


def _rule(name: str, value: float | None, limit: float, ok: Callable[[float], bool], **extra: Any) -> Rule:
    passed = value is not None and bool(ok(value))
    out = {"rule": name, "value": None if value is None else float(value), "limit": limit, "passed": passed}
    if value is None:
        out["note"] = "missing from the evaluation report"
    return {**out, **extra}


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def floor_rules(m: dict[str, Any], cfg: GateConfig) -> list[Rule]:
    """Absolute floors and the latency budget: apply to every challenger."""
    f1s = {c: v["f1"] for c, v in (m.get("per_class") or {}).items()}
    worst = min(f1s, key=f1s.get) if f1s else None
    return [
        _rule("min_macro_f1", m.get("macro_f1"), cfg.min_macro_f1, lambda v: v >= cfg.min_macro_f1),
        _rule("min_accuracy", m.get("accuracy"), cfg.min_accuracy, lambda v: v >= cfg.min_accuracy),
        _rule("min_class_f1", f1s.get(worst), cfg.min_class_f1, lambda v: v >= cfg.min_class_f1, worst_class=worst),
        _rule("max_ece", m.get("ece"), cfg.max_ece, lambda v: v <= cfg.max_ece),
        _rule("max_ece_classwise", m.get("ece_classwise"), cfg.max_ece_classwise,
              lambda v: v <= cfg.max_ece_classwise),     # of the served (temperature-scaled) probabilities
        _rule("max_latency_p95_ms", _get(m, "latency_ms", "p95"), cfg.max_latency_p95_ms,
              lambda v: v <= cfg.max_latency_p95_ms),
    ]


def delta_rule(m: dict[str, Any], cfg: GateConfig) -> Rule:
    """Lower bound of the paired bootstrap interval of macro-F1(challenger) - macro-F1(champion)."""
    comp = m.get("comparison") or {}
    return _rule("macro_f1_delta_ci_low", comp.get("low"), cfg.min_delta, lambda v: v > cfg.min_delta,
                 champion_version=_get(m, "champion", "version"),
                 **{k: comp[k] for k in ("observed", "mean", "high", "ci", "n_boot") if k in comp})


def _drop_rule(name: str, drop: dict[str, Any] | None, limit: float, **extra: Any) -> Rule:
    """A drop fails only when its whole bootstrap interval lies beyond the limit (lower bound > limit):
    a drop that two equally good models show by chance passes."""
    drop = drop or {}
    return _rule(name, drop.get("low"), limit, lambda v: v <= limit, measure="drop_ci_low",
                 **{k: drop[k] for k in ("observed", "high") if k in drop}, **extra)


def class_drop_rules(m: dict[str, Any], cfg: GateConfig) -> list[Rule]:
    """Per class: F1(champion) - F1(challenger), shipment-bootstrapped with the overall rule's rounds."""
    drops = _get(m, "comparison", "classes") or {}
    return [_drop_rule(f"class_f1_drop:{cls}", drops.get(cls), cfg.max_class_f1_drop)
            for cls in _get(m, "champion", "per_class") or {}]


def slice_drop_rules(m: dict[str, Any], cfg: GateConfig) -> list[Rule]:
    """Per slice: macro-F1(champion) - macro-F1(challenger) over the classes in the slice's labels.

    Slices under min_slice_n records, and slices holding exactly another slice's records, are
    listed as skipped (passed): too few records to mean anything, or gated once already."""
    drops = _get(m, "comparison", "slices") or {}
    out = []
    for name, info in sorted((_get(m, "slices") or {}).items()):
        n, dup = info.get("n", 0), info.get("duplicate_of")
        skip = (f"n={n} < min_slice_n={cfg.min_slice_n}" if n < cfg.min_slice_n
                else f"same records as {dup}" if dup else None)
        rule = _drop_rule(f"slice_f1_drop:{name}", drops.get(name), cfg.max_slice_f1_drop, n=n)
        if skip:
            rule.update(passed=True, skipped=skip)
            rule.pop("note", None)
        out.append(rule)
    return out


BEHAVIOUR_SUITES = ("invariance", "directional", "minimum_functionality")     # mmcore.behaviour.SUITES


def behaviour_rules(m: dict[str, Any], cfg: GateConfig) -> list[Rule]:
    """Per behavioural suite: failure rate(challenger) - failure rate(champion), on the same cases.

    A plain difference, no interval: the cases are fixed and deterministic, so the difference has no
    sampling noise between the two models' scores; the limit absorbs the retrain-to-retrain spread."""
    out = []
    for suite in BEHAVIOUR_SUITES:
        new, old = _get(m, "behaviour", suite), _get(m, "champion", "behaviour", suite)
        rates = [_get(new, "failure_rate"), _get(old, "failure_rate")]
        value = None if None in rates else round(rates[0] - rates[1], 12)
        rule = _rule(f"behaviour_regression:{suite}", value, cfg.max_behaviour_regression,
                     lambda v: v <= cfg.max_behaviour_regression, challenger_rate=rates[0], champion_rate=rates[1],
                     n=_get(new, "n"), examples=_get(new, "examples") or [])
        if value is not None:
            rule["message"] = (f"{rule['rule']}: failure rate {rates[0]:.4f} vs champion {rates[1]:.4f} "
                               f"({value:+.4f}) {'passes' if rule['passed'] else 'fails'} limit {rule['limit']}")
        out.append(rule)
    return out


def held_out_rules(m: dict[str, Any]) -> list[Rule]:
    """No gate-set record may be one the challenger or the champion was fitted on (mmcore.leak)."""
    who = ["challenger"] + (["champion"] if m.get("champion") is not None else [])
    out = []
    for name in who:
        info = _get(m, "leak", name) or {}
        rule = _rule(f"gate_set_held_out:{name}", info.get("records"), 0, lambda v: v == 0,
                     **{k: info[k] for k in ("by", "source") if k in info})
        if info.get("records"):
            rule["message"] = leak_message(name, info)
        out.append(rule)
    return out


def selective_rules(m: dict[str, Any], sel: SelectiveConfig) -> list[Rule]:
    """Abstention (mmcore.selective) on the gate set: the sets' coverage keeps its promise, every class's
    automatic decisions are as precise as promised (a class decided automatically on no gate-set
    record is skipped), and the challenger does not send much more to review than the champion."""
    s = m.get("selective") or {}
    floor = round(1 - sel.alpha - sel.coverage_slack, 12)
    rules = [_rule("selective_coverage", _get(s, "coverage", "overall"), floor, lambda v: v >= floor)]
    for cls, info in (s.get("auto_precision") or {}).items():
        rule = _rule(f"auto_precision:{cls}", info.get("precision"), sel.min_auto_precision,
                     lambda v: v >= sel.min_auto_precision, n=info.get("n"))
        if not info.get("n"):
            rule.update(passed=True, skipped="no automatic decisions of this class on the gate set")
            rule.pop("note", None)
        rules.append(rule)
    old = _get(m, "champion", "selective")
    if old and old.get("calibrated"):
        rates = [s.get("automation_rate"), old.get("automation_rate")]
        value = None if None in rates else round(rates[1] - rates[0], 12)
        rules.append(_rule("automation_drop", value, sel.max_automation_drop,
                           lambda v: v <= sel.max_automation_drop, challenger_rate=rates[0], champion_rate=rates[1]))
    return rules


def decide(metrics: dict[str, Any], cfg: GateConfig, sel: SelectiveConfig | None = None) -> tuple[bool, list[Rule]]:
    """Every rule with its value, limit and verdict; promote only when all hold. `sel`: the abstention rules too."""
    rules = floor_rules(metrics, cfg) + held_out_rules(metrics)
    if sel is not None:
        rules += selective_rules(metrics, sel)
    if metrics.get("champion") is not None:
        rules += [delta_rule(metrics, cfg), *class_drop_rules(metrics, cfg), *slice_drop_rules(metrics, cfg),
                  *behaviour_rules(metrics, cfg)]
    return all(r["passed"] for r in rules), rules


def champion_rule(m: dict[str, Any], current: str | None) -> Rule:
    """The champion must still be the model the challenger was scored against.

    Checked just before the alias switch: when another gate promoted in between, this
    challenger's comparison is stale and it is not promoted (evaluate again). A challenger
    that already is the champion (a gate re-run) passes."""
    compared = _get(m, "champion", "version")
    compared = None if compared is None else str(compared)
    passed = current == compared or current == str(m.get("model_version"))
    message = (f"champion_unchanged: champion is {current or 'none'}, scored against {compared or 'none'}"
               + ("" if passed else " (promoted by another gate since evaluate; run evaluate again)"))
    return {"rule": "champion_unchanged", "value": current, "limit": compared, "passed": passed,
            "message": message}


def reasons(rules: list[Rule]) -> list[str]:
    """One line per rule, for logs and the Prefect report."""
    out = []
    for r in rules:
        if r.get("message"):
            out.append(r["message"])
            continue
        value = "missing" if r["value"] is None else f"{r['value']:.4f}"
        if r.get("measure") == "drop_ci_low" and r["value"] is not None:
            nan = float("nan")
            value = f"drop {r.get('observed', nan):.4f} [{value}, {r.get('high', nan):.4f}], low end"
        if r.get("skipped"):
            out.append(f"{r['rule']}: {value}, not gated ({r['skipped']})")
            continue
        out.append(f"{r['rule']}: {value} {'passes' if r['passed'] else 'fails'} limit {r['limit']}")
    return out
