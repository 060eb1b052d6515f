"""Exact resume: a training process killed mid-epoch, restarted, ends where an uninterrupted run ends."""
from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmcore.train import fit, load_checkpoint, predict_logits
from tests.unit.test_model import MCFG, TCFG, random_batch

SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from tests.unit.test_resume import problem
from mmcore.train import fit
train, y, val, yv, mcfg, tcfg = problem()
fit(train, y, val, yv, mcfg, tcfg, checkpoint=__import__('pathlib').Path(sys.argv[1]))
"""


def problem():
    train, val = random_batch(400, seed=11), random_batch(150, seed=12)
    y, yv = torch.arange(400) % 5, torch.arange(150) % 5
    train.text.mul_(0.3)[:, :5] += torch.nn.functional.one_hot(y, 5)
    val.text.mul_(0.3)[:, :5] += torch.nn.functional.one_hot(yv, 5)
    tcfg = dataclasses.replace(TCFG, epochs=15, patience=15, contrastive_weight=0.1)
    return train, y, val, yv, dataclasses.replace(MCFG, fusion="attention"), tcfg


def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    train, y, val, yv, mcfg, tcfg = problem()
    ref_model, ref_hist = fit(train, y, val, yv, mcfg, tcfg)

    ckpt = tmp_path / "ckpt.pt"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(ckpt)], cwd=Path(__file__).parents[2])
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["epoch"]
    assert 1 <= killed_at < tcfg.epochs, "the kill must land before training ended"

    model, hist = fit(train, y, val, yv, mcfg, tcfg, checkpoint=ckpt)
    assert hist.epoch == ref_hist.epoch
    assert hist.val_macro_f1 == ref_hist.val_macro_f1
    assert torch.allclose(predict_logits(model, val), predict_logits(ref_model, val), atol=1e-5)
