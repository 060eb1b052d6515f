"""Training through torchrun: two CPU processes on gloo, DistributedDataParallel, rank-0 checkpoints."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from mmcore.distributed import fit_torchrun
from mmcore.evaluate import macro_f1
from mmcore.finetune import build_model
from mmcore.fit import fit, load_checkpoint, predict_logits, seed_everything, seed_rank
from tests.unit.test_resume import problem


def test_two_process_ddp_matches_one_process_with_the_global_batch(tmp_path: Path) -> None:
    """Two ranks of batch B see, step by step, the same samples as one process of batch 2B
    (DistributedSampler interleaves one permutation) and DDP averages their gradients: the
    runs must agree, up to float reduction order. (Without dropout and the in-batch contrastive
    loss, whose draws and negatives depend on how a batch is split; and each rank draws its own
    dropout masks, so no split of one process's draws could match them.)"""
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
    ranks = state["rng"]                                        # every rank's generators, for an exact resume
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])


def test_ranks_build_the_same_model_but_draw_their_own_dropout_masks() -> None:
    """What `fit` does on each rank before training: seed, build, `seed_rank`. The initial weights agree
    (DDP broadcasts rank 0's anyway), the dropout and modality-dropout masks do not; rank 0 draws
    what a single process draws, so single-process training is as it was."""
    _, _, _, _, mcfg, tcfg = problem()

    def start(rank: int | None) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        seed_everything(tcfg.seed)
        model = build_model(mcfg, tcfg)
        if rank is not None:                                    # None: a single process, no torchrun
            seed_rank(tcfg.seed, rank)
        model.train()
        dropout = next(m for m in model.modules() if isinstance(m, nn.Dropout))
        return model.state_dict(), dropout(torch.ones(256)), model.effective_mask(torch.ones(256, 3))

    (w0, d0, m0), (w1, d1, m1), (ws, ds, ms) = start(0), start(1), start(None)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not torch.equal(d0, d1) and not torch.equal(m0, m1)
    assert torch.equal(d0, ds) and torch.equal(m0, ms)
    assert all(torch.equal(a, b) for a, b in zip(start(1)[1:], (d1, m1)))   # and per rank, reproducible


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
