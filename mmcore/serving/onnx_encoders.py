"""The pretrained encoders on ONNX Runtime: exported once per cache, and used in place of torch only
once they embed a probe set as torch does.

Training's featurizer embeds with them (`train.embed_backend: onnx`, mmcore/features.py) and the
package stage ships them (mmcore/serving/export.py). A featurizer is all they need, never its
module, so they sit below both and neither imports the other for them.
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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:   # features imports this module when it embeds on ONNX Runtime
    from mmcore.features import Featurizer

OPSET = 18


class TextGraph(nn.Module):
    """Token ids and attention mask to the pooled, normalised sentence embedding."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.eval()

    def forward(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_ids(ids, attention)


def export_onnx(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
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


def export_encoders(featurizer: Featurizer, out: Path) -> dict[str, str]:
    image = featurizer.torch_image_encoder().cpu()
    size = featurizer.cfg.image_size
    export_onnx(image, (torch.zeros(2, 3, size, size),), out / "image.onnx", ["pixels"], ["image_embedding"],
            {"pixels": {0: "batch"}})
    text = featurizer.torch_text_encoder().cpu()
    ids, attention = text.tokenize(["a dented box", "wet"])
    export_onnx(TextGraph(text), (ids, attention), out / "text.onnx", ["ids", "attention"], ["sentence_embedding"],
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
    out = root / "onnx-encoders" / featurizer.cache_keys["onnx"]
    if not (out / "files.json").is_file():
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "files.json").write_text(json.dumps(export_encoders(featurizer, tmp)), encoding="utf-8")
        if out.exists():
            shutil.rmtree(tmp)      # another process finished first: same files
        else:
            os.replace(tmp, out)
    return out, json.loads((out / "files.json").read_text(encoding="utf-8"))


def onnx_encoders(featurizer: Featurizer, cache_dir: Path | None, tolerance: float = 1e-4,
                  int8: dict[str, str] | None = None, graph_dirs: list[Path] | None = None) -> dict[str, Any]:
    """The featurizer's pretrained encoders on ONNX Runtime, exported once per cache (keyed like its
    embeddings) and used only if they embed a probe set as torch does within `tolerance`; then the
    encoders in `int8` ({encoder: sha256}) swapped for those exact graphs (mmcore.serving.int8, looked
    up beside the export and in `graph_dirs`): a model trained on them embeds through nothing else."""
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
    found = {"image": image, "text": text}
    if int8:
        from mmcore.serving.int8 import INT8_DIR, find_graph

        folders = [out / INT8_DIR, *(graph_dirs or [])]
        sessions = {name: ort.InferenceSession(str(find_graph(digest, folders)), opts,
                                               providers=["CPUExecutionProvider"]) for name, digest in int8.items()}
        if "image" in sessions:
            found["image"] = OnnxImageEncoder(sessions["image"])
        if "text" in sessions:
            found["text"] = OnnxTextEncoder(sessions["text"], featurizer.torch_text_encoder())
    return found
