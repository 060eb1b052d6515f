"""The gate benchmark's simulation: an oracle planned by the default generator, pairs with the true gaps
asked for, whole shipments per gate set, and every scenario judged by the real rules."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmcore.bench.gate import GOALS, SCENARIOS, judge, run_scenarios, served, wilson
from mmcore.bench.gate_sim import Noise, Simulator, draw_shipments, population, scenario_pair
from mmcore.config import load_params
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def world():
    p = load_params(ROOT / "params.yaml")
    p = dataclasses.replace(p, evaluate=dataclasses.replace(p.evaluate, n_boot=200))
    pop = population(p.synth, 6000, seed=3)
    return p, pop, Simulator(pop, Noise(), seed=3)


def test_the_oracle_is_the_default_generators_records(world) -> None:
    p, pop, _ = world
    assert 5700 < len(pop) <= 6000                              # unlabelled records dropped (2 %)
    assert (pop.y != pop.truth).mean() == pytest.approx(p.synth.label_noise, abs=0.01)
    assert {f"hub={h}" for h in p.synth.hubs} <= set(pop.slices)
    assert (pop.evidence[pop.truth == 0] == 0).all()          # normal parcels show no damage evidence


def test_pairs_have_the_true_gaps_asked_for(world) -> None:
    _, pop, sim = world
    better = scenario_pair(sim, "better", 0.03, 0.885)
    assert better.truth["champion_macro_f1"] == pytest.approx(0.885, abs=0.002)
    assert better.truth["true_gap"] == pytest.approx(0.03, abs=0.002) and better.truth["log_loss_gain"] > 0
    hub = scenario_pair(sim, "worse_one_hub", 0.0, 0.885, hub="AMS04", hub_gap=-0.15)
    assert abs(hub.truth["true_gap"]) < 0.002 and hub.truth["true_hub_gap"] == pytest.approx(-0.15, abs=0.01)


def test_gate_sets_are_whole_shipments_and_calib_is_disjoint(world) -> None:
    _, pop, _ = world
    rng = np.random.default_rng(0)
    gate = draw_shipments(pop, 600, rng)
    calib = draw_shipments(pop, 450, rng, exclude=gate)
    ships = set(pop.ship_index[gate])
    assert 600 <= len(gate) < 610 and set(np.flatnonzero(np.isin(pop.ship_index, list(ships)))) == set(gate)
    assert not ships & set(pop.ship_index[calib])


def test_calibration_is_the_train_stages_and_keeps_its_coverage(world) -> None:
    """The bench calibrates each simulated model with mmcore.selective.calibrate (temperature on a val draw,
    sets and thresholds on a calib draw): its sets cover fresh records at 1 - alpha."""
    p, pop, sim = world
    pair = scenario_pair(sim, "equal", 0.0, 0.885)
    rng = np.random.default_rng(1)
    calib = draw_shipments(pop, 1500, rng)
    val = draw_shipments(pop, 500, rng, exclude=calib)
    fresh = draw_shipments(pop, 3000, rng, exclude=np.r_[calib, val])
    probs, cal = served(pop, pair.old, calib, val, p)
    covered = 1 - probs[fresh][np.arange(len(fresh)), pop.y[fresh]] <= cal.set_quantile + 1e-9
    assert covered.mean() >= 1 - p.selective.alpha - 0.03
    assert cal.info["scaling_split"] == "val" and cal.temperature != 1.0
    assert all(t is None or 0.5 <= t < 1.0 for t in cal.confidence_thresholds.values())


def test_every_scenario_is_judged_by_the_rules_and_reported(world) -> None:
    p, pop, sim = world
    pairs = {name: scenario_pair(sim, name, s["gap"], 0.885, s.get("hub"), s.get("hub_gap", 0.0))
             for name, s in SCENARIOS.items()}
    out = run_scenarios(pop, pairs, p, reps=3, gate_records=600, calib_records=450, seed=0)
    assert set(out) == set(GOALS)
    for name, r in out.items():
        assert r["n"] == 3 and sum(r["verdicts"].values()) == 3 and set(r["verdicts"]) <= {
            "promoted", "rejected", "inconclusive"}
        assert r["ci95"][0] <= r["promotion_rate"] <= r["ci95"][1] and r["true_gap"] == r["truth"]["true_gap"]
        assert bool(r["rejected_by"]) == (r["promotion_rate"] < 1.0)      # every refusal names its rules
    verdict, failed, _, width, _ = judge(pop, pairs["equal"], p, np.random.default_rng(5), 600, 450)
    assert width > 0 and (verdict == "promoted") == (not failed)


def test_wilson_interval() -> None:
    assert wilson(0, 300)[0] == 0.0 and 0.01 < wilson(0, 300)[1] < 0.013
    low, high = wilson(240, 300)
    assert low < 0.8 < high and high - low < 0.1
