"""Inference used alike by evaluation, the MLflow pyfunc and the BentoML service."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcore.answer import answer_dicts
from mmcore.features import Featurizer
from mmcore.model import Batch, ModelBundle
from mmcore.selective.calibrate import scale
from mmcore.selective.router import Router


class Predictor:
    """A saved model directory plus the frozen encoders it was trained with."""

    def __init__(self, bundle: ModelBundle, featurizer: Featurizer | None = None, router: Router | None = None) -> None:
        self.bundle = bundle
        self.router = router or Router(None)
        self.featurizer = featurizer or Featurizer.for_bundle(bundle)
        if self.featurizer.versions() != bundle.encoders:
            raise ValueError(f"model was trained with encoders {bundle.encoders}, "
                             f"featurizer gives {self.featurizer.versions()}")

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def _forward(self, records: list[dict[str, Any]]) -> tuple[np.ndarray, Batch, tuple[torch.Tensor, ...]]:
        """Probabilities (the calibration's temperature applied: what serves), the batch, and the fused
        model's tokens (the routing reuses them)."""
        batch = self.featurizer.batch(records, self.bundle.sensor_mean, self.bundle.sensor_std)
        model = self.bundle.model
        if model.training:
            model.eval()
        with torch.inference_mode():
            tokens = model.tokens(batch)
            probs = torch.softmax(model.classify(*tokens).float(), dim=-1).numpy()
        return scale(probs, self.router.calibration), batch, tokens

    def probabilities(self, records: list[dict[str, Any]]) -> np.ndarray:
        """(N, C) class probabilities."""
        if not records:
            return np.zeros((0, len(self.labels)), np.float32)
        return self._forward(records)[0]

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Label, probabilities, the modalities the model actually used, and the routing
        (prediction_set, decision, review_reason, disagreement: mmcore.selective), per record."""
        if not records:
            return []
        probs, batch, tokens = self._forward(records)
        routed = self.router.route(probs, batch, self.labels, tokens)
        return answer_dicts(records, probs, routed, self.labels, set(self.bundle.model.cfg.modalities))


def load_model(path: str | Path, cache_dir: Path | None = None, onnx_cache: Path | None = None) -> Predictor:
    """Load a model directory (safetensors + JSON, no pickle) with its frozen encoders; a model trained on
    int8 encoder graphs embeds through them, found by digest in its packaged `onnx/int8/` or beside the
    encoders' ONNX export in `onnx_cache` (default `cache_dir`)."""
    bundle = ModelBundle.load(Path(path))
    feat = Featurizer.for_bundle(bundle, cache_dir=cache_dir, onnx_cache=onnx_cache,
                                 graph_dirs=[Path(path) / "onnx" / "int8", Path(path) / "int8-graphs"])
    return Predictor(bundle, feat, Router.load(Path(path), bundle))
