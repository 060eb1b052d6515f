"""Training of the fusion head on frozen-encoder embeddings (DESIGN §4).

`fit` is pure compute on tensors in memory (no I/O), so it is testable at tiny
size; `train_bundle` wires data, statistics and the saved artifact.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmcore.config import CLASSES, ModelConfig, TrainConfig
from mmcore.encoders import autocast, default_device
from mmcore.evaluate import macro_f1
from mmcore.features import Featurizer, sensor_stats
from mmcore.model import Batch, FusionModel, ModelBundle, info_nce


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


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a kill during the write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain containers only


def step_loss(model: FusionModel, batch: Batch, y: torch.Tensor, loss_fn: nn.Module, tcfg: TrainConfig) -> torch.Tensor:
    """Classification loss, plus image-text InfoNCE on samples that have both when asked for."""
    tokens, mask = model.tokens(batch)
    loss = loss_fn(model.classify(tokens, mask).float(), y)
    if tcfg.contrastive_weight > 0:
        both = (mask[:, 0] * mask[:, 1]) > 0
        if both.sum() > 1:
            loss = loss + tcfg.contrastive_weight * info_nce(
                tokens[both, 0].float(), tokens[both, 1].float(), tcfg.contrastive_temperature)
    return loss


def fit(train: Batch, y: torch.Tensor, val: Batch, yv: torch.Tensor, mcfg: ModelConfig,
        tcfg: TrainConfig, num_classes: int = len(CLASSES),
        checkpoint: Path | None = None) -> tuple[FusionModel, History]:
    """AdamW with warmup + cosine decay, gradient accumulation and clipping, early stopping on
    validation macro-F1; returns the best model.

    With `checkpoint`, every epoch ends with a checkpoint (weights, optimiser, schedule, RNG
    states, history); a rerun after a kill resumes from it and ends where an uninterrupted
    run would have.
    """
    seed_everything(tcfg.seed)
    device = default_device()
    train, y, val = train.to(device), y.to(device), val.to(device)
    model = FusionModel(mcfg, num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(y) / (tcfg.batch_size * tcfg.accumulate)))
    total, warmup = tcfg.epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, num_classes).to(device), label_smoothing=0.05)
    gen = torch.Generator().manual_seed(tcfg.seed)
    hist, best_state, stale, start = History(), copy.deepcopy(model.state_dict()), 0, 1
    if (ck := load_checkpoint(checkpoint)) is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["rng"])
        hist, best_state, stale, start = History(**ck["hist"]), ck["best"], ck["stale"], ck["epoch"] + 1
    for epoch in range(start, tcfg.epochs + 1):
        if stale >= tcfg.patience:
            break
        model.train()
        losses = []
        for i, idx in enumerate(torch.randperm(len(y), generator=gen).split(tcfg.batch_size)):
            idx = idx.to(device)
            with autocast(device):
                loss = step_loss(model, subset(train, idx), y[idx], loss_fn, tcfg)
            (loss / tcfg.accumulate).backward()
            losses.append(loss.item())
            if (i + 1) % tcfg.accumulate == 0 or (i + 1) * tcfg.batch_size >= len(y):
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        f1 = macro_f1(yv.numpy(), predict_logits(model, val).argmax(1).cpu().numpy(), num_classes)
        hist.epoch.append(epoch)
        hist.train_loss.append(float(np.mean(losses)))
        hist.val_macro_f1.append(f1)
        if f1 > hist.best_val_macro_f1:
            hist.best_val_macro_f1, hist.best_epoch, stale = f1, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"model": model.state_dict(), "opt": opt.state_dict(),
                                         "sched": sched.state_dict(), "gen": gen.get_state(),
                                         "rng": torch.get_rng_state(), "hist": dataclasses.asdict(hist),
                                         "best": best_state, "stale": stale, "epoch": epoch})
    model.load_state_dict(best_state)
    return model.cpu().eval(), hist


def encode_labels(labels: list[str]) -> torch.Tensor:
    return torch.tensor([CLASSES.index(lbl) for lbl in labels], dtype=torch.long)


def checkpoint_path(root: Path, name: str, mcfg: ModelConfig, tcfg: TrainConfig, ids: list[str]) -> Path:
    """A checkpoint belongs to one config on one training set: anything else starts afresh."""
    key = json.dumps([dataclasses.asdict(mcfg), dataclasses.asdict(tcfg), sorted(ids)], sort_keys=True, default=str)
    return root / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def train_bundle(featurizer: Featurizer, train_recs: list[dict[str, Any]], train_labels: list[str],
                 val_recs: list[dict[str, Any]], val_labels: list[str], mcfg: ModelConfig,
                 tcfg: TrainConfig, checkpoint: Path | None = None) -> tuple[ModelBundle, History]:
    """Sensor statistics from the training split, then `fit`; the bundle is ready to save."""
    raw, present = featurizer.sensors(train_recs)
    mean, std = sensor_stats(raw, present)
    train = featurizer.batch(train_recs, mean, std)
    val = featurizer.batch(val_recs, mean, std)
    model, hist = fit(train, encode_labels(train_labels), val, encode_labels(val_labels), mcfg, tcfg,
                      checkpoint=checkpoint)
    bundle = ModelBundle(model, list(CLASSES), mean, std, featurizer.versions())
    return bundle, hist
