"""The gate benchmark's simulation on in-memory tensors: real heads, the real rules, every figure written."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mmcore.bench.gate import GOALS, Problem, simulate
from mmcore.config import load_params
from tests.conftest import ROOT
from tests.unit.test_model import MCFG, random_batch


def learnable(n: int, seed: int) -> tuple:
    """Five classes written faintly into the text embedding: a head can learn them, not perfectly."""
    batch, y = random_batch(n, seed=seed), torch.arange(n) % 5
    g = torch.Generator().manual_seed(seed + 100)
    noisy = torch.where(torch.rand(n, generator=g) < 0.25, torch.randint(0, 5, (n,), generator=g), y)
    batch.text.mul_(0.5)[:, :5] += torch.nn.functional.one_hot(noisy, 5)
    return batch, y


def test_the_simulation_judges_three_scenarios_with_the_gate_rules() -> None:
    train, y = learnable(400, seed=1)
    val, yv = learnable(150, seed=2)
    test, yt = learnable(300, seed=3)
    hubs = np.array(["A", "B", "C"])[np.arange(300) % 3]
    prob = Problem(train, y, np.arange(400).astype(str), val, yv, test, yt.numpy(), (np.arange(300) // 2).astype(str),
                   {f"hub={h}": hubs == h for h in "ABC"})
    p = load_params(ROOT / "params.yaml")
    p = dataclasses.replace(p, model=MCFG, train=dataclasses.replace(p.train, epochs=6, patience=6, batch_size=32),
                            evaluate=dataclasses.replace(p.evaluate, n_boot=200))
    out = simulate(prob, p, reps=2, weak_share=0.1, noise_share=0.95, progress=False)
    assert set(out) == set(GOALS)
    for name, r in out.items():
        assert r["n"] == 2 and 0.0 <= r["promotion_rate"] <= 1.0 and r["goal"].endswith(str(GOALS[name][1]))
        assert r["met"] == (r["promotion_rate"] >= 0.9 if name == "better" else r["promotion_rate"] <= GOALS[name][1])
        assert bool(r["rejected_by"]) == (r["promotion_rate"] < 1.0)      # every rejection names its rules
    assert out["better"]["macro_f1_gain"]["mean"] > 0.02 and out["worse"]["macro_f1_gain"]["mean"] < 0
    assert out["worse"]["promotion_rate"] == 0.0 and "macro_f1_delta_ci_low" in out["worse"]["rejected_by"]
