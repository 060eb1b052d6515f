"""The gate's rules: pure functions over the evaluation report (reports/metrics.json).

Every rule is `{"rule", "value", "limit", "passed"}` (plus context). A number the report
lacks fails its rule: the gate never promotes on what it could not check. The first
model (no champion) is judged on the floors and the latency budget alone; later ones
also on the paired bootstrap interval of the macro-F1 gain, per-class and per-slice drops.
`champion_rule` is checked by the gate stage just before the alias switch: the champion must
still be the one the challenger was scored against.
"""
from __future__ import annotations

from typing import Any, Callable

from mmcore.config import GateConfig

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
        _rule("max_latency_p95_ms", _get(m, "latency_ms", "p95"), cfg.max_latency_p95_ms,
              lambda v: v <= cfg.max_latency_p95_ms),
    ]


def delta_rule(m: dict[str, Any], cfg: GateConfig) -> Rule:
    """Lower bound of the paired bootstrap interval of macro-F1(challenger) - macro-F1(champion)."""
    comp = m.get("comparison") or {}
    return _rule("macro_f1_delta_ci_low", comp.get("low"), cfg.min_delta, lambda v: v > cfg.min_delta,
                 champion_version=_get(m, "champion", "version"),
                 **{k: comp[k] for k in ("observed", "mean", "high", "ci", "n_boot") if k in comp})


def class_drop_rules(m: dict[str, Any], cfg: GateConfig) -> list[Rule]:
    """Per class: champion F1 minus challenger F1 may not exceed max_class_f1_drop."""
    champ = _get(m, "champion", "per_class") or {}
    out = []
    for cls, old in champ.items():
        new = _get(m, "per_class", cls, "f1")
        drop = None if new is None else old["f1"] - new
        out.append(_rule(f"class_f1_drop:{cls}", drop, cfg.max_class_f1_drop,
                         lambda v: v <= cfg.max_class_f1_drop))
    return out


def slice_drop_rules(m: dict[str, Any], cfg: GateConfig) -> list[Rule]:
    """Per slice: champion macro-F1 minus challenger macro-F1 may not exceed max_slice_f1_drop.

    Slices under min_slice_n records are listed as skipped (passed) with their size: too few
    records for a drop to mean anything."""
    champ = _get(m, "champion", "slices") or {}
    out = []
    for name, old in sorted(champ.items()):
        new = _get(m, "slices", name)
        drop = None if new is None else old["macro_f1"] - new["macro_f1"]
        n = old.get("n", 0)
        if n < cfg.min_slice_n:
            out.append({"rule": f"slice_f1_drop:{name}", "value": drop, "limit": cfg.max_slice_f1_drop,
                        "passed": True, "n": n, "skipped": f"n={n} < min_slice_n={cfg.min_slice_n}"})
            continue
        out.append(_rule(f"slice_f1_drop:{name}", drop, cfg.max_slice_f1_drop,
                         lambda v: v <= cfg.max_slice_f1_drop, n=n))
    return out


def decide(metrics: dict[str, Any], cfg: GateConfig) -> tuple[bool, list[Rule]]:
    """Every rule with its value, limit and verdict; promote only when all hold."""
    rules = floor_rules(metrics, cfg)
    if metrics.get("champion") is not None:
        rules += [delta_rule(metrics, cfg), *class_drop_rules(metrics, cfg), *slice_drop_rules(metrics, cfg)]
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
        if r.get("skipped"):
            out.append(f"{r['rule']}: {value}, not gated ({r['skipped']})")
            continue
        out.append(f"{r['rule']}: {value} {'passes' if r['passed'] else 'fails'} limit {r['limit']}")
    return out
