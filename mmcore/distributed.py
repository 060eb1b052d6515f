"""Multi-process training through `torchrun` (DistributedDataParallel).

The parent writes the prepared tensors once (safetensors), `torchrun` starts
`train.nproc` workers that each run `fit` on their DistributedSampler share (gloo on
CPU, nccl on CUDA), and rank 0 writes the trained weights and history back. On a
cluster the same worker runs under `torchrun --nnodes N --rdzv-endpoint HOST:PORT`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from mmcore.config import CLASSES, ModelConfig, TrainConfig
from mmcore.finetune import build_model
from mmcore.model import Batch
from mmcore.fit import History, fit

FIELDS = ("image", "text", "sensor", "mask", "ngrams")


def save_problem(path: Path, train: Batch, y: torch.Tensor, val: Batch, yv: torch.Tensor) -> None:
    tensors = {f"train.{f}": getattr(train, f) for f in FIELDS} | {f"val.{f}": getattr(val, f) for f in FIELDS}
    save_file({k: v.contiguous() for k, v in (tensors | {"y": y, "yv": yv}).items()}, str(path))


def load_problem(path: Path) -> tuple[Batch, torch.Tensor, Batch, torch.Tensor]:
    t = load_file(str(path))
    return (Batch(*(t[f"train.{f}"] for f in FIELDS)), t["y"], Batch(*(t[f"val.{f}"] for f in FIELDS)), t["yv"])


def fit_torchrun(train: Batch, y: torch.Tensor, val: Batch, yv: torch.Tensor, mcfg: ModelConfig,
                 tcfg: TrainConfig, num_classes: int = len(CLASSES),
                 checkpoint: Path | None = None) -> tuple[nn.Module, History]:
    """`fit` on `tcfg.nproc` local processes; returns what a single-process `fit` returns."""
    with tempfile.TemporaryDirectory(prefix="mmcore-ddp-") as tmp:
        work = Path(tmp)
        save_problem(work / "problem.safetensors", train, y, val, yv)
        cfg = {"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg), "num_classes": num_classes,
               "checkpoint": str(checkpoint) if checkpoint else None}
        (work / "config.json").write_text(json.dumps(cfg))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tcfg.nproc}",
               "-m", "mmcore.distributed", str(work)]
        proc = subprocess.run(cmd, text=True, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun with {tcfg.nproc} processes failed (exit {proc.returncode}); "
                               f"its last output:\n{proc.stderr[-4000:]}")
        model = build_model(mcfg, tcfg, num_classes)
        model.load_state_dict(load_file(str(work / "model.safetensors")))
        hist = History(**json.loads((work / "history.json").read_text()))
    return model.eval(), hist


def worker(work: Path) -> None:
    """One torchrun process: join the group, train, and (rank 0) write the result."""
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        cfg = json.loads((work / "config.json").read_text())
        mc = cfg["model"] | {"modalities": tuple(cfg["model"]["modalities"])}
        mcfg, tcfg = ModelConfig(**mc), TrainConfig(**cfg["train"])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // tcfg.nproc))
        train, y, val, yv = load_problem(work / "problem.safetensors")
        ckpt = Path(cfg["checkpoint"]) if cfg["checkpoint"] else None
        model, hist = fit(train, y, val, yv, mcfg, tcfg, cfg["num_classes"], checkpoint=ckpt,
                          progress=True)
        if dist.get_rank() == 0:
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(work / "model.safetensors"))
            (work / "history.json").write_text(json.dumps(dataclasses.asdict(hist)))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="torchrun worker of mmcore training (started by fit_torchrun).")
    ap.add_argument("work", type=Path)
    worker(ap.parse_args().work)
