"""The monitor's triggers (mmcore.monitor.triggers) as a state machine: each condition fires when it
should, once per cause; counters only grow; no two monitor retrains inside the cooldown whatever the
windows say; an operator's retrain resets the counters; old state files load; and the 60-day replay
(mmcore.bench.triggers) meets its goals."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.monitor import last_window
from mmcore.bench import triggers as bench
from mmcore.config import MonitorConfig
from mmcore.monitor.triggers import OperatorRetrain, State, decide, joined_labels
from tests.conftest import ROOT

CFG = MonitorConfig(min_new_labels=100, max_live_drop=0.05, drift_windows=2, drift_window_span=3,
                    max_estimated_drop=0.10, cooldown_hours=24, min_retrain_labels=10)
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def window(labelled: int = 0, drift: list[str] | None = None, live: tuple[float, float, float] | None = None,
           gate: float = 0.85, estimated: float | None = None) -> dict[str, Any]:
    versions = {}
    if live:
        versions["2"] = {"n": labelled, "gate_set": {"macro_f1": gate},
                         "live": {"macro_f1": dict(zip(("observed", "low", "high"), live))}}
    est = {"2": {"n": 300, "macro_f1": estimated, "gate_set_macro_f1": gate,
                 "drop": None if estimated is None else round(gate - estimated, 4)}}
    return {"quality": {"labelled_answers": labelled, "labels_joined": labelled, "versions": versions},
            "drift": drift or [], "estimated": est}


def run(windows: list[dict[str, Any]], hours: float = 25) -> list[list[tuple[str, str]]]:
    """Each window `hours` after the last (default: past the cooldown), as (kind, reason) pairs."""
    state, out = State(), []
    for i, w in enumerate(windows):
        found, state = decide(w, state, CFG, f"w{i}", T0 + timedelta(hours=hours * i))
        out.append([(f.kind, f.reason) for f in found])
    return out


def test_quiet_windows_find_nothing() -> None:
    assert run([window(), window(labelled=40), window(labelled=99, estimated=0.80)]) == [[], [], []]


def test_new_labels_ask_for_one_retrain_per_min_new_labels() -> None:
    got = run([window(labelled=60), window(labelled=120), window(labelled=180), window(labelled=230)])
    assert got == [[], [("retrain", "new_labels")], [], [("retrain", "new_labels")]]


def test_the_label_counter_is_cumulative_so_steady_labelling_keeps_firing() -> None:
    """A rolling count (labelled_answers over the lookback) levels off; the cumulative one does not."""
    steady = [window(labelled=100 * (i + 1)) for i in range(6)]
    for w in steady:
        w["quality"]["labelled_answers"] = 100      # the 30-day rolling count stays flat
    assert run(steady) == [[("retrain", "new_labels")]] * 6


def test_drift_retrains_on_k_of_n_windows_once_per_spell() -> None:
    img, txt = ["image"], ["text"]
    got = run([window(labelled=15 * (i + 1), drift=d) for i, d in
               enumerate([img, [], img, img, img, [], [], [], txt, img, txt])])
    retrains = [i for i, g in enumerate(got) if ("retrain", "drift") in g]
    assert retrains == [2, 10]          # 2 of 3 for image at w2 (the spell lasts to w5); text 2 of 3 at w10
    assert ("alert", "drift") in got[0] and got[0] == [("alert", "drift")]   # one window alerts, never retrains


def test_drift_needs_new_labels_before_it_retrains() -> None:
    got = run([window(labelled=0, drift=["image"]), window(labelled=5, drift=["image"])])
    assert got[1] == [("alert", "drift"), ("deferred", "drift")]


def test_live_drop_retrains_only_on_enough_new_evidence() -> None:
    low = (0.60, 0.55, 0.70)                  # interval wholly below 0.85 - 0.05
    got = run([window(labelled=50, live=low), window(labelled=51, live=low), window(labelled=62, live=low),
               window(labelled=90, live=(0.78, 0.70, 0.86))])
    assert got[0] == [("alert", "live_drop"), ("retrain", "live_drop")]
    assert got[1] == [("alert", "live_drop"), ("deferred", "live_drop")]   # one label is not new evidence
    assert got[2] == [("alert", "live_drop"), ("retrain", "live_drop")]
    assert got[3] == []                                       # the interval reaches the gate-set figure's band
    retired = window(labelled=120, live=low)
    retired["estimated"] = {"3": retired["estimated"].pop("2")}   # v3 answers now: v2's record is history
    assert run([retired]) == [[("retrain", "new_labels")]]


def test_a_persistent_drop_asks_at_most_once_per_cooldown() -> None:
    low = (0.60, 0.55, 0.70)
    got = run([window(labelled=20 * (i + 1), live=low) for i in range(30)], hours=1)
    asked = [i for i, g in enumerate(got) if any(k == "retrain" for k, _ in g)]
    assert asked == [0, 24]
    assert ("deferred", "live_drop") in got[1]


def test_estimated_drop_alerts_without_retraining() -> None:
    assert run([window(estimated=0.70)]) == [[("alert", "estimated_drop")]]


def test_a_window_seen_before_is_not_judged_twice(tmp_path: Path) -> None:
    found, state = decide(window(labelled=150), State(), CFG, "w1", T0)
    state.save(tmp_path / "state.json")
    again, same = decide(window(labelled=150), State.load(tmp_path / "state.json"), CFG, "w1", T0)
    assert found and again == [] and same == state


def test_an_operator_retrain_resets_the_counters_without_a_cooldown(tmp_path: Path) -> None:
    _, state = decide(window(labelled=90, drift=["image"]), State(), CFG, "w0", T0)
    op = OperatorRetrain(at=(T0 + timedelta(hours=1)).isoformat(), labels_joined=95)
    op.save(tmp_path / "op.json")
    op = OperatorRetrain.load(tmp_path / "op.json")
    found, state = decide(window(labelled=150, drift=["image"]), state, CFG, "w1", T0 + timedelta(hours=2), op)
    assert [f.reason for f in found if f.kind == "retrain"] == []    # 55 since the operator's: not 150
    assert state.labels_at_retrain == 95 and state.retrain_asked_at is None and state.drift_history == [["image"]]
    found, state = decide(window(labelled=196), state, CFG, "w2", T0 + timedelta(hours=3), op)
    assert [(f.kind, f.reason) for f in found] == [("retrain", "new_labels")]   # no cooldown from the operator's


def test_an_operator_retrain_is_noted_with_the_labels_it_trained_on(tmp_path: Path) -> None:
    import pandas as pd

    (tmp_path / "raw").mkdir()
    pd.DataFrame({"prediction_id": ["p1", "p2", None], "label_source": ["claim", "review", "landing"]}).to_parquet(
        tmp_path / "raw" / "records.parquet")
    OperatorRetrain.note(tmp_path / "op.json", T0, tmp_path / "raw")
    assert OperatorRetrain.load(tmp_path / "op.json") == OperatorRetrain(at=T0.isoformat(), labels_joined=2)
    OperatorRetrain.note(tmp_path / "none.json", T0, tmp_path / "missing")   # no data/raw yet: the window's count
    assert OperatorRetrain.load(tmp_path / "none.json").labels_joined is None


def test_a_state_file_from_an_older_version_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"drift_streak": 3, "labels_at_retrain": 120, "windows": ["w1"]}))
    state = State.load(path)
    assert state.labels_at_retrain == 120 and state.windows == ["w1"] and state.retrain_asked_at is None
    assert decide(window(labelled=230), state, CFG, "w2", T0)[0][0].reason == "new_labels"


def test_joined_labels_counts_feed_labels_on_captured_answers() -> None:
    import pandas as pd

    profile = pd.DataFrame({"prediction_id": ["p1", "p2", None, "p4", "p5"],
                            "label_source": ["inspection", "review", "inspection", "landing", None]})
    assert joined_labels(profile) == 2


step = st.fixed_dictionaries({
    "labels": st.integers(0, 60), "drift": st.lists(st.sampled_from(["image", "text"]), unique=True, max_size=2),
    "drop": st.booleans(), "hours": st.sampled_from([0.25, 1, 1, 6, 23, 25]), "operator": st.booleans(),
    "volume": st.sampled_from([0, 100, 100, 100]), "repeat": st.booleans()})


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=1, max_size=60))
def test_no_two_monitor_retrains_inside_the_cooldown_and_counters_only_grow(steps: list[dict[str, Any]]) -> None:
    state, at, total, asked, op = State(), T0, 0, [], None
    for i, s in enumerate(steps):
        at, total = at + timedelta(hours=s["hours"]), total + s["labels"]
        if s["operator"]:
            op = OperatorRetrain(at=at.isoformat(), labels_joined=total)
        w = window(labelled=total, drift=s["drift"], live=(0.6, 0.55, 0.7) if s["drop"] else None)
        w["volume"] = s["volume"]
        name = f"w{i - 1}" if s["repeat"] and i else f"w{i}"
        before = state
        found, state = decide(w, state, CFG, name, at, op)
        retrains = [f for f in found if f.kind == "retrain"]
        assert len(retrains) <= 1
        assert state.labels_seen >= before.labels_seen and state.labels_at_retrain >= before.labels_at_retrain
        assert state.labels_at_retrain <= state.labels_seen
        if name in before.windows:          # a window seen before changes nothing
            assert found == [] and state == before
        if retrains:
            assert retrains[0].reason == "new_labels" or total - before.labels_at_retrain >= CFG.min_retrain_labels
            asked.append(at)
    assert all(b - a >= timedelta(hours=CFG.cooldown_hours) for a, b in zip(asked, asked[1:]))


def test_sixty_days_replayed_meet_the_trigger_goals() -> None:
    """The replay `make bench` runs; writes reports/bench/triggers.json."""
    out = ROOT / "reports" / "bench" / "triggers.json"
    assert bench.main(["--params", str(ROOT / "params.yaml"), "--out", str(out)]) == 0   # every goal met
    result = json.loads(out.read_text())
    assert result["steady_labelling"]["missed"] == 0
    assert result["steady_labelling"]["fast"]["retrains"] >= 55         # one a day at 360 labels a day
    assert result["persistent_live_drop"]["max_retrains_per_day"] <= 1
    assert result["persistent_live_drop"]["by_reason"] == {"live_drop": result["persistent_live_drop"]["retrains"]}
    assert result["no_shift"]["spurious_per_30_days"] <= 1
    assert result["new_hub"]["detected"] == result["new_hub"]["replays"]


def test_the_default_window_is_the_last_whole_clock_hour() -> None:
    period = last_window(datetime(2026, 12, 1, 10, 4, 59, tzinfo=timezone.utc), 60)
    assert (period.since.hour, period.until.hour, period.until.minute) == (9, 10, 0)
    assert period.batch_id == "capture-20261201T090000Z-20261201T100000Z"
