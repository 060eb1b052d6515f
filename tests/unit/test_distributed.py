"""Training through torchrun: two CPU processes on gloo, DistributedDataParallel, rank-0 checkpoints."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mmcore.distributed import fit_torchrun
from mmcore.evaluate import macro_f1
from mmcore.train import fit, load_checkpoint, predict_logits
from tests.unit.test_resume import problem


def test_two_process_ddp_matches_one_process_with_the_global_batch(tmp_path: Path) -> None:
    """Two ranks of batch B see, step by step, the same samples as one process of batch 2B
    (DistributedSampler interleaves one permutation) and DDP averages their gradients: the
    runs must agree, up to float reduction order. (Without dropout and the in-batch contrastive
    loss, whose draws and negatives depend on how a batch is split.)"""
    train, y, val, yv, mcfg, tcfg = problem()
    mcfg = dataclasses.replace(mcfg, dropout=0.0, modality_dropout=0.0)
    tcfg = dataclasses.replace(tcfg, epochs=5, patience=5, nproc=2, contrastive_weight=0.0)
    ckpt = tmp_path / "ddp.pt"
    model, hist = fit_torchrun(train, y, val, yv, mcfg, tcfg, checkpoint=ckpt)
    single = dataclasses.replace(tcfg, nproc=1, batch_size=2 * tcfg.batch_size)
    ref_model, ref_hist = fit(train, y, val, yv, mcfg, single)

    assert hist.epoch == ref_hist.epoch == list(range(1, 6))
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert max(abs(a - b) for a, b in zip(hist.val_macro_f1, ref_hist.val_macro_f1)) < 0.02
    torch.testing.assert_close(predict_logits(model, val), predict_logits(ref_model, val), atol=5e-3, rtol=1e-2)
    f1 = macro_f1(yv.numpy(), predict_logits(model, val).argmax(1).numpy(), 5)
    assert abs(f1 - hist.best_val_macro_f1) < 1e-9              # the best epoch's weights come back
    state = load_checkpoint(ckpt)                               # written by rank 0 after every epoch
    assert state["epoch"] == 5 and state["hist"]["val_macro_f1"] == hist.val_macro_f1


def test_torchrun_failure_says_what_failed(tmp_path: Path) -> None:
    train, y, val, yv, mcfg, tcfg = problem()
    bad = dataclasses.replace(tcfg, epochs=1, nproc=2)
    y_bad = torch.full_like(y, 99)                      # a label outside the classes: the workers crash
    try:
        fit_torchrun(train, y_bad, val, yv, mcfg, bad)
    except RuntimeError as e:
        assert "torchrun with 2 processes failed" in str(e)
    else:
        raise AssertionError("a crashed worker must fail the training")
