"""Model selection on the validation split, through DVC experiments (`make sweep`).

    python -m mmcore.sweep run [--apply] [--sweep sweep.yaml] [--out reports/sweep.json]
    python -m mmcore.sweep quality     # after `make run` on the winner: reports/quality.json, the docs' table

`sweep.yaml` holds groups of settings. Each group is a grid queued as DVC experiments of the
`train` stage (`dvc exp run --queue -s -S key=value train`, the current dvc.lock and the warm
embedding cache copied in) starting from the previous group's winner, run one at a time
(`dvc exp run --run-all`); `dvc exp show --json` gives each trial's metric, and the best wins.
Trials log to a throwaway MLflow store in their temporary workspace, so nothing reaches the
registry. With `--apply` the winner's settings are written into params.yaml; `make run` then
trains the winner and scores it once on the gate set, and `quality` writes that one score to
reports/quality.json (committed), which the documentation's quality table is rendered from at build
time (mmcore/docs_gen.py): no figure is typed by hand.

The train stage fits on `train` and early-stops on `val` (`split_records` refuses the gate set),
and `selection_metric` refuses a metric that is not a validation figure.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mmcore.config import load_yaml
from mmcore.stages.common import GateSetAccess, write_json

TRIAL_METRICS = "reports/train.json"      # written by the train stage; a DVC metric
PREFIX = "sweep"


def selection_metric(name: str) -> str:
    """The metric a choice may be made on: a validation figure of the train stage, never the gate set."""
    if "test" in name.lower() or "val" not in name.lower():
        raise GateSetAccess(f"sweep metric {name!r} is not a validation figure: choices are made on the 'val' "
                            f"split (e.g. best_val_macro_f1.fused in {TRIAL_METRICS}), never on the gate set")
    return name


def grid(group: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the group's values, in the order written."""
    keys = list(group)
    return [dict(zip(keys, values)) for values in itertools.product(*(group[k] for k in keys))]


def dvc(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def queue(name: str, settings: dict[str, Any]) -> None:
    sets = [arg for k, v in settings.items() for arg in ("-S", f"{k}={json.dumps(v)}")]
    dvc("exp", "run", "--queue", "-s", "-n", name, "-C", "dvc.lock", "-C", "data/cache", *sets, "train")


def lookup(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def trial_results(names: list[str], metric: str, baseline_rev: str) -> dict[str, dict[str, Any]]:
    """name -> {metric, val figures, params, rev} of finished trials, from `dvc exp show --json`.

    Asked for the commit the trials were queued on: HEAD may have moved while they ran."""
    out = {}
    for baseline in json.loads(dvc("exp", "show", "--json", "--rev", baseline_rev).stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") not in names or rev.get("error"):
                    continue
                data = rev["data"]
                figures = (data.get("metrics") or {}).get(TRIAL_METRICS, {}).get("data") or {}
                out[rev["name"]] = {"rev": rev["rev"], "metric": lookup(figures, metric),
                                    "best_val_macro_f1": figures.get("best_val_macro_f1"),
                                    "params": (data.get("params") or {}).get("params.yaml", {}).get("data", {})}
    return out


def warm_cache(params: Path, settings: list[dict[str, Any]]) -> None:
    """Embed train and val records once per input setting, so the trials read the cache (never the gate set)."""
    import dataclasses

    from mmcore.config import load_params
    from mmcore.features import Featurizer
    from mmcore.stages.common import split_records

    p = load_params(params)
    records = [r for name in ("train", "val") for r in split_records(Path("data/raw"),
                                                                    Path("data/split/splits.parquet"), name)[0]]
    sizes = {(s.get("model.image_size", p.model.image_size), s.get("model.text_max_tokens", p.model.text_max_tokens))
             for s in settings}
    for size, tokens in sorted(sizes):
        cfg = dataclasses.replace(p.model, image_size=size, text_max_tokens=tokens)
        Featurizer(cfg, cache_dir=Path("data/cache"), batch_size=p.train.embed_batch_size, progress=True,
                   backend=p.train.embed_backend).embed(records)


def run_group(group: str, settings: list[dict[str, Any]], base: dict[str, Any], metric: str,
              params: Path) -> dict[str, dict[str, Any]]:
    """Queue the group's grid on top of `base`, run it, and return the trials' results by name."""
    stamp = time.strftime("%m%d%H%M")
    names = [f"{PREFIX}-{group}-{stamp}-{i}".replace("_", "-") for i in range(len(settings))]
    warm_cache(params, [{**base, **s} for s in settings])
    baseline_rev = subprocess.run(["git", "rev-parse", "HEAD"], text=True, capture_output=True,
                                  check=True).stdout.strip()
    for name, s in zip(names, settings):
        queue(name, {**base, **s})
    print(f"sweep: {group}: {len(names)} trials queued; running them one at a time", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}   # never the real registry
    subprocess.run(["dvc", "exp", "run", "--run-all", "--jobs", "1"], check=False, env=env)
    found = trial_results(names, metric, baseline_rev)
    failed = [n for n in names if n not in found or found[n]["metric"] is None]
    if failed:
        raise RuntimeError(f"sweep: trials {failed} did not finish; see `dvc queue status` and `dvc queue logs NAME`")
    return {n: {**found[n], "settings": {**base, **s}} for n, s in zip(names, settings)}


def sweep(spec: dict[str, Any], params: Path) -> dict[str, Any]:
    metric = selection_metric(spec["metric"])
    base: dict[str, Any] = {}
    groups = {}
    for group, axes in spec["groups"].items():
        trials = run_group(group, grid(axes), base, metric, params)
        winner = max(trials, key=lambda n: trials[n]["metric"])
        base = trials[winner]["settings"]
        groups[group] = {"winner": winner, "trials": [{"name": n, "settings": t["settings"], "metric": t["metric"],
                                                        "best_val_macro_f1": t["best_val_macro_f1"], "rev": t["rev"]}
                                                       for n, t in trials.items()]}
        print(f"sweep: {group}: winner {winner} {metric} {trials[winner]['metric']:.4f} with {base}", flush=True)
    return {"metric": metric, "split": "val", "winner": base, "groups": groups,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": "python -m mmcore.sweep"}


def as_overrides(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for dotted, value in settings.items():
        section, _, key = dotted.partition(".")
        out.setdefault(section, {})[key] = value
    return out


def quality(sweep_report: dict[str, Any], metrics: dict[str, Any], ablation: dict[str, Any],
            params: dict[str, Any]) -> dict[str, Any]:
    """The sweep's winner and its one score on the gate set; refuses a model trained on other settings."""
    differs = {k: (v, lookup(params, k)) for k, v in sweep_report["winner"].items() if lookup(params, k) != v}
    if differs:
        raise ValueError(f"params.yaml differs from the sweep's winner {differs} (winner, params): run "
                         "`python -m mmcore.sweep run --apply` or apply them, then `make run`, then this again")
    last = list(sweep_report["groups"].values())[-1]
    best = next(t for t in last["trials"] if t["name"] == last["winner"])
    return {"winner": sweep_report["winner"], "val_macro_f1": best["best_val_macro_f1"],
            "gate_set": {"model_version": metrics["model_version"], "macro_f1": metrics["macro_f1"],
                         "accuracy": metrics["accuracy"], "ece": metrics["ece"], "n": metrics["n"],
                         "unimodal_macro_f1": metrics["unimodal_macro_f1"],
                         "modality_removed": ablation["modality_removed"], "targets": ablation["targets"]},
            "sweep_date": sweep_report["date"], "scored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "commands": ["make sweep", "python -m mmcore.sweep run --apply", "make run",
                         "python -m mmcore.sweep quality"]}


def render(q: dict[str, Any]) -> str:
    """The quality table of the documentation (docs/model.md), from reports/quality.json."""
    g, val = q["gate_set"], q["val_macro_f1"]
    rows = [("fused (image + text + sensor)", val["fused"],
             f"{g['macro_f1']:.3f} (accuracy {g['accuracy']:.3f}, ECE {g['ece']:.3f})")]
    rows += [(f"{m} only", val[m], f"{g['unimodal_macro_f1'][m]:.3f}") for m in ("image", "sensor", "text")]
    rows += [(f"fused, {m} removed at test time", None,
              f"{r['macro_f1']:.3f} (drop {r['drop']:.3f})") for m, r in g["modality_removed"].items()]
    lines = [f"Settings chosen on the validation split by `make sweep` ({q['sweep_date'][:10]}): "
             + ", ".join(f"`{k}: {v}`" for k, v in q["winner"].items()) + f". Scored once on the gate set "
             f"({g['n']} records, model version {g['model_version']}, {q['scored'][:10]}; reports/quality.json).",
             "", "| model (same class, same data, same budget) | val macro-F1 (selection) | gate-set macro-F1 |",
             "|---|---|---|"]
    lines += [f"| {name} | {'' if v is None else f'{v:.3f}'} | {gate} |" for name, v, gate in rows]
    met = ", ".join(f"{k} {t['value']:.3f} {t['op']} {t['target']} ({'met' if t['met'] else 'not met'})"
                    for k, t in g["targets"].items())
    return "\n".join([*lines, "", f"Quality targets (reports/ablation.json): {met}."])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Choose model settings on the validation split (DVC experiments).")
    ap.add_argument("command", choices=["run", "quality", "readme"],
                    help="run: the sweep; quality (readme: its former name): the winner's gate-set score")
    ap.add_argument("--sweep", type=Path, default=Path("sweep.yaml"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=Path("reports/sweep.json"))
    ap.add_argument("--apply", action="store_true", help="write the winner's settings into params.yaml")
    args = ap.parse_args(argv)
    if args.command in ("quality", "readme"):
        from mmcore.stages.common import read_json

        q = quality(read_json(args.out), read_json(Path("reports/metrics.json")),
                    read_json(Path("reports/ablation.json")), yaml.safe_load(args.params.read_text()))
        write_json(Path("reports/quality.json"), q)
        print(f"sweep: reports/quality.json from model version {q['gate_set']['model_version']} "
              "(the docs' quality table renders it: mkdocs build)")
        return 0
    if not Path("dvc.lock").is_file() or not Path("data/split/splits.parquet").is_file():
        print("sweep: no ingested and split data here: run `make run` (or `dvc repro split`) first", file=sys.stderr)
        return 2
    spec = load_yaml(args.sweep.read_text(encoding="utf-8"))   # as params.yaml reads: 1e-4 is a number
    report = sweep(spec, args.params)
    write_json(args.out, report)
    if args.apply:
        from mmcore.config import apply_overrides

        changed = apply_overrides(args.params, as_overrides(report["winner"]))
        print(f"sweep: params.yaml {'updated: ' + ', '.join(changed) if changed else 'already holds the winner'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
