"""The gate's rules: pure functions over the evaluation report (reports/metrics.json).

Every rule is `{"rule", "value", "limit", "passed"}` (plus context). A number the report
lacks fails its rule: the gate never promotes on what it could not check. The first
model (no champion) is judged on the floors and the latency budget alone; later ones
also on the paired bootstrap intervals (resampled by shipment, one set of rounds for all): macro-F1
not worse than the champion's by more than `noninferiority_margin`, a proper score of the same records
(log-loss or Brier) better, macro-F1 not far below the best seen on this gate set (slow decline), the
per-class and per-slice drops within their limits on one simultaneous band (a drop fails only when
the band lies beyond its limit), and on the behavioural suites (mmcore.behaviour: invariance, directional,
minimum functionality): no suite's failure rate may exceed the champion's by more than
`max_behaviour_regression` (the first model's rates are reported, not gated: nothing to compare with).
`verdict` turns the rules into promoted, rejected or inconclusive (not proven better, not shown worse).
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
        ece_classwise_rule(m, cfg),
        _rule("max_latency_p95_ms", _get(m, "latency_ms", "p95"), cfg.max_latency_p95_ms,
              lambda v: v <= cfg.max_latency_p95_ms),
    ]


def ece_classwise_rule(m: dict[str, Any], cfg: GateConfig) -> Rule:
    """Class-wise ECE of the served (temperature-scaled) probabilities: fails on evidence, when the shipment
    bootstrap's low end is above the limit (a report without the interval is judged on its point value)."""
    ci = m.get("ece_classwise_ci") or {}
    value = ci.get("low", m.get("ece_classwise"))
    return _rule("max_ece_classwise", value, cfg.max_ece_classwise, lambda v: v <= cfg.max_ece_classwise,
                 measure="ci_low" if "low" in ci else "point", observed=m.get("ece_classwise"),
                 **{k: ci[k] for k in ("high", "ci") if k in ci})


def noninferiority_rule(m: dict[str, Any], cfg: GateConfig) -> Rule:
    """Macro-F1 not worse than the champion's by more than the margin: the gain's bootstrap low > -margin."""
    comp = m.get("comparison") or {}
    limit = -cfg.noninferiority_margin
    return _rule("macro_f1_noninferiority", comp.get("low"), limit, lambda v: v > limit,
                 champion_version=_get(m, "champion", "version"), measure="gain_ci_low",
                 **{k: comp[k] for k in ("observed", "mean", "high", "ci", "n_boot") if k in comp})


def superiority_rule(m: dict[str, Any], cfg: GateConfig) -> Rule:
    """Better on a proper scoring rule of the same records: score(champion) - score(challenger), bootstrap low.

    Every record counts with its whole probability vector, not just whether its top class is right,
    so a real gain shows on a gate set where macro-F1 alone would need several times more shipments."""
    gain = _get(m, "comparison", "scores", cfg.proper_score) or {}
    return _rule(f"{cfg.proper_score}_superiority", gain.get("low"), cfg.min_score_gain,
                 lambda v: v > cfg.min_score_gain, measure="gain_ci_low",
                 **{k: gain[k] for k in ("observed", "high", "champion", "challenger") if k in gain})


def decline_rule(m: dict[str, Any], cfg: GateConfig) -> Rule:
    """Macro-F1 at most `max_decline_from_best` below the best seen on this gate set (slow decline).

    Non-inferiority lets each promotion lose up to its margin; chained, they could drift down. The
    best is the larger of the champion's score here and the registry's best-seen tag for the same
    gate set (`best_seen`, written by the gate stage)."""
    seen = [v for v in (_get(m, "champion", "macro_f1"), _get(m, "best_seen", "macro_f1")) if v is not None]
    best = max(seen) if seen else None
    value = None if best is None or m.get("macro_f1") is None else round(m["macro_f1"] - best, 12)
    limit = -cfg.max_decline_from_best
    return _rule("decline_from_best", value, limit, lambda v: v >= limit, best_macro_f1=best,
                 best_version=_get(m, "best_seen", "version"))


def _drop_rule(name: str, drop: dict[str, Any] | None, limit: float, **extra: Any) -> Rule:
    """A drop fails only when its simultaneous band's low end lies beyond the limit: a drop that two equally
    good models show by chance passes, and so do all of them together at the band's level."""
    drop = drop or {}
    low = drop.get("simultaneous_low", drop.get("low"))
    return _rule(name, low, limit, lambda v: v <= limit, measure="drop_ci_low",
                 **{k: drop[k] for k in ("observed", "high", "low") if k in drop}, **extra)


def class_drop_rules(m: dict[str, Any], cfg: GateConfig) -> list[Rule]:
    """Per class: F1(champion) - F1(challenger), shipment-bootstrapped with the overall rule's rounds."""
    drops = _get(m, "comparison", "classes") or {}
    return [_drop_rule(f"class_f1_drop:{cls}", drops.get(cls), cfg.max_class_f1_drop)
            for cls in _get(m, "champion", "per_class") or {}]


def slice_drop_rules(m: dict[str, Any], cfg: GateConfig) -> list[Rule]:
    """Per slice: macro-F1(champion) - macro-F1(challenger) over the classes in the slice's labels.

    Slices under min_slice_shipments shipments (records of one shipment are not independent), and slices
    holding exactly another slice's records, are listed as skipped (passed)."""
    drops = _get(m, "comparison", "slices") or {}
    out = []
    for name, info in sorted((_get(m, "slices") or {}).items()):
        dup = info.get("duplicate_of")
        ships = (drops.get(name) or {}).get("shipments", info.get("shipments"))
        skip = (f"shipments={ships} < min_slice_shipments={cfg.min_slice_shipments}"
                if ships is not None and ships < cfg.min_slice_shipments
                else f"same records as {dup}" if dup else None)
        rule = _drop_rule(f"slice_f1_drop:{name}", drops.get(name), cfg.max_slice_f1_drop, n=info.get("n", 0),
                          shipments=ships)
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


EVIDENCE_LEVEL = 0.05   # selective rules fail only when a one-sided bound at this level lies below the limit


def precision_upper(k: int, n: int, level: float) -> float:
    """One-sided Clopper-Pearson upper bound of a proportion k/n at confidence 1 - level."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(1 - level, k + 1, n - k))


def selective_rules(m: dict[str, Any], sel: SelectiveConfig) -> list[Rule]:
    """Abstention (mmcore.selective) on the gate set; each rule fails only on evidence.

    Coverage fails when its shipment-bootstrap upper bound (evaluate's `coverage_ci.high`) lies below
    1 - alpha - coverage_slack; automatic precision when its Clopper-Pearson upper bound lies below
    min_auto_precision, pooled when the calibration certified it pooled, else per class (Bonferroni over the
    classes; a class decided on no record is skipped);
    and the challenger fails when it automates more than max_automation_drop less than the champion."""
    s = m.get("selective") or {}
    floor = round(1 - sel.alpha - sel.coverage_slack, 12)
    cov = _get(s, "coverage_ci", "high")
    rules = [_rule("selective_coverage", cov, floor, lambda v: v >= floor, measure="coverage_ci_high",
                   observed=_get(s, "coverage", "overall"))]
    if _get(s, "certified_on_calib", "mode") == "per_class":
        groups = {f"auto_precision:{c}": v for c, v in (s.get("auto_precision") or {}).items()}
    else:       # certified pooled: the guarantee is on all automatic decisions together, and so is the rule
        groups = {"auto_precision_pooled": s.get("auto_precision_pooled") or {}}
    for name, info in groups.items():
        n, p = info.get("n"), info.get("precision")
        upper = None if p is None else precision_upper(round(p * n), n, EVIDENCE_LEVEL / max(len(groups), 1))
        rule = _rule(name, upper, sel.min_auto_precision,
                     lambda v: v >= sel.min_auto_precision, n=n, observed=p, measure="clopper_pearson_high")
        if not n:
            rule.update(passed=True, skipped="no automatic decisions on the gate set")
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
        rules += [noninferiority_rule(metrics, cfg), superiority_rule(metrics, cfg), decline_rule(metrics, cfg),
                  *class_drop_rules(metrics, cfg), *slice_drop_rules(metrics, cfg), *behaviour_rules(metrics, cfg)]
    return all(r["passed"] for r in rules), rules


UNPROVEN = ("macro_f1_noninferiority", "log_loss_superiority", "brier_superiority")


def verdict(rules: list[Rule]) -> str:
    """promoted | rejected | inconclusive.

    Inconclusive: every failed rule is one that asks for proof of benefit (superiority, non-inferiority)
    and the macro-F1 gain's interval still reaches -margin (not shown worse). The champion stays; the
    challenger stays registered as a candidate, to be judged again on a larger gate set. Any other
    failure is evidence against the challenger: rejected."""
    failed = [r for r in rules if not r["passed"]]
    if not failed:
        return "promoted"
    shown_worse = any(r["rule"] == "macro_f1_noninferiority" and r.get("high") is not None
                      and r["high"] <= r["limit"] for r in failed)
    unproven = all(r["rule"] in UNPROVEN and r["value"] is not None for r in failed)
    return "inconclusive" if unproven and not shown_worse else "rejected"


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
        nan = float("nan")
        if r.get("measure") == "drop_ci_low" and r["value"] is not None:
            value = f"drop {r.get('observed', nan):.4f} [{value}, {r.get('high', nan):.4f}], low end"
        elif r.get("measure") == "gain_ci_low" and r["value"] is not None:
            value = f"gain {r.get('observed', nan):+.4f} [{value}, {r.get('high', nan):+.4f}], low end"
        elif r.get("measure") in ("coverage_ci_high", "clopper_pearson_high") and r["value"] is not None:
            value = f"{r.get('observed') or nan:.4f}, upper bound {value}"
        if r.get("skipped"):
            out.append(f"{r['rule']}: {value}, not gated ({r['skipped']})")
            continue
        out.append(f"{r['rule']}: {value} {'passes' if r['passed'] else 'fails'} limit {r['limit']}")
    return out
