"""A model directory to ONNX files for ONNX Runtime, at packaging time (the package stage).

Written next to the safetensors weights, in `onnx/`: the image encoder (`image.onnx`), the text
encoder with a dynamic sequence length (`text.onnx`, plus the tokenizer's `tokenizer.json`), and the
fusion head with its leave-one-out logits and the unimodal opinions (`head.onnx`); `int8/` holds the
int8 encoder graphs the model was trained on, when it was (mmcore.serving.shipping).
`runtime.json` in the model directory records which runtimes the directory can serve with.
Fine-tuned encoder weights are exported as the model uses them (the featurizer loads them).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcore.features import Featurizer
from mmcore.encoders import IMAGE_DIM, TEXT_DIM
from mmcore.model import MODALITIES, Batch, FusionModel, ModelBundle
from mmcore.selective.router import Router
from mmcore.serving.int8 import INT8_DIR
from mmcore.serving.onnx_encoders import OPSET, encoder_exports, export_encoders, export_onnx

ONNX_DIR = "onnx"
RUNTIME_FILE = "runtime.json"
HEAD_INPUTS = ("image", "text", "sensor", "mask", "ngrams")


class HeadGraph(nn.Module):
    """The trained part, from embeddings to the fused logits, the logits with each modality left out,
    and each unimodal opinion's logits (zeros for a modality without one): one call serves an answer
    and its routing."""

    def __init__(self, model: FusionModel, opinions: dict[str, FusionModel]) -> None:
        super().__init__()
        self.model = model.eval()
        self.opinions = nn.ModuleDict({m: o.eval() for m, o in opinions.items()})

    def forward(self, image: torch.Tensor, text: torch.Tensor, sensor: torch.Tensor, mask: torch.Tensor,
                ngrams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = Batch(image, text, sensor, mask, ngrams)
        tokens = self.model.tokens(batch)
        logits = self.model.classify(*tokens)
        opinions = torch.stack([self.opinions[m](batch) if m in self.opinions else torch.zeros_like(logits)
                                for m in MODALITIES])
        return logits, self.model.without_each(batch, tokens), opinions


def export_head(model: FusionModel, opinions: dict[str, FusionModel], path: Path) -> Path:
    cfg, n = model.cfg, 2
    args = (torch.zeros(n, IMAGE_DIM), torch.zeros(n, TEXT_DIM), torch.zeros(n, 4, cfg.sensor_length),
            torch.ones(n, 3), torch.zeros(n, cfg.text_ngram_buckets))
    dynamic = {k: {0: "batch"} for k in HEAD_INPUTS}
    return export_onnx(HeadGraph(model, opinions), args, path, list(HEAD_INPUTS), ["logits", "without_each", "opinions"],
                   dynamic)


def export_model(model_dir: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Write `onnx/` (fp32) into a model directory and record it in `runtime.json`; pretrained encoders
    come from the cache's export when there is one (`encoder_exports`), fine-tuned ones are exported."""
    model_dir = Path(model_dir)
    bundle = ModelBundle.load(model_dir)
    out = model_dir / ONNX_DIR
    if out.exists():
        shutil.rmtree(out)
    featurizer = Featurizer.for_bundle(bundle, device="cpu", backend="onnx")   # the training featurizer's keys
    if bundle.encoder_state is None:
        exports, files = encoder_exports(featurizer, cache_dir)
        # the fp32 graphs only: the int8 ones (mmcore.serving.int8) are shipped per model, by digest
        shutil.copytree(exports, out, ignore=shutil.ignore_patterns("files.json", INT8_DIR, "int8-*.json"))
    else:
        out.mkdir()
        files = export_encoders(featurizer, out)
    opinions = {m: b.model for m, b in Router.load(model_dir, bundle).opinions.items()}
    files["head"] = export_head(bundle.model, opinions, out / "head.onnx").name
    runtime = {"opset": OPSET, "onnx_fp32": {**files, "max_tokens": bundle.model.cfg.text_max_tokens},
               "opinions": [m for m in MODALITIES if m in opinions], "onnx_int8": None}
    write_runtime(model_dir, runtime)
    return runtime


def write_runtime(model_dir: Path, runtime: dict[str, Any]) -> None:
    (Path(model_dir) / RUNTIME_FILE).write_text(json.dumps(runtime, indent=2), encoding="utf-8")
