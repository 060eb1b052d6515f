"""What a monitoring window asks for: a retrain, an alert, or nothing (params `monitor`).

Retrain, when (a) `min_new_labels` labelled production answers joined since the last retrain the
monitor asked for, (b) the live macro-F1 interval of a version that answered in this window (the one
in production: an old version's poor record is history, not a reason to retrain) lies wholly more
than `max_live_drop` below its gate-set figure and labels joined since then (no new evidence, no
second retrain for it),
or (c) embedding drift held for `drift_windows` windows in a row (asked once per spell). Alerts,
which go to people and retrain nothing: each drifting window, each live drop, and estimated
macro-F1 more than `max_estimated_drop` below the gate-set figure. The state between windows is a
small JSON file the monitor flow keeps next to its reports.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmcore.config import MonitorConfig


@dataclass
class State:
    drift_streak: int = 0          # consecutive windows with embedding drift
    labels_at_retrain: int = 0     # labelled answers when the monitor last asked for a retrain
    windows: list[str] = field(default_factory=list)   # the last windows seen (newest last)

    @classmethod
    def load(cls, path: Path) -> "State":
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)


@dataclass(frozen=True)
class Finding:
    kind: str       # retrain | alert
    reason: str     # new_labels | live_drop | drift | estimated_drop
    detail: str


def live_drops(report: dict[str, Any], max_drop: float) -> list[str]:
    out = []
    serving = set(report["estimated"])   # the versions that answered in this window
    for version, entry in report["quality"]["versions"].items():
        if version not in serving:
            continue
        live, gate = entry.get("live"), entry.get("gate_set")
        if live and gate and live["macro_f1"]["high"] < gate["macro_f1"] - max_drop:
            out.append(f"v{version}: live macro-F1 {live['macro_f1']['observed']:.3f} "
                       f"[{live['macro_f1']['low']:.3f}, {live['macro_f1']['high']:.3f}] on {entry['n']} labels, "
                       f"gate set {gate['macro_f1']:.3f}")
    return out


def decide(report: dict[str, Any], state: State, cfg: MonitorConfig, window: str) -> tuple[list[Finding], State]:
    """The window's findings and the state to keep; `window` names it (the same window twice counts once)."""
    if window in state.windows:
        return [], state
    labelled = report["quality"]["labelled_answers"]
    new_labels = labelled - state.labels_at_retrain
    streak = state.drift_streak + 1 if report["drift"] else 0
    found: list[Finding] = []
    if new_labels >= cfg.min_new_labels:
        found.append(Finding("retrain", "new_labels", f"{new_labels} newly labelled production records joined "
                             f"(monitor.min_new_labels={cfg.min_new_labels})"))
    for drop in live_drops(report, cfg.max_live_drop):
        found.append(Finding("alert", "live_drop", drop))
        if new_labels > 0:
            found.append(Finding("retrain", "live_drop", f"{drop} (monitor.max_live_drop={cfg.max_live_drop})"))
    if report["drift"]:
        found.append(Finding("alert", "drift", f"embedding drift in {', '.join(report['drift'])} "
                             f"({streak} window(s) in a row)"))
    if streak == cfg.drift_windows:
        found.append(Finding("retrain", "drift", f"embedding drift for {streak} windows in a row "
                             f"(monitor.drift_windows={cfg.drift_windows})"))
    for version, est in report["estimated"].items():
        if est.get("drop") is not None and est["drop"] > cfg.max_estimated_drop:
            found.append(Finding("alert", "estimated_drop", f"v{version}: estimated macro-F1 {est['macro_f1']:.3f} "
                                 f"on {est['n']} answers, gate set {est['gate_set_macro_f1']:.3f}"))
    retrain = any(f.kind == "retrain" for f in found)
    new = State(drift_streak=streak, labels_at_retrain=labelled if retrain else state.labels_at_retrain,
                windows=(state.windows + [window])[-200:])
    return found, new
