"""The service's predictors: ONNX Runtime over the exported files (no torch), or the torch path.

`load_predictor(model_dir, backend)` is what the service calls. Both backends take the same
records, run the same preprocessing (`mmcore.preprocess`) and the same routing
(`mmcore.selective.decide`), and answer the same dicts; this module imports no torch, so the
serving image installs without it (requirements-serve.txt).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mmcore.answer import MODALITIES, answer_dicts
from mmcore.preprocess import ngram_block, prepare_image, prepare_note, sensor_input
from mmcore.selective.calibrate import Calibration, scale
from mmcore.selective.decide import answers, leave_one_out_disagreement, pairwise_disagreement

RUNTIME_FILE = "runtime.json"                # mmcore.serving.export writes it
IMAGE_DIM, TEXT_DIM = 1280, 384


def exported(model_dir: Path) -> dict[str, Any]:
    """What `runtime.json` says the directory holds ({} for a directory never packaged)."""
    path = Path(model_dir) / RUNTIME_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def resolve_backend(model_dir: Path, backend: str) -> str:
    """`auto`: int8 where the model was trained on int8 encoders, else fp32 ONNX, else torch (a directory
    never packaged)."""
    have = exported(model_dir)
    if backend == "auto":
        return next((b for b in ("onnx_int8", "onnx_fp32") if have.get(b)), "torch")
    if backend.startswith("onnx") and not have.get(backend):
        why = have.get("int8_reason", "not exported")
        raise ValueError(f"backend {backend!r}: the model directory {model_dir} has no such export ({why}); "
                         "run the package stage, or choose PARCEL_BACKEND=auto")
    return backend


def load_predictor(model_dir: str | Path, backend: str = "auto", threads: int = 1) -> Any:
    """A predictor for the directory: `OnnxPredictor` or the torch `mmcore.predict.Predictor`."""
    backend = resolve_backend(Path(model_dir), backend)
    if backend == "torch":
        import torch

        from mmcore.predict import load_model

        torch.set_num_threads(threads)
        return load_model(model_dir)
    return OnnxPredictor(Path(model_dir), backend, threads)


def forget_embeddings(predictor: Any) -> None:
    """Serving embeds every record afresh: the torch featurizer's embedding cache serves training and
    would grow with every request (ONNX Runtime keeps none)."""
    if featurizer := getattr(predictor, "featurizer", None):
        featurizer.image_cache.mem.clear()
        featurizer.text_cache.mem.clear()


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class OnnxPredictor:
    """The exported model on ONNX Runtime's CPU provider; `precision` onnx_fp32 or onnx_int8 (encoders)."""

    def __init__(self, model_dir: Path, backend: str = "onnx_fp32", threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        ort.set_default_logger_severity(3)   # errors only: its graph clean-up notes are not the user's to act on
        meta = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self.labels: list[str] = meta["labels"]
        self.cfg = meta["model"]
        self.sensor_mean = np.asarray(meta["sensor_mean"], np.float32)
        self.sensor_std = np.asarray(meta["sensor_std"], np.float32)
        self.calibration = Calibration.load(model_dir)
        self.detector = self.calibration.detector if self.calibration else "leave_one_out"
        runtime = exported(model_dir)
        files = {**runtime["onnx_fp32"], **(runtime.get(backend) or {})}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        root = model_dir / "onnx"

        def session(name: str) -> Any:
            return ort.InferenceSession(str(root / name), opts, providers=["CPUExecutionProvider"])

        self.backend = backend
        self.image, self.text, self.head = session(files["image"]), session(files["text"]), session(files["head"])
        self.opinions = [i for i, m in enumerate(MODALITIES) if m in runtime.get("opinions", [])]
        self.tokenizer = Tokenizer.from_file(str(root / files["tokenizer"]))
        self.tokenizer.enable_truncation(max_length=int(files["max_tokens"]))
        pad = files["pad_token"]
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id(pad), pad_token=pad)

    def tokens(self, notes: list[str]) -> dict[str, np.ndarray]:
        """The text encoder's inputs: token ids and attention mask, padded to the batch's longest note."""
        enc = self.tokenizer.encode_batch(notes)
        return {"ids": np.array([e.ids for e in enc], np.int64),
                "attention": np.array([e.attention_mask for e in enc], np.int64)}

    def embed(self, records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image (N,1280), text (N,384), presence (N,2)): zeros where a modality is missing."""
        n = len(records)
        img, txt = np.zeros((n, IMAGE_DIM), np.float32), np.zeros((n, TEXT_DIM), np.float32)
        with_image = [i for i, r in enumerate(records) if r.get("image") is not None]
        notes = {i: note for i, r in enumerate(records) if (note := prepare_note(r.get("note")))}
        if with_image:
            pixels = np.stack([prepare_image(records[i]["image"], self.cfg["image_size"]) for i in with_image])
            img[with_image] = self.image.run(None, {"pixels": pixels})[0]
        if notes:
            txt[list(notes)] = self.text.run(None, self.tokens(list(notes.values())))[0]
        present = np.zeros((n, 2), np.float32)
        present[with_image, 0], present[list(notes), 1] = 1, 1
        return img, txt, present

    def inputs(self, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """The head's inputs, as mmcore.features.Featurizer.batch builds them for the torch model."""
        img, txt, present = self.embed(records)
        sensor, s_present = sensor_input(records, self.cfg["sensor_length"], self.sensor_mean, self.sensor_std)
        return {"image": img, "text": txt, "sensor": sensor.astype(np.float32),
                "mask": np.concatenate([present, s_present[:, None]], axis=1).astype(np.float32),
                "ngrams": ngram_block(records, self.cfg["text_ngram_buckets"]).astype(np.float32)}

    def probabilities(self, records: list[dict[str, Any]]) -> np.ndarray:
        if not records:
            return np.zeros((0, len(self.labels)), np.float32)
        return scale(softmax(self.head.run(["logits"], self.inputs(records))[0]), self.calibration)

    def disagreement(self, mask: np.ndarray, without_each: np.ndarray, opinions: np.ndarray) -> np.ndarray:
        """mmcore.selective.router.Router.disagreement, from the head's outputs."""
        if not self.opinions:
            return np.zeros(len(mask))
        present = np.zeros(mask.shape, bool)
        present[:, self.opinions] = mask[:, self.opinions] > 0
        opinion_probs = softmax(opinions).transpose(1, 0, 2)      # (N, M, C); only present rows are read
        if self.detector == "pairwise":
            return pairwise_disagreement(opinion_probs, present)
        return leave_one_out_disagreement(opinion_probs, softmax(without_each).transpose(1, 0, 2), present)

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not records:
            return []
        feeds = self.inputs(records)
        logits, without_each, opinions = self.head.run(None, feeds)
        probs = scale(softmax(logits), self.calibration)
        routed = answers(probs, self.disagreement(feeds["mask"], without_each, opinions), self.calibration, self.labels)
        return answer_dicts(records, probs, routed, self.labels, set(self.cfg["modalities"]))


def threads_setting() -> int:
    """Intra-op threads of the one inference thread (PARCEL_THREADS; PARCEL_TORCH_THREADS is the old name)."""
    return int(os.environ.get("PARCEL_THREADS", os.environ.get("PARCEL_TORCH_THREADS", "1")))
