"""The monitor's triggers (mmcore.monitor.triggers) over a run of windows: each condition fires when
it should, once per cause, and a quiet window finds nothing."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flows.monitor import last_window
from mmcore.config import MonitorConfig
from mmcore.monitor.triggers import State, decide

CFG = MonitorConfig(min_new_labels=100, max_live_drop=0.05, drift_windows=2, max_estimated_drop=0.10)


def window(labelled: int = 0, drift: list[str] | None = None, live: tuple[float, float, float] | None = None,
           gate: float = 0.85, estimated: float | None = None) -> dict[str, Any]:
    versions = {}
    if live:
        versions["2"] = {"n": labelled, "gate_set": {"macro_f1": gate},
                         "live": {"macro_f1": dict(zip(("observed", "low", "high"), live))}}
    est = {"2": {"n": 300, "macro_f1": estimated, "gate_set_macro_f1": gate,
                 "drop": None if estimated is None else round(gate - estimated, 4)}}
    return {"quality": {"labelled_answers": labelled, "versions": versions}, "drift": drift or [], "estimated": est}


def run(windows: list[dict[str, Any]]) -> list[list[tuple[str, str]]]:
    state, out = State(), []
    for i, w in enumerate(windows):
        found, state = decide(w, state, CFG, f"w{i}")
        out.append([(f.kind, f.reason) for f in found])
    return out


def test_quiet_windows_find_nothing() -> None:
    assert run([window(), window(labelled=40), window(labelled=99, estimated=0.80)]) == [[], [], []]


def test_new_labels_ask_for_one_retrain_per_min_new_labels() -> None:
    got = run([window(labelled=60), window(labelled=120), window(labelled=180), window(labelled=230)])
    assert got == [[], [("retrain", "new_labels")], [], [("retrain", "new_labels")]]


def test_drift_alerts_every_window_and_retrains_once_per_spell() -> None:
    got = run([window(drift=["image"]), window(drift=["image"]), window(drift=["image", "text"]), window(),
               window(drift=["text"]), window(drift=["text"])])
    assert got == [[("alert", "drift")], [("alert", "drift"), ("retrain", "drift")], [("alert", "drift")], [],
                   [("alert", "drift")], [("alert", "drift"), ("retrain", "drift")]]


def test_live_drop_alerts_and_retrains_only_on_new_evidence() -> None:
    low = (0.60, 0.55, 0.70)                  # interval wholly below 0.85 - 0.05
    got = run([window(labelled=50, live=low), window(labelled=50, live=low), window(labelled=70, live=low),
               window(labelled=90, live=(0.78, 0.70, 0.86))])
    assert got[0] == [("alert", "live_drop"), ("retrain", "live_drop")]
    assert got[1] == [("alert", "live_drop")]                 # no label joined since: no second retrain
    assert got[2] == [("alert", "live_drop"), ("retrain", "live_drop")]
    assert got[3] == []                                       # the interval reaches the gate-set figure's band
    retired = window(labelled=120, live=low)
    retired["estimated"] = {"3": retired["estimated"].pop("2")}   # v3 answers now: v2's record is history
    assert run([retired]) == [[("retrain", "new_labels")]]


def test_estimated_drop_alerts_without_retraining() -> None:
    assert run([window(estimated=0.70)]) == [[("alert", "estimated_drop")]]


def test_a_window_seen_before_is_not_judged_twice(tmp_path: Path) -> None:
    found, state = decide(window(labelled=150), State(), CFG, "w1")
    state.save(tmp_path / "state.json")
    again, same = decide(window(labelled=150), State.load(tmp_path / "state.json"), CFG, "w1")
    assert found and again == [] and same == state


def test_the_default_window_is_the_last_whole_clock_hour() -> None:
    period = last_window(datetime(2026, 12, 1, 10, 4, 59, tzinfo=timezone.utc), 60)
    assert (period.since.hour, period.until.hour, period.until.minute) == (9, 10, 0)
    assert period.batch_id == "capture-20261201T090000Z-20261201T100000Z"
