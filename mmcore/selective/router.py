"""A model version's routing: its calibration and its unimodal models' opinions, from its model directory.

The train stage saves the unimodal baselines next to the fused model (`opinions/<modality>/`), so
the registered version, the bento and the service all carry them. An opinion reuses the fused
model's batch (same frozen encoders, same inputs); a baseline trained with encoders of its own
(fine-tuned strategies) cannot, and gives no opinion.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcore.evaluate import model_probs
from mmcore.model import MODALITIES, Batch, ModelBundle
from mmcore.selective.calibrate import Calibration
from mmcore.selective.decide import answers, leave_one_out_disagreement, pairwise_disagreement

OPINIONS = "opinions"
INPUT_KEYS = ("image_size", "text_max_tokens", "sensor_length", "text_ngram_buckets")


def shares_inputs(opinion: ModelBundle, fused: ModelBundle) -> bool:
    same = all(getattr(opinion.model.cfg, k) == getattr(fused.model.cfg, k) for k in INPUT_KEYS)
    return same and opinion.encoders == fused.encoders and opinion.encoder_state is None \
        and fused.encoder_state is None and np.allclose(opinion.sensor_mean, fused.sensor_mean)


@dataclass
class Router:
    calibration: Calibration | None
    opinions: dict[str, ModelBundle] = field(default_factory=dict)
    fused: ModelBundle | None = None
    detector: str = "leave_one_out"     # mmcore.selective.decide.DETECTORS; the calibration names its own

    def __post_init__(self) -> None:
        if self.calibration is not None:
            self.detector = self.calibration.detector

    @classmethod
    def load(cls, model_dir: Path, fused: ModelBundle) -> "Router":
        found = {m: ModelBundle.load(Path(model_dir) / OPINIONS / m) for m in MODALITIES
                 if (Path(model_dir) / OPINIONS / m / "config.json").is_file()}
        return cls(Calibration.load(model_dir), {m: b for m, b in found.items() if shares_inputs(b, fused)}, fused)

    @staticmethod
    def save_opinions(model_dir: Path, bundles: dict[str, ModelBundle]) -> None:
        for m, bundle in bundles.items():
            bundle.save(Path(model_dir) / OPINIONS / m)

    def opinion_probs(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(N, M, C) each unimodal model's probabilities and (N, M) whether it had its modality."""
        n, mask = len(batch.mask), batch.mask.numpy() > 0
        k = len(next(iter(self.opinions.values())).labels) if self.opinions else 0
        probs = np.zeros((n, len(MODALITIES), k), np.float32)
        present = np.zeros((n, len(MODALITIES)), bool)
        for i, m in enumerate(MODALITIES):
            if m in self.opinions:
                probs[:, i] = model_probs(self.opinions[m].model, batch)
                present[:, i] = mask[:, i]
        return probs, present

    def disagreement(self, batch: Batch, detector: str | None = None,
                     tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
        """How much the record's modalities contradict each other (0 = no opinions to compare);
        `tokens`: the fused model's tokens of this batch, when the caller computed them already."""
        if not self.opinions:
            return np.zeros(len(batch.mask))
        opinions, present = self.opinion_probs(batch)
        if (detector or self.detector) == "pairwise" or self.fused is None:
            return pairwise_disagreement(opinions, present)
        if self.fused.model.training:
            self.fused.model.eval()
        with torch.inference_mode():
            logits = self.fused.model.without_each(batch, tokens)
        others = torch.softmax(logits.float(), -1).permute(1, 0, 2).numpy()
        return leave_one_out_disagreement(opinions, others, present)

    def route(self, probs: np.ndarray, batch: Batch, labels: list[str],
              tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[dict[str, Any]]:
        return answers(probs, self.disagreement(batch, tokens=tokens), self.calibration, labels)
