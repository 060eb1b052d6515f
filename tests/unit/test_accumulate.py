"""Gradient accumulation: a group of k batches steps like one batch of the group's samples, a short group too."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from mmcore.model import FusionModel
from mmcore.fit import train_epoch
from tests.unit.test_model import MCFG, TCFG, random_batch


def one_epoch(model: nn.Module, n: int, batch_size: int, accumulate: int) -> nn.Module:
    """Plain SGD (its step is linear in the gradient) over samples 0..n-1 in a fixed shuffled order."""
    train, y = random_batch(n, seed=7), torch.arange(n) % 5
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    tcfg = dataclasses.replace(TCFG, batch_size=batch_size, accumulate=accumulate, contrastive_weight=0.0)
    # an unweighted loss: with class weights a batch's "mean" is a weighted mean, which sample shares do not
    # recombine exactly; the contrastive term is in-batch, so it is left out too
    train_epoch(model, opt, sched, train, y, order, nn.CrossEntropyLoss(), tcfg)
    return model


@pytest.mark.parametrize("n", [16, 14, 6, 22])  # full group; full group, short last batch; short group; both
def test_accumulated_group_steps_like_one_batch_of_its_samples(n: int) -> None:
    """Batches of 4 accumulated 4 at a time, against batches of 16: 16 -> 4+4+4+4 | 16, 14 -> 4+4+4+2 | 14,
    6 -> 4+2 | 6, 22 -> 4+4+4+4, 4+2 | 16, 6. No dropout, so both see the same function."""
    torch.manual_seed(0)
    model = FusionModel(dataclasses.replace(MCFG, fusion="attention", dropout=0.0, modality_dropout=0.0))
    accumulated = one_epoch(copy.deepcopy(model), n, batch_size=4, accumulate=4)
    big = one_epoch(copy.deepcopy(model), n, batch_size=16, accumulate=1)
    for (name, a), b in zip(accumulated.named_parameters(), big.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    moved = max((a - b).abs().max().item() for a, b in zip(big.parameters(), model.parameters()))
    assert moved > 1e-3, "the step must move the weights, or the comparison proves nothing"
