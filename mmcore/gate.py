"""The gate's rules: pure functions over the evaluation report, so they are testable alone."""
from __future__ import annotations

from typing import Any

from mmcore.config import GateConfig


def decide(metrics: dict[str, Any], cfg: GateConfig) -> tuple[bool, list[dict[str, Any]]]:
    """Every rule with its value, limit and verdict; promote only when all hold."""
    rules = [{"rule": "min_macro_f1", "value": metrics["macro_f1"], "limit": cfg.min_macro_f1,
              "passed": metrics["macro_f1"] >= cfg.min_macro_f1}]
    champion = metrics.get("champion")
    if champion is not None:
        delta = metrics["macro_f1"] - champion["macro_f1"]
        rules.append({"rule": "min_delta_vs_champion", "value": delta, "limit": cfg.min_delta,
                      "passed": delta > cfg.min_delta, "champion_version": champion["version"]})
    return all(r["passed"] for r in rules), rules


def reasons(rules: list[dict[str, Any]]) -> list[str]:
    return [f"{r['rule']}: {r['value']:.4f} {'passes' if r['passed'] else 'fails'} limit {r['limit']}"
            for r in rules]
