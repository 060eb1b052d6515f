"""The fused parcel-condition model: modality projections, missing embeddings, fusion head.

The trained part works on frozen-encoder embeddings (image, text) and the raw
resampled sensor trace. A model directory holds `weights.safetensors` and
`config.json` (model config, label map, sensor statistics, encoder versions):
loading it runs no pickle.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmcore.config import CLASSES, ModelConfig
from mmcore.encoders import IMAGE_DIM, TEXT_DIM, SensorEncoder

MODALITIES: tuple[str, ...] = ("image", "text", "sensor")
ENCODER_WEIGHTS = "encoders.safetensors"


@dataclass
class Batch:
    """Model input; a modality's mask is 1 where it is present. Shapes in comments."""

    image: torch.Tensor        # (B, 1280) frozen image embedding
    text: torch.Tensor         # (B, 384) frozen text embedding
    sensor: torch.Tensor       # (B, 4, L) normalised trace
    mask: torch.Tensor         # (B, 3) presence of image, text, sensor
    ngrams: torch.Tensor       # (B, K) hashed character n-grams of the note, K = text_ngram_buckets

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The fields in order, as they are (`dataclasses.astuple` deep-copies every tensor: a copy of
        the whole training set for each batch `fit` sliced from it)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def to(self, device: str | torch.device) -> "Batch":
        """On `device`; a no-op on the device it is on."""
        return Batch(*(t.to(device) for t in self.tensors()))


class GatedFusion(nn.Module):
    """Softmax gates over modality tokens: the model learns which modality to trust per sample."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.gate = nn.Linear(w * len(MODALITIES), len(MODALITIES))
        self.out_dim = w

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.gate(tokens.flatten(1))                          # (B, 3)
        scores = scores.masked_fill(mask == 0, -1e4)                   # absent modalities get ~0 weight
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)          # (B, 3, 1)
        return (weights * tokens).sum(1)                               # (B, w)


class AttentionFusion(nn.Module):
    """A learned query token attends over the modality tokens (one transformer layer)."""

    def __init__(self, w: int, dropout: float) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, w))
        self.type_emb = nn.Parameter(torch.zeros(1, len(MODALITIES), w))
        self.layer = nn.TransformerEncoderLayer(w, nhead=4, dim_feedforward=2 * w, dropout=dropout,
                                                batch_first=True, norm_first=True)
        self.out_dim = w

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens + self.type_emb], dim=1)  # (B, 4, w)
        return self.layer(x)[:, 0]                                                           # (B, w)


class ConcatFusion(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.out_dim = w * len(MODALITIES)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return tokens.flatten(1)                                        # (B, 3w)


class FusionModel(nn.Module):
    """Modality tokens (a learned "missing" embedding stands in for an absent one), fused by
    `cfg.fusion`, then a classification head.

    `cfg.modalities` restricts which inputs the model may see: a unimodal
    baseline is the same class with one modality, so comparisons are fair.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.cfg = cfg
        w, text_dim = cfg.width, TEXT_DIM + cfg.text_ngram_buckets
        self.proj = nn.ModuleDict({
            "image": nn.Sequential(nn.LayerNorm(IMAGE_DIM), nn.Linear(IMAGE_DIM, w)),
            "text": nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, w)),
        })
        self.sensor = SensorEncoder(4, w)
        self.missing = nn.Parameter(torch.zeros(len(MODALITIES), w))
        self.fusion = {"concat": lambda: ConcatFusion(w), "gated": lambda: GatedFusion(w),
                       "attention": lambda: AttentionFusion(w, cfg.dropout)}[cfg.fusion]()
        self.head = nn.Sequential(
            nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(self.fusion.out_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, num_classes),
        )
        allowed = torch.tensor([m in cfg.modalities for m in MODALITIES], dtype=torch.float32)
        self.register_buffer("allowed", allowed, persistent=False)

    def effective_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Presence after restricting to allowed modalities and, in training, modality dropout."""
        mask = mask.float() * self.allowed
        if self.training and self.cfg.modality_dropout > 0:
            keep = (torch.rand_like(mask) >= self.cfg.modality_dropout).float()
            dropped = mask * keep
            # never drop every present modality of a sample
            mask = torch.where(dropped.sum(1, keepdim=True) > 0, dropped, mask)
        return mask

    def tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected modality tokens (B, 3, w), missing ones replaced, and the mask used (B, 3).

        In eval mode a modality the model may not see is not projected at all (its token is the missing
        embedding either way): a unimodal baseline's opinion then costs one projection, not three."""
        mask = self.effective_mask(batch.mask)
        parts = {"image": lambda: self.proj["image"](batch.image),
                 "text": lambda: self.proj["text"](torch.cat([batch.text, batch.ngrams], dim=1)),
                 "sensor": lambda: self.sensor(batch.sensor)}
        skip = not self.training
        tokens = torch.stack([mask.new_zeros(mask.shape[0], self.missing.shape[1])
                              if skip and m not in self.cfg.modalities else parts[m]() for m in MODALITIES], dim=1)
        m = mask.unsqueeze(-1)
        return tokens * m + self.missing.unsqueeze(0) * (1 - m), mask

    def without_each(self, batch: Batch, tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(M, B, C) logits with each modality in turn marked absent, from one pass through the encoders'
        projections (or `tokens`, this batch's `self.tokens(batch)` when the caller has them): what the rest
        of the record says about each modality (mmcore.selective's disagreement). Written without in-place
        writes so that it exports to ONNX with a dynamic batch."""
        tokens, mask = tokens or self.tokens(batch)
        drop = torch.eye(len(MODALITIES), dtype=tokens.dtype, device=tokens.device)     # (M, 3): row j drops j
        t = tokens.unsqueeze(0) * (1 - drop)[:, None, :, None] + (drop[:, :, None] * self.missing)[:, None]
        k = mask.unsqueeze(0) * (1 - drop)[:, None, :]                                 # (M, B, 3)
        return self.classify(t.flatten(0, 1), k.flatten(0, 1)).unflatten(0, (len(MODALITIES), -1))

    def classify(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.fusion(tokens, mask))                     # (B, C)

    def forward(self, batch: Batch, with_tokens: bool = False) -> Any:
        """Logits (B, C); with `with_tokens`, (logits, tokens, mask) for auxiliary losses (one
        forward call, so DistributedDataParallel sees it)."""
        tokens, mask = self.tokens(batch)
        logits = self.classify(tokens, mask)
        return (logits, tokens, mask) if with_tokens else logits


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric CLIP loss between paired rows of a and b (B, w)."""
    a, b = nn.functional.normalize(a, dim=-1), nn.functional.normalize(b, dim=-1)
    logits = a @ b.T / temperature                                      # (B, B)
    target = torch.arange(len(a), device=a.device)
    return (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2


@dataclass
class ModelBundle:
    """A trained head plus everything inference needs besides the frozen encoders."""

    model: FusionModel
    labels: list[str]
    sensor_mean: np.ndarray
    sensor_std: np.ndarray
    encoders: dict[str, str]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    encoder_state: dict[str, torch.Tensor] | None = None   # fine-tuned encoder weights; None: pretrained

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(path / "weights.safetensors"))
        if self.encoder_state is not None:
            save_file(self.encoder_state, str(path / ENCODER_WEIGHTS))
        cfg = dataclasses.asdict(self.model.cfg)
        cfg["modalities"] = list(cfg["modalities"])
        meta = {"model": cfg, "labels": self.labels, "sensor_mean": self.sensor_mean.tolist(),
                "sensor_std": self.sensor_std.tolist(), "encoders": self.encoders, "extra": self.extra}
        (path / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "ModelBundle":
        meta = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        mcfg = dict(meta["model"])
        mcfg["modalities"] = tuple(mcfg["modalities"])
        model = FusionModel(ModelConfig(**mcfg), num_classes=len(meta["labels"]))
        model.load_state_dict(load_file(str(Path(path) / "weights.safetensors")))
        model.eval()
        enc = Path(path) / ENCODER_WEIGHTS
        return cls(model, meta["labels"], np.asarray(meta["sensor_mean"], np.float32),
                   np.asarray(meta["sensor_std"], np.float32), meta["encoders"], meta.get("extra", {}),
                   load_file(str(enc)) if enc.is_file() else None)
