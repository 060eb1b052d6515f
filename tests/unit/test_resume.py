"""Exact resume: a training process killed mid-epoch, restarted, ends where an uninterrupted run ends."""
from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mmcore.fit
from mmcore.fit import fit, gather_rng_states, load_checkpoint, predict_logits, restore_rng, save_checkpoint
from tests.unit.test_model import MCFG, TCFG, random_batch

SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from tests.unit.test_resume import problem
from mmcore.fit import fit
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


def count_epochs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The epochs `fit` trains in this process, one entry per `train_epoch` call."""
    calls: list[int] = []
    real = mmcore.fit.train_epoch

    def counted(*args: object, **kwargs: object) -> list[float]:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mmcore.fit, "train_epoch", counted)
    return calls


def test_killed_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    train, y, val, yv, mcfg, tcfg = problem()
    calls = count_epochs(monkeypatch)
    ref_model, ref_hist = fit(train, y, val, yv, mcfg, tcfg)
    fresh = len(calls)
    assert fresh == len(ref_hist.epoch) and ref_hist.epoch == list(range(1, fresh + 1))

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

    calls.clear()
    model, hist = fit(train, y, val, yv, mcfg, tcfg, checkpoint=ckpt)
    # it trained only what the uninterrupted run trained after the kill (that run may stop early), not afresh
    assert len(calls) == len([e for e in ref_hist.epoch if e > killed_at]) < fresh
    assert hist.epoch == ref_hist.epoch
    assert hist.val_macro_f1 == ref_hist.val_macro_f1
    assert torch.allclose(predict_logits(model, val), predict_logits(ref_model, val), atol=1e-5)


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch, CUDA (faked here: no GPU needed), Python and NumPy generators come back from a
    `weights_only` load and draw what they would have drawn."""
    cuda = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    mmcore.fit.seed_everything(5)
    save_checkpoint(tmp_path / "c.pt", {"rng": gather_rng_states(1)})
    draws = torch.rand(3), random.random(), np.random.rand(3)
    mmcore.fit.seed_everything(6)
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"], seed=6, rank=0)
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1]
    assert np.array_equal(np.random.rand(3), draws[2])
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], cuda))


def test_old_checkpoint_with_only_the_torch_state_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint from before per-rank states ("rng": one CPU tensor) still loads and resumes exactly
    (on CPU that tensor is all training draws from)."""
    torch.set_num_threads(1)
    train, y, val, yv, mcfg, tcfg = problem()
    tcfg = dataclasses.replace(tcfg, epochs=4, patience=4)
    ref_model, ref_hist = fit(train, y, val, yv, mcfg, tcfg)
    real, ckpt = mmcore.fit.train_epoch, tmp_path / "old.pt"

    def crash_in_epoch_3(*args: object, **kwargs: object) -> list[float]:
        if load_checkpoint(ckpt) is not None and load_checkpoint(ckpt)["epoch"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mmcore.fit, "train_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fit(train, y, val, yv, mcfg, tcfg, checkpoint=ckpt)
    monkeypatch.setattr(mmcore.fit, "train_epoch", real)
    state = load_checkpoint(ckpt)
    save_checkpoint(ckpt, state | {"rng": state["rng"][0]["torch"]})
    model, hist = fit(train, y, val, yv, mcfg, tcfg, checkpoint=ckpt)
    assert hist.epoch == ref_hist.epoch and hist.val_macro_f1 == ref_hist.val_macro_f1
    assert torch.allclose(predict_logits(model, val), predict_logits(ref_model, val), atol=1e-5)
