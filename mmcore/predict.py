"""Inference used alike by evaluation, the MLflow pyfunc and the BentoML service."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcore.features import Featurizer
from mmcore.model import MODALITIES, ModelBundle
from mmcore.preprocess import prepare_note


class Predictor:
    """A saved model directory plus the frozen encoders it was trained with."""

    def __init__(self, bundle: ModelBundle, featurizer: Featurizer | None = None) -> None:
        self.bundle = bundle
        self.featurizer = featurizer or Featurizer.for_bundle(bundle)
        if self.featurizer.versions() != bundle.encoders:
            raise ValueError(f"model was trained with encoders {bundle.encoders}, "
                             f"featurizer gives {self.featurizer.versions()}")

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def probabilities(self, records: list[dict[str, Any]]) -> np.ndarray:
        """(N, C) class probabilities."""
        if not records:
            return np.zeros((0, len(self.labels)), np.float32)
        batch = self.featurizer.batch(records, self.bundle.sensor_mean, self.bundle.sensor_std)
        with torch.inference_mode():
            logits = self.bundle.model.eval()(batch)
        return torch.softmax(logits.float(), dim=-1).numpy()

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Label, probabilities and the modalities the model actually used, per record."""
        probs = self.probabilities(records)
        allowed = set(self.bundle.model.cfg.modalities)
        out = []
        for rec, p in zip(records, probs):
            present = {"image": rec.get("image") is not None, "text": prepare_note(rec.get("note")) is not None,
                       "sensor": rec.get("sensor") is not None}
            out.append({"label": self.labels[int(p.argmax())],
                        "probabilities": {c: float(v) for c, v in zip(self.labels, p)},
                        "modalities": [m for m in MODALITIES if present[m] and m in allowed]})
        return out


def load_model(path: str | Path, cache_dir: Path | None = None) -> Predictor:
    """Load a model directory (safetensors + JSON, no pickle) with its frozen encoders."""
    bundle = ModelBundle.load(Path(path))
    return Predictor(bundle, Featurizer.for_bundle(bundle, cache_dir=cache_dir))
