"""Training of the fusion head on frozen-encoder embeddings (DESIGN §4).

`fit` is pure compute on tensors in memory (no I/O), so it is testable at tiny
size; `train_bundle` wires data, statistics and the saved artifact.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mmcore.config import CLASSES, ModelConfig, TrainConfig
from mmcore.encoders import autocast, default_device
from mmcore.evaluate import macro_f1
from mmcore.features import Featurizer, sensor_stats
from mmcore.model import Batch, FusionModel, ModelBundle


@dataclass
class History:
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_macro_f1: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_val_macro_f1: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def subset(batch: Batch, idx: torch.Tensor) -> Batch:
    return Batch(*(t[idx] for t in dataclasses.astuple(batch)))


@torch.inference_mode()
def predict_logits(model: nn.Module, batch: Batch, chunk: int = 512) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    batch, n = batch.to(device), batch.mask.shape[0]
    with autocast(device):
        return torch.cat([model(subset(batch, torch.arange(i, min(i + chunk, n), device=device))).float()
                          for i in range(0, n, chunk)])


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (square-rooted): macro-F1 counts rare classes as much as `normal`."""
    counts = torch.bincount(y, minlength=num_classes).float().clamp(min=1)
    w = (counts.sum() / counts).sqrt()
    return w / w.mean()


def fit(train: Batch, y: torch.Tensor, val: Batch, yv: torch.Tensor, mcfg: ModelConfig,
        tcfg: TrainConfig, num_classes: int = len(CLASSES)) -> tuple[FusionModel, History]:
    """AdamW with warmup + cosine decay, early stopping on validation macro-F1; returns the best model."""
    seed_everything(tcfg.seed)
    device = default_device()
    train, y, val = train.to(device), y.to(device), val.to(device)
    model = FusionModel(mcfg, num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(y) / tcfg.batch_size))
    total, warmup = tcfg.epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, num_classes).to(device), label_smoothing=0.05)
    gen = torch.Generator().manual_seed(tcfg.seed)
    hist, best_state, stale = History(), copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, tcfg.epochs + 1):
        model.train()
        losses = []
        for idx in torch.randperm(len(y), generator=gen).split(tcfg.batch_size):
            with autocast(device):
                loss = loss_fn(model(subset(train, idx.to(device))).float(), y[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        f1 = macro_f1(yv.numpy(), predict_logits(model, val).argmax(1).cpu().numpy(), num_classes)
        hist.epoch.append(epoch)
        hist.train_loss.append(float(np.mean(losses)))
        hist.val_macro_f1.append(f1)
        if f1 > hist.best_val_macro_f1:
            hist.best_val_macro_f1, hist.best_epoch, stale = f1, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= tcfg.patience:
                break
    model.load_state_dict(best_state)
    return model.cpu().eval(), hist


def encode_labels(labels: list[str]) -> torch.Tensor:
    return torch.tensor([CLASSES.index(lbl) for lbl in labels], dtype=torch.long)


def train_bundle(featurizer: Featurizer, train_recs: list[dict[str, Any]], train_labels: list[str],
                 val_recs: list[dict[str, Any]], val_labels: list[str], mcfg: ModelConfig,
                 tcfg: TrainConfig) -> tuple[ModelBundle, History]:
    """Sensor statistics from the training split, then `fit`; the bundle is ready to save."""
    raw, present = featurizer.sensors(train_recs)
    mean, std = sensor_stats(raw, present)
    train = featurizer.batch(train_recs, mean, std)
    val = featurizer.batch(val_recs, mean, std)
    model, hist = fit(train, encode_labels(train_labels), val, encode_labels(val_labels), mcfg, tcfg)
    bundle = ModelBundle(model, list(CLASSES), mean, std, featurizer.versions())
    return bundle, hist
