"""Fine-tuning strategies: which parts of the pretrained encoders train with the fusion head.

`frozen` trains the head on cached embeddings (no encoder in the loop). The others put
the encoders in the loop on decoded pixels and token ids:
`top_k` unfreezes the last k blocks of each encoder, `full` everything, and `lora` adds
low-rank adapters (peft) to the text encoder's attention, merged into plain weights when
training ends, so the saved model needs no peft to load. EfficientNet-Lite's convolutions
are a padding subclass of Conv2d that peft cannot rebuild, so under `lora` the image
trunk stays frozen (use `top_k` to adapt it).
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from mmcore.config import CLASSES, ModelConfig, TrainConfig
from mmcore.model import Batch, FusionModel
from mmcore.preprocess import normalise_pixels

LORA_TARGETS = ["query", "value"]


class EncoderStack(nn.Module):
    """The image and text encoders as one trainable module: pixels and token ids to embeddings."""

    def __init__(self, text_max_tokens: int) -> None:
        super().__init__()
        from mmcore.encoders import ImageEncoder, TextEncoder

        self.image = ImageEncoder()
        self.text = TextEncoder(max_tokens=text_max_tokens)

    def train(self, mode: bool = True) -> "EncoderStack":
        """BatchNorm statistics stay as pretrained: training batches are small and part of the trunk is frozen."""
        super().train(mode)
        for m in self.image.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B,3,H,W) uint8, tokens (B,2,T) ids and attention mask -> (B,1280), (B,384)."""
        x = normalise_pixels(pixels)
        if x.is_cuda:            # the layout fit gives the convolutions on CUDA (fit.channels_last_on_cuda)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.image(x), self.text.encode_ids(tokens[:, 0], tokens[:, 1])


class FinetuneModel(nn.Module):
    """Encoders in the loop, then the same FusionModel head as the frozen strategy.

    Its Batch carries pixels in `image` and token ids in `text`; the head sees embeddings.
    """

    def __init__(self, head: FusionModel, encoders: nn.Module) -> None:
        super().__init__()
        self.head, self.encoders = head, encoders
        self.cfg = head.cfg

    def embed(self, batch: Batch) -> Batch:
        image, text = self.encoders(batch.image, batch.text)
        return Batch(image, text, batch.sensor, batch.mask, batch.ngrams)

    def tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.tokens(self.embed(batch))

    def classify(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head.classify(tokens, mask)

    def forward(self, batch: Batch, with_tokens: bool = False) -> Any:
        return self.head(self.embed(batch), with_tokens=with_tokens)


def apply_strategy(stack: EncoderStack, tcfg: TrainConfig) -> nn.Module:
    """Mark what trains; for `lora`, wrap the stack in a peft model whose adapters alone train."""
    stack.requires_grad_(tcfg.strategy == "full")
    if tcfg.strategy == "top_k":
        k = tcfg.unfreeze_top_k
        net = stack.image.net
        for m in [*net._blocks[-k:], net._conv_head, net._bn1, *stack.text.net.encoder.layer[-k:]]:
            m.requires_grad_(True)
    elif tcfg.strategy == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=tcfg.lora_rank, lora_alpha=2 * tcfg.lora_rank, lora_dropout=0.0,
                         target_modules=LORA_TARGETS)
        return get_peft_model(stack, cfg)
    return stack


def build_model(mcfg: ModelConfig, tcfg: TrainConfig, num_classes: int = len(CLASSES)) -> nn.Module:
    head = FusionModel(mcfg, num_classes)
    if tcfg.strategy == "frozen":
        return head
    return FinetuneModel(head, apply_strategy(EncoderStack(mcfg.text_max_tokens), tcfg))


def param_groups(model: nn.Module, tcfg: TrainConfig) -> list[dict[str, Any]]:
    """The head at `lr`, trainable encoder weights at `encoder_lr`."""
    if not isinstance(model, FinetuneModel):
        return [{"params": list(model.parameters()), "lr": tcfg.lr}]
    enc = [p for p in model.encoders.parameters() if p.requires_grad]
    return [{"params": list(model.head.parameters()), "lr": tcfg.lr}, {"params": enc, "lr": tcfg.encoder_lr}]


def split_trained(model: nn.Module) -> tuple[FusionModel, dict[str, torch.Tensor] | None]:
    """(head, plain encoder weights or None): LoRA adapters merged, ready for safetensors."""
    if not isinstance(model, FinetuneModel):
        return model, None
    enc = model.encoders
    if hasattr(enc, "merge_and_unload"):
        enc = enc.merge_and_unload()
    return model.head, {k: v.detach().contiguous() for k, v in enc.state_dict().items()}


def weights_tag(state: dict[str, torch.Tensor]) -> str:
    """A short content hash of encoder weights: part of the encoder version, so caches never mix."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].float().numpy().tobytes())
    return h.hexdigest()[:12]
