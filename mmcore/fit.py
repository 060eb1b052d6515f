"""The training loop: `fit` trains a model on tensors in memory, in one process or as one rank
of torchrun (DistributedDataParallel), with checkpoints that resume exactly.

Pure compute, no I/O but the checkpoint, so it is testable at tiny size. It sits below
mmcore/train.py (which wires data, statistics and the saved artifact) and mmcore/distributed.py
(the torchrun workers), so that neither imports the other for it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from mmcore.config import CLASSES, ModelConfig, TrainConfig
from mmcore.encoders import autocast, default_device
from mmcore.evaluate import macro_f1
from mmcore.finetune import build_model, param_groups
from mmcore.model import Batch, info_nce
from mmcore.progress import progress as progress_bar


@dataclass
class History:
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_macro_f1: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_val_macro_f1: float = 0.0
    epoch_s: list[float] = field(default_factory=list)   # wall seconds of each epoch, validation included


STEPS_EVERY_S = 30.0   # optimiser steps within an epoch are reported only when it runs longer, this often


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_rank(seed: int, rank: int) -> None:
    """Called once the model is built (identically on every rank): rank r > 0 reseeds with seed + r, so
    its dropout and modality-dropout masks differ from the other ranks'. Rank 0 keeps the stream a
    single process has, so single-process results do not depend on this."""
    if rank > 0:
        seed_everything(seed + rank)


def rng_state() -> dict[str, Any]:
    """Every generator training may draw from, in a form `torch.load(weights_only=True)` reads back.
    Training draws from torch's CPU (and, on GPU, CUDA) generators only; Python's `random` and NumPy's
    global generator are kept too, so that a future augmentation cannot silently break exact resume."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()           # a list of uint8 tensors, one per device
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`; a generator the state lacks (an older checkpoint) stays as seeded."""
    torch.set_rng_state(state["torch"])
    if "python" in state:
        version, keys, gauss = state["python"]
        random.setstate((version, tuple(keys), gauss))
    if "numpy" in state:
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def gather_rng_states(size: int) -> list[dict[str, Any]]:
    """Every rank's `rng_state()`, indexed by rank (a collective under DDP: every rank must call it)."""
    if size == 1:
        return [rng_state()]
    states: list[Any] = [None] * size
    dist.all_gather_object(states, rng_state())
    return states


def restore_rng(saved: Any, seed: int, rank: int) -> None:
    """This rank's generators as checkpointed. An old checkpoint holds one torch CPU state (a tensor),
    rank 0's; a rank with no saved state of its own starts from seed + rank, as in a fresh run."""
    states = [{"torch": saved}] if isinstance(saved, torch.Tensor) else saved
    if rank < len(states):
        set_rng_state(states[rank])
    else:
        seed_everything(seed + rank)


def subset(batch: Batch, idx: torch.Tensor | slice) -> Batch:
    """The rows `idx` of every tensor: a gather for an index tensor, a view (no copy) for a slice."""
    return Batch(*(t[idx] for t in batch.tensors()))


@torch.inference_mode()
def predict_logits(model: nn.Module, batch: Batch, chunk: int = 512) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    batch, n = batch.to(device), batch.mask.shape[0]
    with autocast(device):
        return torch.cat([model(subset(batch, slice(i, i + chunk))).float() for i in range(0, n, chunk)])


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


def step_loss(net: nn.Module, batch: Batch, y: torch.Tensor, loss_fn: nn.Module, tcfg: TrainConfig) -> torch.Tensor:
    """Classification loss, plus image-text InfoNCE on samples that have both when asked for."""
    logits, tokens, mask = net(batch, with_tokens=True)
    loss = loss_fn(logits.float(), y)
    if tcfg.contrastive_weight > 0:
        both = (mask[:, 0] * mask[:, 1]) > 0
        if both.sum() > 1:
            loss = loss + tcfg.contrastive_weight * info_nce(
                tokens[both, 0].float(), tokens[both, 1].float(), tcfg.contrastive_temperature)
    return loss


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless running under torchrun with a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_device() -> str:
    device = default_device()
    if device == "cuda" and world()[1] > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return device


def fit(train: Batch, y: torch.Tensor, val: Batch, yv: torch.Tensor, mcfg: ModelConfig,
        tcfg: TrainConfig, num_classes: int = len(CLASSES), checkpoint: Path | None = None,
        progress: bool = False) -> tuple[nn.Module, History]:
    """AdamW with warmup + cosine decay, gradient accumulation and clipping, early stopping on
    validation macro-F1; returns the best model (`build_model(mcfg, tcfg)`: the fusion head, or
    head plus encoders when fine-tuning).

    Under torchrun each process trains on its DistributedSampler share through
    DistributedDataParallel; every rank scores the whole validation set, so all take the same
    early-stopping decision, and rank 0 alone writes checkpoints.

    With `checkpoint`, every epoch ends with a checkpoint (weights, optimiser, schedule, every
    rank's RNG states, history); a rerun after a kill resumes from it and ends where an
    uninterrupted run would have (the sampler's order depends on seed and epoch only).

    Every rank builds the model from `tcfg.seed`; then each rank draws its own dropout masks
    (`seed_rank`), while the sampler's permutation stays shared.
    """
    seed_everything(tcfg.seed)
    rank, size = world()
    device = train_device()
    train, y, val = train.to(device), y.to(device), val.to(device)
    model = channels_last_on_cuda(build_model(mcfg, tcfg, num_classes).to(device))
    seed_rank(tcfg.seed, rank)
    net = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    opt = torch.optim.AdamW(param_groups(model, tcfg), weight_decay=tcfg.weight_decay)
    sampler = DistributedSampler(range(len(y)), num_replicas=size, rank=rank, shuffle=True, seed=tcfg.seed)
    steps_per_epoch = max(1, math.ceil(len(sampler) / (tcfg.batch_size * tcfg.accumulate)))
    total, warmup = tcfg.epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, num_classes).to(device), label_smoothing=0.05)
    hist, best_state, stale, start = History(), copy.deepcopy(model.state_dict()), 0, 1
    if (ck := load_checkpoint(checkpoint)) is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        restore_rng(ck["rng"], tcfg.seed, rank)
        hist, best_state, stale, start = History(**ck["hist"]), ck["best"], ck["stale"], ck["epoch"] + 1
    name, shown = f"train {'+'.join(mcfg.modalities)}", progress and rank == 0
    # a line per epoch when piped (the retrain flow's log); steps every STEPS_EVERY_S within long epochs
    bar = progress_bar(range(start, tcfg.epochs + 1), desc=name, unit="epoch", total=tcfg.epochs,
                       initial=start - 1, disable=not shown, every_s=0)   # initial: epochs a checkpoint holds
    for epoch in bar:
        if stale >= tcfg.patience:
            if shown:
                print(f"{name}: stopped early after epoch {epoch - 1}: no better val macro-F1 for "
                      f"{tcfg.patience} epochs (best {hist.best_val_macro_f1:.3f} at epoch {hist.best_epoch})",
                      file=sys.stderr, flush=True)   # the stream of the epoch lines (mmcore.progress): in order
            break
        sampler.set_epoch(epoch)
        began = time.perf_counter()
        losses = train_epoch(net, opt, sched, train, y, torch.tensor(list(sampler)), loss_fn, tcfg,
                             progress=shown, desc=f"{name} epoch {epoch}")
        f1 = macro_f1(yv.numpy(), predict_logits(model, val).argmax(1).cpu().numpy(), num_classes)
        hist.epoch.append(epoch)
        hist.train_loss.append(float(np.mean(losses)))
        hist.val_macro_f1.append(f1)
        hist.epoch_s.append(time.perf_counter() - began)   # f1 came back to the CPU: the GPU's work is in it
        bar.set_postfix(loss=f"{hist.train_loss[-1]:.3f}", val_f1=f"{f1:.3f}")
        if f1 > hist.best_val_macro_f1:
            hist.best_val_macro_f1, hist.best_epoch, stale = f1, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if checkpoint is not None:
            rngs = gather_rng_states(size)                  # a collective: every rank, not rank 0 alone
            if rank == 0:
                save_checkpoint(checkpoint, {"model": model.state_dict(), "opt": opt.state_dict(),
                                             "sched": sched.state_dict(), "rng": rngs,
                                             "hist": dataclasses.asdict(hist), "best": best_state,
                                             "stale": stale, "epoch": epoch})
    model.load_state_dict(best_state)
    return model.cpu().to(memory_format=torch.contiguous_format).eval(), hist


def channels_last_on_cuda(model: nn.Module) -> nn.Module:
    """On CUDA, 4-D (convolution) weights in channels-last layout, the one cuDNN's bf16 tensor-core
    convolutions run in (EncoderStack feeds its pixels so): the image encoder, when fine-tuned, would
    otherwise be converted around every convolution. The frozen head has no 4-D weight; CPU is left as is,
    and `fit` hands back the usual layout."""
    if next(model.parameters()).device.type != "cuda":
        return model
    return model.to(memory_format=torch.channels_last)


def train_epoch(net: nn.Module, opt: torch.optim.Optimizer, sched: Any, train: Batch, y: torch.Tensor,
                order: torch.Tensor, loss_fn: nn.Module, tcfg: TrainConfig, progress: bool = False,
                desc: str = "train") -> list[float]:
    """One pass over this rank's share in `order`; a step every `accumulate` batches.

    Each batch's mean loss is weighted by its share of its group's samples, so a group's gradient is
    that of the mean loss over the group's samples, whether the group (the last) or a batch is short."""
    net.train()
    losses: list[torch.Tensor] = []
    batches = order.to(y.device).split(tcfg.batch_size)      # one transfer an epoch, not one a batch
    starts = range(0, len(batches), tcfg.accumulate)
    # silent unless the epoch runs long (real data): then a line every STEPS_EVERY_S
    for start in progress_bar(starts, desc=desc, unit="step", disable=not progress, leave=False,
                              quiet_s=STEPS_EVERY_S, every_s=STEPS_EVERY_S):
        group = batches[start:start + tcfg.accumulate]
        group_samples = sum(len(idx) for idx in group)
        for idx in group:
            with autocast(y.device):
                loss = step_loss(net, subset(train, idx), y[idx], loss_fn, tcfg)
            (loss * (len(idx) / group_samples)).backward()
            losses.append(loss.detach())             # read once an epoch: .item() a step waits for the GPU
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return torch.stack(losses).tolist() if losses else []
