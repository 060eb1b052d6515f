"""gate stage: move the `champion` alias to the challenger only when every rule holds.

The rules are read from the evaluation report; the champion is re-read under the promotion
lock just before the switch, so two gates at once never both promote over the same champion.
With the tracking server down the stage exits 3 with a message and leaves the aliases alone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mmcore.config import GateConfig, SelectiveConfig, load_params
from mmcore.gate import champion_rule, decide, reasons, verdict
from mmcore.stages.common import read_json, write_json


def run_gate(metrics: dict[str, Any], cfg: GateConfig, model_name: str,
             sel: SelectiveConfig | None = None) -> dict[str, Any]:
    """Decide, re-check the champion, switch the alias (the commit point), tag the verdict; the report."""
    from mmcore import registry

    version = str(metrics["model_version"])
    _, rules = decide(metrics, cfg, sel)
    with registry.promotion_lock():
        with registry.reachable("The champion alias was not changed"):
            before = registry.alias_version(model_name, registry.CHAMPION)
        check = champion_rule(metrics, before)
        failed = [r["rule"] for r in [*rules, check] if not r["passed"]]
        promoted = not failed
        outcome = verdict(rules) if check["passed"] else "rejected"
        if before != version:               # a re-run on the champion itself changes nothing
            if promoted:
                with registry.reachable("The champion alias may or may not have moved: check it with "
                                        "python -m mmcore.registry lineage --alias champion"):
                    registry.promote(model_name, version)
            with registry.reachable(f"The champion alias is {'now ' + version if promoted else 'unchanged'}, "
                                    f"but the verdict tag of version {version} may be missing"):
                registry.tag_verdict(model_name, version, promoted, failed, outcome)
                record_best(metrics, model_name, version)
        with registry.reachable(f"The champion alias is {'now ' + version if promoted else 'unchanged'}"):
            champion = registry.alias_version(model_name, registry.CHAMPION)
    # `rules` and `reasons` stay aligned one to one (the flow's report zips them); the champion
    # re-check is reported on its own
    return {"promoted": promoted, "verdict": outcome, "challenger_version": int(version), "reasons": reasons(rules),
            "rules": rules,
            "champion_check": check, "champion_before": int(before) if before else None,
            "champion_version": int(champion) if champion else None,
            "compared_with": (metrics.get("champion") or {}).get("version"),
            "failed": failed, "comparison": metrics.get("comparison")}


def record_best(metrics: dict[str, Any], model_name: str, version: str) -> None:
    """The slow-decline guard's memory: the best macro-F1 scored on this gate set, challenger and champion alike."""
    from mmcore import registry

    fingerprint = (metrics.get("gate_set") or {}).get("fingerprint")
    if fingerprint:
        champ = metrics.get("champion") or {}
        registry.record_best_seen(model_name, fingerprint, {version: metrics.get("macro_f1"),
                                                           **({str(champ["version"]): champ.get("macro_f1")}
                                                              if champ.get("version") else {})})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Promote the challenger if the gate's rules hold.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    from mmcore import registry

    metrics = read_json(args.metrics)
    try:
        registry.setup(p.registry.experiment)
        report = run_gate(metrics, p.gate, p.registry.model_name, p.selective)
    except registry.TrackingUnavailable as e:
        print(f"gate: error: {e}", file=sys.stderr)
        return 3
    write_json(args.out, report)
    rules = [*report["rules"], report["champion_check"]]
    failed = [line for line, r in zip([*report["reasons"], report["champion_check"]["message"]], rules)
              if not r["passed"]]
    print(f"gate: {'PROMOTED' if report['promoted'] else report['verdict']} version {report['challenger_version']}; "
          f"champion is {report['champion_version']}; {len(rules) - len(failed)}/{len(rules)} rules pass"
          + "".join(f"\n  FAILED {f}" for f in failed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
