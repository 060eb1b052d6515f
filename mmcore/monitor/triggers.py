"""What a monitoring window asks for: a retrain, an alert, or nothing (params `monitor`).

A small state machine: the state between windows is a JSON file the monitor flow keeps next to its
reports (`State`), and `decide` moves it one window on. Its rules, each one a guard against a way
triggers fail when left running for months:

- Counters are monotone. `labels_seen` is the cumulative count of feed labels joined onto captured
  answers (`joined_labels`, the window report's `quality.labels_joined`), never a rolling count: a
  30-day count compared with a cumulative one stops growing under steady labelling, and the trigger
  falls silent. New labels = `labels_seen - labels_at_retrain`.
- Retrain reasons, by priority: `new_labels` (at least `min_new_labels` new labels); `live_drop` (the
  live macro-F1 interval of a version that answered in this window lies wholly more than
  `max_live_drop` below its gate-set figure); `drift` (an encoder drifted in `drift_windows` of the
  last `drift_window_span` tested windows: a k-of-n rule, so one false alarm never retrains, asked once
  per spell). `live_drop` and `drift` also need `min_retrain_labels` new labels: a retrain learns only
  from labelled records, and a drop persists for the whole lookback, so without new evidence it would
  ask again every hour.
- A cooldown: at most one monitor-started retrain per `cooldown_hours`. A reason that holds inside it
  is `deferred` (on the page, not sent to people) and asked for once the cooldown ends, if it still holds.
- An operator-started retrain (flows/retrain.py records it, `OperatorRetrain`) is never blocked: it
  resets the counters and the drift history, and leaves the cooldown alone.

Alerts go to people and retrain nothing: each drifting window, each live drop, and estimated macro-F1
more than `max_estimated_drop` below the gate-set figure. One window asks for at most one retrain (one
event), naming the reasons that held. A state file from an older version loads: missing fields take
their defaults and fields no longer used are ignored.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from mmcore.config import MonitorConfig
from mmcore.data.ingest import write_atomic
from mmcore.schema import LABEL_SOURCES


@dataclass
class State:
    labels_seen: int = 0             # most feed labels joined onto answers any window saw (monotone)
    labels_at_retrain: int = 0       # labels_seen when a retrain was last asked for (or an operator ran one)
    retrain_asked_at: str | None = None      # when the monitor last asked for a retrain (the cooldown's start)
    operator_retrain_at: str | None = None   # the operator-started retrain the counters were last reset for
    drift_history: list[list[str]] = field(default_factory=list)  # drifting encoders per tested window, newest last
    drift_spell: bool = False        # the drift rule held and a retrain was asked during it: not again until it ends
    windows: list[str] = field(default_factory=list)   # the last windows seen (newest last)

    @classmethod
    def load(cls, path: Path) -> "State":
        """The kept state; a file from an older version loads with defaults for what it lacks."""
        if not path.is_file():
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})

    def save(self, path: Path) -> None:
        write_atomic(path, lambda p: p.write_text(json.dumps(asdict(self), indent=2)))


@dataclass(frozen=True)
class OperatorRetrain:
    """A retrain someone started (not the monitor's event): when, and the labels joined by then."""

    at: str
    labels_joined: int | None = None

    @classmethod
    def load(cls, path: Path) -> "OperatorRetrain | None":
        return cls(**json.loads(path.read_text())) if path.is_file() else None

    def save(self, path: Path) -> None:
        write_atomic(path, lambda p: p.write_text(json.dumps(asdict(self), indent=2)))

    @classmethod
    def note(cls, path: Path, at: datetime, raw: Path) -> None:
        """Record a retrain the monitor did not ask for (the CLI, nightly, poll-landing), with the labels
        joined in data/raw (`raw`) that it trained on."""
        records = raw / "records.parquet"
        labels = (joined_labels(pd.read_parquet(records, columns=["prediction_id", "label_source"]))
                  if records.is_file() else None)
        cls(at=at.isoformat(), labels_joined=labels).save(path)


@dataclass(frozen=True)
class Finding:
    kind: str       # retrain | alert | deferred (a retrain reason held inside the cooldown or before enough labels)
    reason: str     # new_labels | live_drop | drift | estimated_drop
    detail: str


def joined_labels(profile: pd.DataFrame) -> int:
    """The monotone counter: captured answers (a prediction_id) whose label came from the feed. data/raw
    only grows, and a later label for a labelled record replaces it, so the count never falls."""
    return int((profile["prediction_id"].notna() & profile["label_source"].isin(LABEL_SOURCES)).sum())


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


def drifting(history: list[list[str]], cfg: MonitorConfig) -> list[str]:
    """Encoders that drifted in at least `drift_windows` of the last `drift_window_span` tested windows."""
    recent = history[-cfg.drift_window_span:]
    return sorted(e for e in {e for w in recent for e in w} if sum(e in w for w in recent) >= cfg.drift_windows)


def reset_by_operator(state: State, operator: OperatorRetrain | None, labels: int) -> State:
    """An operator's retrain not yet seen: counters and drift history start again (cooldown untouched)."""
    if operator is None or operator.at == state.operator_retrain_at:
        return state
    at = labels if operator.labels_joined is None else min(operator.labels_joined, labels)
    return State(**{**asdict(state), "labels_at_retrain": max(state.labels_at_retrain, at), "drift_history": [],
                    "drift_spell": False, "operator_retrain_at": operator.at})


def alerts(report: dict[str, Any], drops: list[str], cfg: MonitorConfig, rule: list[str]) -> list[Finding]:
    found = [Finding("alert", "live_drop", d) for d in drops]
    if report["drift"]:
        found.append(Finding("alert", "drift", f"embedding drift in {', '.join(report['drift'])}"
                             + (f" (in {cfg.drift_windows} of the last {cfg.drift_window_span} windows: "
                                f"{', '.join(rule)})" if rule else "")))
    if report.get("drift_below_effect"):    # significant but small: people may look, no retrain counts it
        found.append(Finding("alert", "drift", f"embedding drift in {', '.join(report['drift_below_effect'])} "
                             f"below the minimum effect (held-out AUC < monitor.min_drift_auc={cfg.min_drift_auc})"))
    for version, est in report["estimated"].items():
        if est.get("drop") is not None and est["drop"] > cfg.max_estimated_drop:
            like = est.get("gate_set_cbpe_macro_f1", est.get("gate_set_macro_f1"))
            found.append(Finding("alert", "estimated_drop", f"v{version}: estimated macro-F1 {est['macro_f1']:.3f} "
                                 f"on {est['n']} answers, estimated {like:.3f} on the gate set"))
    return found


def reasons(new: int, drops: list[str], rule: list[str], spell: bool, cfg: MonitorConfig) -> list[tuple[str, str]]:
    """The retrain reasons that hold, by priority, each with its detail."""
    out = []
    if new >= cfg.min_new_labels:
        out.append(("new_labels", f"{new} newly labelled production records joined "
                                  f"(monitor.min_new_labels={cfg.min_new_labels})"))
    evidence = f"{new} new labels (monitor.min_retrain_labels={cfg.min_retrain_labels})"
    if drops:
        out.append(("live_drop", f"{drops[0]} (monitor.max_live_drop={cfg.max_live_drop}); {evidence}"))
    if rule and not spell:
        out.append(("drift", f"embedding drift in {', '.join(rule)} in {cfg.drift_windows} of the last "
                             f"{cfg.drift_window_span} windows (monitor.drift_windows); {evidence}"))
    return out


def cooling(state: State, at: datetime, cfg: MonitorConfig) -> datetime | None:
    """When the cooldown of the monitor's last retrain ends, if `at` is inside it."""
    if state.retrain_asked_at is None:
        return None
    until = datetime.fromisoformat(state.retrain_asked_at) + timedelta(hours=cfg.cooldown_hours)
    return until if at < until else None


def decide(report: dict[str, Any], state: State, cfg: MonitorConfig, window: str, at: datetime,
           operator: OperatorRetrain | None = None) -> tuple[list[Finding], State]:
    """The window's findings and the state to keep. `window` names it (the same window twice counts
    once), `at` is its end (the cooldown's clock), `operator` the latest operator-started retrain."""
    if window in state.windows:
        return [], state
    q = report["quality"]
    labels = max(state.labels_seen, int(q.get("labels_joined", q["labelled_answers"])))
    state = reset_by_operator(state, operator, labels)
    history = state.drift_history
    if report.get("volume", 1):   # a window without records was not tested: it neither drifts nor clears
        history = (history + [sorted(report["drift"])])[-cfg.drift_window_span:]
    rule, drops, new = drifting(history, cfg), live_drops(report, cfg.max_live_drop), labels - state.labels_at_retrain
    found = alerts(report, drops, cfg, rule)
    held = reasons(new, drops, rule, state.drift_spell and bool(rule), cfg)
    ready = [(r, d) for r, d in held if r == "new_labels" or new >= cfg.min_retrain_labels]
    wait = cooling(state, at, cfg)
    nxt = State(labels_seen=labels, labels_at_retrain=state.labels_at_retrain, retrain_asked_at=state.retrain_asked_at,
                operator_retrain_at=state.operator_retrain_at, drift_history=history,
                drift_spell=state.drift_spell and bool(rule), windows=(state.windows + [window])[-200:])
    if ready and wait is None:
        (reason, detail), *others = ready
        also = f"; also: {'; '.join(f'{r}: {d}' for r, d in others)}" if others else ""
        found.append(Finding("retrain", reason, detail + also))
        nxt.labels_at_retrain, nxt.retrain_asked_at, nxt.drift_spell = labels, at.isoformat(), bool(rule)
    else:
        for reason, detail in held:
            why = (f"cooldown until {wait.isoformat()} (monitor.cooldown_hours={cfg.cooldown_hours:g})"
                   if wait is not None and (reason, detail) in ready else "too few new labels")
            found.append(Finding("deferred", reason, f"{detail}: waits, {why}"))
    return found, nxt
