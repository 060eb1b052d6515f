"""Triggers replayed: 60 simulated days of hourly windows through mmcore.monitor.triggers.decide.

    python -m mmcore.bench triggers [--days 60] [--seeds 50] --out reports/bench/triggers.json

What is simulated: each window's findings (labels joined, live quality, drifting encoders), drawn
from a seeded generator; no model is trained and no record embedded, so a replay takes seconds.
What is real: the state machine and params.yaml's `monitor` settings. Scenarios, each with its goal:

- steady_labelling (Poisson labels, fast and slow): `missed` = 0, where a miss is a time
  `min_new_labels` new labels had accumulated with no retrain asked within `cooldown_hours` after it.
- persistent_live_drop: a version's live interval below its gate-set figure in every window (the
  retrain is never simulated to fix it), labels trickling in: `max_retrains_per_day` <= 1.
- no_shift: each encoder drifts in a window with probability `false_alarm` (0.05, the drift test's
  level), independently; slow labelling. Every drift retrain is spurious: `spurious_per_30_days`
  (mean over seeds) <= 1. `rule_spells_per_30_days` counts the k-of-n rule's spells before the label
  minimum and the cooldown: the rule's own false-alarm rate.
- new_hub (context, no goal): from day 10 each encoder drifts with probability `detection` (0.9, the
  drift bench's goal at a 20% new-hub share): hours from the shift to the drift retrain.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmcore.config import MonitorConfig, load_params
from mmcore.monitor.triggers import State, decide

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
ENCODERS = ("image", "text")
GATE_F1 = 0.88
Window = Callable[[int, np.random.Generator], tuple[list[str], bool]]   # hour -> drifting encoders, live drop


def report(labels: int, drift: list[str], drop: bool) -> dict[str, Any]:
    """The parts of a window report the triggers read (mmcore.monitor.window's keys)."""
    live = {"observed": 0.70, "low": 0.65, "high": 0.75} if drop else {"observed": 0.88, "low": 0.84, "high": 0.91}
    versions = {"2": {"n": labels, "gate_set": {"macro_f1": GATE_F1}, "live": {"macro_f1": live}}}
    return {"volume": 100, "drift": drift, "quality": {"labelled_answers": labels, "labels_joined": labels,
                                                       "versions": versions},
            "estimated": {"2": {"n": 100, "macro_f1": GATE_F1, "gate_set_macro_f1": GATE_F1, "drop": 0.0}}}


def replay(cfg: MonitorConfig, days: int, labels_per_hour: float, window: Window, seed: int) -> dict[str, Any]:
    """One replay: every retrain asked (hour, reason), misses of `min_new_labels` and their delays."""
    rng = np.random.default_rng(seed)
    state, total, pending = State(), 0, None
    asked: list[tuple[int, str]] = []
    delays: list[int] = []
    for hour in range(days * 24):
        total += int(rng.poisson(labels_per_hour))
        drift, drop = window(hour, rng)
        if pending is None and total - state.labels_at_retrain >= cfg.min_new_labels:
            pending = hour               # min_new_labels have accumulated: a retrain is owed from here
        found, state = decide(report(total, drift, drop), state, cfg, f"w{hour}", START + timedelta(hours=hour + 1))
        for f in found:
            if f.kind == "retrain":
                asked.append((hour, f.reason))
                if pending is not None:
                    delays.append(hour - pending)
                    pending = None
    late = [d for d in delays if d > cfg.cooldown_hours]
    open_miss = pending is not None and days * 24 - pending > cfg.cooldown_hours
    per_day = np.bincount([h // 24 for h, _ in asked], minlength=days)
    return {"retrains": len(asked), "by_reason": {r: sum(x == r for _, x in asked) for r in {x for _, x in asked}},
            "missed": len(late) + int(open_miss), "max_delay_hours": max(delays, default=0),
            "max_retrains_per_day": int(per_day.max()) if days else 0, "asked": asked}


def quiet(hour: int, rng: np.random.Generator) -> tuple[list[str], bool]:
    return [], False


def dropping(hour: int, rng: np.random.Generator) -> tuple[list[str], bool]:
    return [], True


def false_alarms(rate: float) -> Window:
    return lambda hour, rng: ([e for e in ENCODERS if rng.random() < rate], False)


def shift_at(hour0: int, rate: float, detection: float) -> Window:
    return lambda hour, rng: ([e for e in ENCODERS if rng.random() < (detection if hour >= hour0 else rate)], False)


def rule_spells(cfg: MonitorConfig, days: int, rate: float, seed: int) -> int:
    """Spells of the k-of-n rule alone (no label minimum, no cooldown) under no shift."""
    rng, history, spells, held = np.random.default_rng(seed), [], 0, False
    for _ in range(days * 24):
        history = (history + [[e for e in ENCODERS if rng.random() < rate]])[-cfg.drift_window_span:]
        now = any(sum(e in w for w in history) >= cfg.drift_windows for e in ENCODERS)
        spells += now and not held
        held = now
    return spells


def run(cfg: MonitorConfig, days: int = 60, seeds: int = 50, false_alarm: float = 0.05,
        detection: float = 0.9) -> dict[str, Any]:
    """Every scenario with its figures and goals (module docstring)."""
    fast = replay(cfg, days, 15.0, quiet, 0)     # min_new_labels in ~13 h: the cooldown defers
    slow = replay(cfg, days, 3.0, quiet, 1)      # in ~67 h: every crossing asked at once
    drop = replay(cfg, days, 5.0, dropping, 2)
    no_shift = [replay(cfg, days, 3.0, false_alarms(false_alarm), 100 + s) for s in range(seeds)]
    spurious = [r["by_reason"].get("drift", 0) * 30 / days for r in no_shift]
    spells = [rule_spells(cfg, days, false_alarm, 100 + s) * 30 / days for s in range(seeds)]
    hub = [replay(cfg, days, 3.0, shift_at(240, false_alarm, detection), 500 + s) for s in range(seeds)]
    to_drift = [next((h - 240 for h, r in rep["asked"] if r == "drift" and h >= 240), None) for rep in hub]
    found = [t for t in to_drift if t is not None]
    out = {
        "settings": {"monitor": asdict(cfg), "days": days, "seeds": seeds, "false_alarm": false_alarm,
                     "detection": detection, "window_hours": 1},
        "steady_labelling": {"fast": _brief(fast, 15.0), "slow": _brief(slow, 3.0),
                             "missed": fast["missed"] + slow["missed"]},
        "persistent_live_drop": {**_brief(drop, 5.0)},
        "no_shift": {"spurious_per_30_days": round(float(np.mean(spurious)), 4),
                     "spurious_per_30_days_max": round(float(np.max(spurious)), 4),
                     "rule_spells_per_30_days": round(float(np.mean(spells)), 4),
                     "max_retrains_per_day": max(r["max_retrains_per_day"] for r in no_shift)},
        "new_hub": {"shift_at_hour": 240, "detected": len(found), "replays": seeds,
                    "hours_to_drift_retrain_median": float(np.median(found)) if found else None,
                    "hours_to_drift_retrain_max": max(found, default=None)},
    }
    out["goals"] = {"missed": {"value": out["steady_labelling"]["missed"], "goal": "== 0",
                               "met": out["steady_labelling"]["missed"] == 0},
                    "max_retrains_per_day": {"value": drop["max_retrains_per_day"], "goal": "<= 1",
                                             "met": drop["max_retrains_per_day"] <= 1},
                    "spurious_per_30_days": {"value": out["no_shift"]["spurious_per_30_days"], "goal": "<= 1",
                                             "met": out["no_shift"]["spurious_per_30_days"] <= 1}}
    return out


def _brief(rep: dict[str, Any], rate: float) -> dict[str, Any]:
    return {"labels_per_hour": rate, **{k: v for k, v in rep.items() if k != "asked"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmcore.bench triggers", description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/triggers.json"))
    args = ap.parse_args(argv)
    began = time.perf_counter()
    result = run(load_params(args.params).monitor, args.days, args.seeds)
    result = {"command": f"python -m mmcore.bench triggers --days {args.days} --seeds {args.seeds}",
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "wall_s": round(time.perf_counter() - began, 2), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["goals"]))
    return 0 if all(g["met"] for g in result["goals"].values()) else 1
