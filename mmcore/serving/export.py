"""A model directory to ONNX files for ONNX Runtime, at packaging time (the package stage).

Written next to the safetensors weights, in `onnx/`: the image encoder (`image.onnx`), the text
encoder with a dynamic sequence length (`text.onnx`, plus the tokenizer's `tokenizer.json`), and the
fusion head with its leave-one-out logits and the unimodal opinions (`head.onnx`); `int8/` holds the quantised encoders when they are kept.
`runtime.json` in the model directory records which runtimes the directory can serve with.
Fine-tuned encoder weights are exported as the model uses them (the featurizer loads them).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from mmcore.features import Featurizer, cache_key
from mmcore.encoders import IMAGE_DIM, TEXT_DIM
from mmcore.model import MODALITIES, Batch, FusionModel, ModelBundle
from mmcore.preprocess import prepare_image
from mmcore.selective.router import Router

OPSET = 18
ONNX_DIR = "onnx"
INT8_DIR = "int8"
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


class TextGraph(nn.Module):
    """Token ids and attention mask to the pooled, normalised sentence embedding."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.eval()

    def forward(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_ids(ids, attention)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], dynamo: bool = False) -> Path:
    """ONNX export checked by onnx.checker. The TorchScript exporter is exact for the image encoder and
    the head (within 1e-5) and ten times faster to run; MiniLM under transformers 5 it traces into a graph
    0.06 off torch, so the text encoder goes through torch.export (`dynamo`), exact within 1e-6."""
    import onnx

    module = module.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")   # the exporters' deprecation, tracer and decomposition notes
        if dynamo:
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            dims = {name: torch.export.Dim(name, max=4096) for axes in dynamic.values() for name in axes.values()}
            shapes = tuple({axis: dims[name] for axis, name in dynamic[i].items()} for i in inputs)
            torch.onnx.export(module, args, input_names=inputs, output_names=outputs, dynamic_shapes=shapes,
                              opset_version=OPSET, dynamo=True).save(str(path))
        else:   # grad stays on: nn.TransformerEncoderLayer then traces its exportable path, not the fused kernel
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def export_head(model: FusionModel, opinions: dict[str, FusionModel], path: Path) -> Path:
    cfg, n = model.cfg, 2
    args = (torch.zeros(n, IMAGE_DIM), torch.zeros(n, TEXT_DIM), torch.zeros(n, 4, cfg.sensor_length),
            torch.ones(n, 3), torch.zeros(n, cfg.text_ngram_buckets))
    dynamic = {k: {0: "batch"} for k in HEAD_INPUTS}
    return _export(HeadGraph(model, opinions), args, path, list(HEAD_INPUTS), ["logits", "without_each", "opinions"],
                   dynamic)


def export_encoders(featurizer: Featurizer, out: Path) -> dict[str, str]:
    image = featurizer.torch_image_encoder().cpu()
    size = featurizer.cfg.image_size
    _export(image, (torch.zeros(2, 3, size, size),), out / "image.onnx", ["pixels"], ["image_embedding"],
            {"pixels": {0: "batch"}})
    text = featurizer.torch_text_encoder().cpu()
    ids, attention = text.tokenize(["a dented box", "wet"])
    _export(TextGraph(text), (ids, attention), out / "text.onnx", ["ids", "attention"], ["sentence_embedding"],
            {"ids": {0: "batch", 1: "tokens"}, "attention": {0: "batch", 1: "tokens"}}, dynamo=True)
    text.tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    return {"image": "image.onnx", "text": "text.onnx", "tokenizer": "tokenizer.json",
            "pad_token": text.tokenizer.pad_token}


class OnnxImageEncoder:
    """ONNX Runtime in place of `mmcore.encoders.ImageEncoder` for the featurizer: pixels in, (B, 1280) out."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"pixels": x.cpu().numpy()})[0])


class OnnxTextEncoder:
    """In place of `mmcore.encoders.TextEncoder`: notes in, (B, 384) out, tokenised as it does."""

    def __init__(self, session: Any, torch_encoder: Any) -> None:
        self.session, self.tokenize = session, torch_encoder.tokenize

    def __call__(self, notes: list[str]) -> torch.Tensor:
        ids, attention = self.tokenize(notes)
        return torch.from_numpy(self.session.run(None, {"ids": ids.numpy(), "attention": attention.numpy()})[0])


def encoder_exports(featurizer: Featurizer, cache_dir: Path | None) -> tuple[Path, dict[str, str]]:
    """The featurizer's encoders exported to ONNX, once per cache and encoder key (a temporary folder
    without a cache): the frozen encoders are the same for every model trained on them."""
    import tempfile

    root = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="mmcore-onnx-"))
    out = root / "onnx-encoders" / cache_key(featurizer.cache_keys["image"], featurizer.cache_keys["text"])
    if not (out / "files.json").is_file():
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "files.json").write_text(json.dumps(export_encoders(featurizer, tmp)), encoding="utf-8")
        if out.exists():
            shutil.rmtree(tmp)      # another process finished first: same files
        else:
            os.replace(tmp, out)
    return out, json.loads((out / "files.json").read_text(encoding="utf-8"))


def onnx_encoders(featurizer: Featurizer, cache_dir: Path | None, tolerance: float = 1e-4) -> dict[str, Any]:
    """The featurizer's pretrained encoders on ONNX Runtime, exported once per cache (keyed like its
    embeddings) and used only if they embed a probe set as torch does within `tolerance`."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    out, _ = encoder_exports(featurizer, cache_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    image = OnnxImageEncoder(ort.InferenceSession(str(out / "image.onnx"), opts, providers=["CPUExecutionProvider"]))
    text = OnnxTextEncoder(ort.InferenceSession(str(out / "text.onnx"), opts, providers=["CPUExecutionProvider"]),
                           featurizer.torch_text_encoder())
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.uniform(-1, 1, (2, 3, featurizer.cfg.image_size, featurizer.cfg.image_size))
                              .astype(np.float32))
    notes = ["corner crushed, box dented", "wet", "外箱破损 " * 30]
    with torch.inference_mode():
        gap = max(float((image(pixels) - featurizer.torch_image_encoder()(pixels)).abs().max()),
                  float((text(notes) - featurizer.torch_text_encoder()(notes)).abs().max()))
    if gap > tolerance:
        raise RuntimeError(f"the ONNX export of the encoders embeds {gap:.2g} away from torch (limit {tolerance}): "
                           "set train.embed_backend: torch in params.yaml and report this")
    return {"image": image, "text": text}


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
        shutil.copytree(exports, out)
        (out / "files.json").unlink()
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


class ImageCalibration:
    """ONNX Runtime's CalibrationDataReader over training-split images, one per call."""

    def __init__(self, images: list[bytes], size: int) -> None:
        self.images, self.size = images, size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for data in self.images:
            yield {"pixels": prepare_image(data, self.size)[None]}


def quantise_encoders(model_dir: Path, calibration_images: list[bytes]) -> dict[str, str]:
    """int8 encoders with ONNX Runtime's tooling: static QDQ (per-channel weights, activation ranges
    from `calibration_images`) for the convolutional image encoder, dynamic quantisation of the
    text encoder's matmuls. Writes `onnx/int8/`; returns its files relative to `onnx/`."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static

    src = Path(model_dir) / ONNX_DIR
    dst = src / INT8_DIR
    dst.mkdir(exist_ok=True)
    size = ModelBundle.load(Path(model_dir)).model.cfg.image_size

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(ImageCalibration(calibration_images, size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    # ONNX Runtime's basic graph optimisations first: they fold the exported "same" padding into the
    # convolutions, which otherwise stay float between a dequantise and a quantise (int8 then ran at
    # the fp32 pace; measured 15.8 vs 15.7 ms, folded 7.7 ms, batch 1, one thread)
    folded = dst / "image-folded.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(src / "image.onnx"), opts, providers=["CPUExecutionProvider"])
    with _quiet():
        quantize_static(str(folded), str(dst / "image.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        quantize_dynamic(str(src / "text.onnx"), str(dst / "text.onnx"), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8)
    folded.unlink()
    return {"image": f"{INT8_DIR}/image.onnx", "text": f"{INT8_DIR}/text.onnx"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantiser logs a warning per bias it clips and a hint to pre-process: not the user's to act on."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
