"""Operating characteristics of the gate behind `make bench` (reports/bench/gate.json).

    python -m mmcore.bench gate --out reports/bench/gate.json [--reps 300 --oracle 24000]
    python -m mmcore.bench gate --sweep --reps 100 --out reports/bench/gate-sweep.json

The gate decides alone, so how often it promotes is measured, not assumed: promotion rate against
the true gap. The oracle is 24,000 records planned by the default generator; the champion and
challenger are simulated per-record probabilities with a controlled true macro-F1 gap on it
(mmcore.bench.gate_sim: what is real and what is simulated). Every repetition draws a new gate set
and a new calib split (whole shipments, the default split's sizes), calibrates each model's
abstention on its calib split, builds the evaluation report as the evaluate stage does (scores,
slices, abstention, the shipment bootstrap with the proper scores and the simultaneous band) and
judges it with the real rules (`mmcore.gate.decide`, selective rules included):

  better          challenger +0.03 macro-F1 on the oracle        goal: promoted >= 0.80
  equal           the same model retrained (own noise redrawn)   goal: <= 0.10
  slightly_worse  -0.01                                          goal: <= 0.05
  worse_one_hub   equal overall, -0.15 on one hub                goal: <= 0.05

Latency, the held-out proof and the behavioural suites need the request path and real models:
they are fed identical passing values (`not_simulated`). `--sweep` runs the scenarios over the
gate's margins, proper score and gate-set size: how params.yaml's values were chosen.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mmcore.bench.gate_sim import Noise, Pair, Population, Simulator, draw_shipments, population, scenario_pair
from mmcore.bootstrap import ece_classwise_interval, paired_bootstrap
from mmcore.config import CLASSES, Params, load_params
from mmcore.evaluate import ece_classwise, score, slice_scores
from mmcore.gate import BEHAVIOUR_SUITES, decide, verdict
from mmcore.selective.calibrate import Calibration, calibrate, scale
from mmcore.selective.evaluate import routing_metrics

GOALS = {"better": (">=", 0.80), "equal": ("<=", 0.10), "slightly_worse": ("<=", 0.05), "worse_one_hub": ("<=", 0.05)}
SCENARIOS = {"better": {"gap": 0.03}, "equal": {"gap": 0.0}, "slightly_worse": {"gap": -0.01},
             "worse_one_hub": {"gap": 0.0, "hub": "AMS04", "hub_gap": -0.15}}
NOT_SIMULATED = ("max_latency_p95_ms", "gate_set_held_out", "behaviour_regression")
CHAMPION_F1 = 0.885          # the default model's gate-set macro-F1 (reports/metrics.json of `make run`)


def served(pop: Population, probs: np.ndarray, calib: np.ndarray, val: np.ndarray, p: Params) -> tuple[np.ndarray, Calibration]:
    """One model's calibration as the train stage makes it (mmcore.selective.calibrate: temperature on the val
    draw, conformal sets and Learn then Test on the calib draw) and its probabilities as served."""
    cal = calibrate(probs[calib], pop.y[calib], np.zeros(len(calib)), np.zeros(len(calib), bool), p.selective,
                    CLASSES, pop.shipments[calib], scaling=(probs[val], pop.y[val]))
    return scale(probs, cal), cal


def model_block(pop: Population, probs: np.ndarray, cal: Calibration, gate: np.ndarray, p: Params) -> dict[str, Any]:
    """One model's part of the evaluation report on the gate set (as mmcore.stages.evaluate writes it);
    `probs` are the served ones (its temperature applied)."""
    y, pr = pop.y[gate], probs[gate]
    slices = {k: v[gate] for k, v in pop.slices.items()}
    m = score(y, pr, list(CLASSES), p.evaluate.ece_bins)
    m["ece_classwise"] = ece_classwise(pr, y, p.evaluate.ece_bins)
    if m["ece_classwise"] > p.gate.max_ece_classwise:    # the interval's low end is below the point: only then needed
        m["ece_classwise_ci"] = ece_classwise_interval(y, pr, pop.shipments[gate], 500, 0, p.evaluate.ci,
                                                       p.evaluate.ece_bins)
    m["slices"] = slice_scores(y, pr.argmax(1), slices, len(CLASSES))
    m["selective"] = routing_metrics(pr, y, np.zeros(len(y)), cal, list(CLASSES), pop.shipments[gate], n_boot=500)
    m["latency_ms"] = {"p50": 40.0, "p95": 90.0}
    m["behaviour"] = {s: {"failure_rate": 0.1, "n": 100, "examples": []} for s in BEHAVIOUR_SUITES}
    return m


def judge(pop: Population, pair: Pair, p: Params, rng: np.random.Generator, gate_records: int,
          calib_records: int) -> tuple[str, list[str], float, float, bool]:
    """One repetition: a fresh gate set and calib split, the report; the verdict, failed rules, observed
    macro-F1 gain, the width of its interval, and whether the old rule (its low end above 0) held."""
    gate = draw_shipments(pop, gate_records, rng)
    calib = draw_shipments(pop, calib_records, rng, exclude=gate)
    val = draw_shipments(pop, calib_records, rng, exclude=np.r_[gate, calib])
    (new, cal_new), (old, cal_old) = served(pop, pair.new, calib, val, p), served(pop, pair.old, calib, val, p)
    metrics = {**model_block(pop, new, cal_new, gate, p), "champion": {"version": 1, **model_block(
        pop, old, cal_old, gate, p)}, "leak": {"challenger": {"records": 0}, "champion": {"records": 0}}}
    metrics["comparison"] = paired_bootstrap(
        pop.y[gate], new[gate].argmax(1), old[gate].argmax(1), pop.shipments[gate], list(CLASSES),
        {k: v[gate] for k, v in pop.slices.items()}, p.evaluate.n_boot, int(rng.integers(1 << 31)), p.evaluate.ci,
        probs=(new[gate], old[gate]), family_min_shipments=p.gate.min_slice_shipments)
    rules = decide(metrics, p.gate, p.selective)[1]
    comp = metrics["comparison"]
    return (verdict(rules), [r["rule"] for r in rules if not r["passed"]], comp["observed"], comp["high"] - comp["low"],
            comp["low"] > 0)


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson interval of a proportion k/n."""
    if n == 0:
        return [0.0, 1.0]
    ph, d = k / n, 1 + z * z / n
    mid, half = (ph + z * z / (2 * n)) / d, z * np.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / d
    return [float(max(0.0, mid - half)), float(min(1.0, mid + half))]


def summarise(name: str, pair: Pair, runs: list[tuple[str, list[str], float, float, bool]]) -> dict[str, Any]:
    op, goal = GOALS[name]
    promoted = sum(r[0] == "promoted" for r in runs)
    rate = promoted / len(runs)
    gains, widths = np.array([r[2] for r in runs]), np.array([r[3] for r in runs])
    return {"promotion_rate": rate, "n": len(runs), "ci95": wilson(promoted, len(runs)), "ci_method": "wilson",
            "goal": f"{op} {goal}", "met": bool(rate >= goal if op == ">=" else rate <= goal),
            "true_gap": pair.truth["true_gap"], "truth": pair.truth,
            "verdicts": dict(Counter(r[0] for r in runs)),
            "old_rule_rate": float(np.mean([r[4] for r in runs])),   # macro-F1 gain's low > 0, the rule it replaced
            "observed_gain": {"mean": float(gains.mean()), "sd": float(gains.std()),
                              "ci_width_mean": float(widths.mean())},
            "rejected_by": dict(Counter(rule for r in runs for rule in r[1]).most_common())}


def pairs(sim: Simulator, better_gap: float = SCENARIOS["better"]["gap"],
          only: tuple[str, ...] = tuple(SCENARIOS), champion_f1: float = CHAMPION_F1) -> dict[str, Pair]:
    todo = {**SCENARIOS, "better": {"gap": better_gap}}
    return {name: scenario_pair(sim, name, s["gap"], champion_f1, s.get("hub"), s.get("hub_gap", 0.0))
            for name, s in todo.items() if name in only}


def run_scenarios(pop: Population, todo: dict[str, Pair], p: Params, reps: int, gate_records: int,
                  calib_records: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {name: summarise(name, pair, [judge(pop, pair, p, rng, gate_records, calib_records) for _ in range(reps)])
            for name, pair in todo.items()}


def split_sizes(p: Params, test_fraction: float | None = None) -> tuple[int, int]:
    """Gate-set and calib records of the default data (synth batches x records, split fractions)."""
    total = p.synth.batches * p.synth.records_per_batch * (1 - p.synth.unlabelled_share)
    return round(total * (test_fraction or p.split.test_fraction)), round(total * p.split.calib_fraction)


def sweep(pop: Population, todo: dict[str, Pair], p: Params, reps: int, seed: int) -> list[dict[str, Any]]:
    """Margins, proper score and gate-set size (test fraction of the default data): rates per combination."""
    out = []
    for margin, proper, frac in itertools.product((0.01, 0.02, 0.03), ("log_loss", "brier"), (0.1, 0.2)):
        q = dataclasses.replace(p, gate=dataclasses.replace(p.gate, noninferiority_margin=margin, proper_score=proper))
        gate_records, calib_records = split_sizes(p, frac)
        res = run_scenarios(pop, todo, q, reps, gate_records, calib_records, seed)
        out.append({"noninferiority_margin": margin, "proper_score": proper, "test_fraction": frac,
                    "gate_set_records": gate_records, "all_goals_met": all(r["met"] for r in res.values()),
                    **{k: {"promotion_rate": r["promotion_rate"], "ci95": r["ci95"]} for k, r in res.items()}})
        print(f"gate sweep: {json.dumps(out[-1])}", flush=True)
    return out


def bench(p: Params, reps: int, oracle: int, seed: int, noise: Noise, do_sweep: bool = False,
          gate_records: int | None = None, better_gap: float = SCENARIOS["better"]["gap"],
          only: tuple[str, ...] = tuple(SCENARIOS), champion_f1: float = CHAMPION_F1) -> dict[str, Any]:
    """`gate_records`: another gate-set size than the default data's (e.g. the loop scenario's)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):      # small matrices: BLAS threads only fight each other (17x slower on 2 busy cores)
        return _bench(p, reps, oracle, seed, noise, do_sweep, gate_records, better_gap, only, champion_f1)


def _bench(p: Params, reps: int, oracle: int, seed: int, noise: Noise, do_sweep: bool, gate_records: int | None,
           better_gap: float, only: tuple[str, ...], champion_f1: float) -> dict[str, Any]:
    start = time.perf_counter()
    pop = population(p.synth, oracle, seed)
    todo = pairs(Simulator(pop, noise, seed), better_gap, only, champion_f1)
    default_gate, calib_records = split_sizes(p)
    gate_records = gate_records or default_gate
    result: dict[str, Any] = ({"sweep": sweep(pop, todo, p, reps, seed + 1)} if do_sweep else
                              run_scenarios(pop, todo, p, reps, gate_records, calib_records, seed + 1))
    if not do_sweep:
        result["all_goals_met"] = all(result[k]["met"] for k in GOALS if k in result)
    return {**result, "setup": {"reps": reps, "oracle_records": len(pop), "oracle_generator": "mmcore.synth plan_batch "
                                "(default synth params; records planned, content not rendered)",
                                "gate_set_records": gate_records, "calib_records": calib_records,
                                "models": "simulated per-record probabilities (mmcore/bench/gate_sim.py)",
                                "noise": dataclasses.asdict(noise), "champion_macro_f1": champion_f1,
                                "gate": dataclasses.asdict(p.gate), "selective": dataclasses.asdict(p.selective),
                                "n_boot": p.evaluate.n_boot, "not_simulated": list(NOT_SIMULATED)},
            "seconds": round(time.perf_counter() - start, 1), "load_average": list(os.getloadavg()),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmcore.bench gate",
                                 description="How often the gate promotes better, equal and worse challengers.")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--reps", type=int, default=300, help="repetitions per scenario (a new gate set each)")
    ap.add_argument("--oracle", type=int, default=24000, help="records the default generator plans for the oracle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep", action="store_true", help="rates over margins, proper score and gate-set size")
    ap.add_argument("--gate-records", type=int, default=None, help="gate-set size (default: the default data's)")
    ap.add_argument("--better-gap", type=float, default=SCENARIOS["better"]["gap"],
                    help="the `better` scenario's true macro-F1 gain (the goals are for +0.03)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset to run")
    ap.add_argument("--champion-f1", type=float, default=CHAMPION_F1, help="the champion's macro-F1 on the oracle")
    ap.add_argument("--sigma-model", type=float, default=Noise.sigma_model,
                    help="each model's own noise (default: calibrated to two retrains on the default data)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = bench(load_params(args.params), args.reps, args.oracle, args.seed, Noise(sigma_model=args.sigma_model),
                   args.sweep,
                   args.gate_records, args.better_gap, tuple(args.scenarios.split(",")), args.champion_f1)
    result["command"] = " ".join(["python -m mmcore.bench gate", *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name in [k for k in GOALS if k in result]:
        r = result[name]
        print(f"gate bench: {name}: promoted {r['promotion_rate']:.3f} of {r['n']} [{r['ci95'][0]:.3f}, "
              f"{r['ci95'][1]:.3f}] (goal {r['goal']}: {'met' if r['met'] else 'NOT met'}), true gap "
              f"{r['true_gap']:+.4f}, old rule {r['old_rule_rate']:.3f}, verdicts {r['verdicts']}, rejected by {dict(list(r['rejected_by'].items())[:4])}")
    print(f"gate bench: {result['seconds']} s")
    return 0
