"""Operating characteristics of the gate behind `make bench` (reports/bench/gate.json).

    python -m mmcore.bench gate --out reports/bench/gate.json [--reps 30 --raw data/raw --splits ... --cache ...]

The gate decides alone, so how often it promotes is measured, not assumed. Heads are trained on
cached frozen-encoder embeddings of the default data (the main job's model and training params)
and pairs of them are judged by the real gate rules (`mmcore.gate.decide` over the numbers the
evaluate stage computes: scores, slices, the shipment bootstrap) on the real gate set:

  better  champion trained on `--weak-share` of the training shipments, challenger on all of them
  equal   champion and challenger trained on the same data with different seeds
  worse   challenger trained with `--noise-share` of its training labels replaced at random

Each scenario runs `--reps` times; the report gives each promotion rate against its goal, the
gate-set macro-F1 gap the scenario's models really have, and which rules rejected. Latency, the
held-out check and the behavioural suites need the full request path and are not simulated here
(`not_simulated`): they are the same for every pair of heads on one set of encoders.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mmcore.bootstrap import paired_bootstrap
from mmcore.config import CLASSES, GateConfig, Params, load_params
from mmcore.evaluate import score, slice_scores
from mmcore.gate import decide
from mmcore.model import Batch
from mmcore.fit import fit, predict_logits, subset
from mmcore.train import encode_labels

GOALS = {"better": (">=", 0.90), "equal": ("<=", 0.05), "worse": ("<=", 0.01)}
NOT_SIMULATED = ("max_latency_p95_ms", "gate_set_held_out", "behaviour_regression")


@dataclass
class Problem:
    """Frozen-encoder inputs of the train, val and gate splits, and what the gate needs of the gate set."""

    train: Batch
    y: torch.Tensor
    train_shipments: np.ndarray
    val: Batch
    yv: torch.Tensor
    test: Batch
    yt: np.ndarray
    shipments: np.ndarray
    slices: dict[str, np.ndarray]


def load_problem(raw: Path, splits: Path, cache: Path, p: Params) -> Problem:
    """The pipeline's own data, featurizer and gate-set slices (mmcore.stages.evaluate)."""
    from mmcore.features import Featurizer, sensor_stats
    from mmcore.stages.common import split_records
    from mmcore.stages.evaluate import gate_set, missing_groups

    feat = Featurizer(p.model, cache_dir=cache, batch_size=p.train.embed_batch_size, progress=True)
    train_recs, train_y = split_records(raw, splits, "train")
    val_recs, val_y = split_records(raw, splits, "val")
    gate = gate_set(raw, splits)
    mean, std = sensor_stats(*feat.sensors(train_recs))
    train, val, test = (feat.batch(r, mean, std) for r in (train_recs, val_recs, gate.records))
    table = pd.read_parquet(splits).set_index("record_id")
    ships = table.loc[[r["record_id"] for r in train_recs], "shipment_id"].astype(str).to_numpy()
    return Problem(train, encode_labels(train_y), ships, val, encode_labels(val_y), test, gate.y, gate.shipments,
                   {**gate.groups, **missing_groups(test)})


def default_data(p: Params, work: Path) -> tuple[Path, Path]:
    """The default landing data generated, ingested and split in `work` (when the pipeline has not run)."""
    from mmcore.data.ingest import ingest
    from mmcore.data.split import split
    from mmcore.synth.generate import generate_default
    from mmcore.encoders import load_tokenizer
    from mmcore.stages.common import write_json

    generate_default(work / "landing", p.synth)
    report = ingest(work / "landing", work / "raw", work / "quarantine", p.ingest, tokenizer=load_tokenizer())
    write_json(work / "ingest.json", report)
    from mmcore.data.raw import load_profile

    (work / "split").mkdir(exist_ok=True)
    split(load_profile(work / "raw"), p.split).to_parquet(work / "split" / "splits.parquet", index=False)
    return work / "raw", work / "split" / "splits.parquet"


def train_head(prob: Problem, p: Params, seed: int, share: float = 1.0, noise: float = 0.0) -> np.ndarray:
    """Gate-set probabilities of a head trained on `share` of the training shipments, `noise` of labels replaced."""
    rng = np.random.default_rng(seed)
    ships = np.unique(prob.train_shipments)
    kept = set(rng.choice(ships, size=max(1, round(share * len(ships))), replace=False)) if share < 1 else set(ships)
    idx = torch.from_numpy(np.flatnonzero([s in kept for s in prob.train_shipments]))
    y = prob.y[idx].clone()
    flip = torch.from_numpy(rng.random(len(y)) < noise)
    y[flip] = torch.from_numpy(rng.integers(0, len(CLASSES), int(flip.sum())))
    model, _ = fit(subset(prob.train, idx), y, prob.val, prob.yv, p.model, dataclasses.replace(p.train, seed=seed))
    return torch.softmax(predict_logits(model, prob.test), dim=-1).numpy()


def model_block(prob: Problem, probs: np.ndarray, ece_bins: int) -> dict[str, Any]:
    m = score(prob.yt, probs, list(CLASSES), ece_bins)
    m["slices"] = slice_scores(prob.yt, probs.argmax(1), prob.slices, len(CLASSES))
    return m


def judge(prob: Problem, new: np.ndarray, old: np.ndarray, p: Params) -> tuple[bool, list[str], float]:
    """The gate's verdict on one pair (simulated rules only), the failed rules and the observed gain."""
    metrics = {**model_block(prob, new, p.evaluate.ece_bins), "champion": model_block(prob, old, p.evaluate.ece_bins)}
    metrics["comparison"] = paired_bootstrap(prob.yt, new.argmax(1), old.argmax(1), prob.shipments, list(CLASSES),
                                             prob.slices, p.evaluate.n_boot, p.evaluate.seed, p.evaluate.ci)
    rules = [r for r in decide(metrics, p.gate)[1] if not r["rule"].startswith(NOT_SIMULATED)]
    failed = [r["rule"] for r in rules if not r["passed"]]
    return not failed, failed, metrics["comparison"]["observed"]


def summarise(name: str, verdicts: list[tuple[bool, list[str], float]]) -> dict[str, Any]:
    promoted = [v[0] for v in verdicts]
    gains = np.array([v[2] for v in verdicts])
    op, goal = GOALS[name]
    rate = float(np.mean(promoted))
    rejected_by = Counter(rule for _, failed, _ in verdicts for rule in failed)
    return {"promotion_rate": rate, "n": len(verdicts), "goal": f"{op} {goal}",
            "met": bool(rate >= goal if op == ">=" else rate <= goal),
            "macro_f1_gain": {"mean": float(gains.mean()), "sd": float(gains.std()), "min": float(gains.min()),
                              "max": float(gains.max())},
            "rejected_by": dict(rejected_by.most_common())}


def simulate(prob: Problem, p: Params, reps: int, weak_share: float, noise_share: float,
             progress: bool = True) -> dict[str, Any]:
    """Train the pool of heads once, then judge the three scenarios' pairs."""
    jobs = ([("full", i, 1.0, 0.0) for i in range(reps + 1)] + [("weak", i, weak_share, 0.0) for i in range(reps)]
            + [("noisy", i, 1.0, noise_share) for i in range(reps)])
    pool: dict[tuple[str, int], np.ndarray] = {}
    for kind, i, share, noise in tqdm(jobs, desc="train heads", unit="head", disable=not progress):
        pool[kind, i] = train_head(prob, p, seed=p.train.seed + 1000 * i + 1, share=share, noise=noise)
    pairs = {"better": [(pool["full", i], pool["weak", i]) for i in range(reps)],
             "equal": [(pool["full", i + 1], pool["full", i]) for i in range(reps)],
             "worse": [(pool["noisy", i], pool["full", i]) for i in range(reps)]}
    return {name: summarise(name, [judge(prob, new, old, p) for new, old in todo]) for name, todo in pairs.items()}


def bench(p: Params, raw: Path | None, splits: Path | None, cache: Path, reps: int, weak_share: float,
          noise_share: float) -> dict[str, Any]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        if raw is None or splits is None:
            raw, splits = default_data(p, Path(tmp))
        prob = load_problem(raw, splits, cache, p)
        result = simulate(prob, p, reps, weak_share, noise_share)
    return {**result, "all_goals_met": all(result[k]["met"] for k in GOALS),
            "setup": {"reps": reps, "weak_share": weak_share, "noise_share": noise_share,
                      "train_records": int(len(prob.y)), "gate_set_records": int(len(prob.yt)),
                      "gate_set_shipments": int(len(np.unique(prob.shipments))), "gate": dataclasses.asdict(p.gate),
                      "n_boot": p.evaluate.n_boot, "not_simulated": list(NOT_SIMULATED)},
            "seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmcore.bench gate",
                                 description="How often the gate promotes better, equal and worse challengers.")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"), help="default: the pipeline's; generated if absent")
    ap.add_argument("--splits", type=Path, default=Path("data/split/splits.parquet"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache"), help="the embedding cache (shared with train)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--weak-share", type=float, default=0.3, help="better: the champion's share of training data")
    ap.add_argument("--noise-share", type=float, default=0.3, help="worse: the challenger's share of noisy labels")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    have_data = args.raw.is_dir() and args.splits.is_file()
    result = bench(p, args.raw if have_data else None, args.splits if have_data else None, args.cache, args.reps,
                   args.weak_share, args.noise_share)
    result["command"] = " ".join(["python -m mmcore.bench gate", *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name in GOALS:
        r = result[name]
        print(f"gate bench: {name}: promoted {r['promotion_rate']:.2f} of {r['n']} (goal {r['goal']}: "
              f"{'met' if r['met'] else 'NOT met'}), gain {r['macro_f1_gain']['mean']:+.3f} "
              f"(sd {r['macro_f1_gain']['sd']:.3f}), rejected by {r['rejected_by']}")
    return 0

