"""Training of the fusion head on frozen-encoder embeddings (DESIGN §4).

`train_bundle` wires data, statistics and the saved artifact around `fit` (mmcore/fit.py: pure
compute on tensors in memory, so testable at tiny size), or around torchrun's workers
(mmcore/distributed.py) when `train.nproc` > 1.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from mmcore.config import CLASSES, ModelConfig, TrainConfig
from mmcore.features import Featurizer, sensor_stats
from mmcore.finetune import split_trained
from mmcore.fit import History, fit
from mmcore.model import ModelBundle


def encode_labels(labels: list[str]) -> torch.Tensor:
    return torch.tensor([CLASSES.index(lbl) for lbl in labels], dtype=torch.long)


def checkpoint_path(root: Path, name: str, mcfg: ModelConfig, tcfg: TrainConfig, ids: list[str]) -> Path:
    """A checkpoint belongs to one config on one training set: anything else starts afresh."""
    key = json.dumps([dataclasses.asdict(mcfg), dataclasses.asdict(tcfg), sorted(ids)], sort_keys=True, default=str)
    return root / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def train_bundle(featurizer: Featurizer, train_recs: list[dict[str, Any]], train_labels: list[str],
                 val_recs: list[dict[str, Any]], val_labels: list[str], mcfg: ModelConfig,
                 tcfg: TrainConfig, checkpoint: Path | None = None,
                 progress: bool = False) -> tuple[ModelBundle, History]:
    """Sensor statistics from the training split, then `fit` (through torchrun when
    `tcfg.nproc` > 1); the bundle is ready to save.

    Frozen encoders train the head on cached embeddings; the other strategies feed decoded
    pixels and token ids, and the bundle carries the fine-tuned encoder weights."""
    sensors = featurizer.sensors(train_recs)            # resampled once: for the statistics and the batch
    mean, std = sensor_stats(*sensors)
    make = featurizer.batch if tcfg.strategy == "frozen" else featurizer.raw_batch
    train, val = make(train_recs, mean, std, sensors), make(val_recs, mean, std)
    y, yv = encode_labels(train_labels), encode_labels(val_labels)
    if tcfg.nproc > 1:
        from mmcore.distributed import fit_torchrun

        model, hist = fit_torchrun(train, y, val, yv, mcfg, tcfg, checkpoint=checkpoint)
    else:
        model, hist = fit(train, y, val, yv, mcfg, tcfg, checkpoint=checkpoint, progress=progress)
    head, encoder_state = split_trained(model)
    versions = Featurizer(mcfg, encoder_state=encoder_state).versions()
    bundle = ModelBundle(head, list(CLASSES), mean, std, versions, {"strategy": tcfg.strategy}, encoder_state)
    return bundle, hist
