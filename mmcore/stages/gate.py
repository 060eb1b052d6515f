"""gate stage: move the `champion` alias to the challenger only when every rule holds."""
from __future__ import annotations

import argparse
from pathlib import Path

from mmcore.config import load_params
from mmcore.gate import decide, reasons
from mmcore.stages.common import read_json, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Promote the challenger if the gate's rules hold.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    from mmcore import registry

    registry.setup(p.registry.experiment)
    metrics = read_json(args.metrics)
    version = str(metrics["model_version"])
    promoted, rules = decide(metrics, p.gate)
    if promoted:
        registry.promote(p.registry.model_name, version)
    else:
        registry.client().set_model_version_tag(p.registry.model_name, version, "gate", "rejected")
    champion = registry.alias_version(p.registry.model_name, registry.CHAMPION)
    lines = reasons(rules)
    failed = [line for line, r in zip(lines, rules) if not r["passed"]]
    report = {"promoted": promoted, "challenger_version": int(version), "reasons": lines, "rules": rules,
              "champion_version": int(champion) if champion else None,
              "compared_with": (metrics.get("champion") or {}).get("version"),
              "failed": [r["rule"] for r in rules if not r["passed"]], "comparison": metrics.get("comparison")}
    write_json(args.out, report)
    print(f"gate: {'PROMOTED' if promoted else 'rejected'} version {version}; champion is {champion}; "
          f"{len(rules) - len(failed)}/{len(rules)} rules pass" + "".join(f"\n  FAILED {f}" for f in failed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
