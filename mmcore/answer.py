"""The answer a predictor gives for one record: label, class probabilities, the modalities the model
used, and the routing fields (mmcore.selective.decide.answers).

Built alike by the torch predictor (mmcore/predict.py) and ONNX Runtime's (mmcore/serving/runtime.py),
so both answer the same dicts; torch-free for the serving image, and below both so that neither
imports the other for it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mmcore.preprocess import prepare_note

MODALITIES = ("image", "text", "sensor")     # mmcore.model.MODALITIES, without importing torch


def answer_dicts(records: list[dict[str, Any]], probs: np.ndarray, routed: list[dict[str, Any]],
                 labels: list[str], allowed: set[str]) -> list[dict[str, Any]]:
    """Label, probabilities, the modalities the model actually used, and the routing, per record."""
    out = []
    for rec, p, r in zip(records, probs, routed):
        present = {"image": rec.get("image") is not None, "text": prepare_note(rec.get("note")) is not None,
                   "sensor": rec.get("sensor") is not None}
        out.append({"label": labels[int(p.argmax())], "probabilities": {c: float(v) for c, v in zip(labels, p)},
                    "modalities": [m for m in MODALITIES if present[m] and m in allowed], **r})
    return out
