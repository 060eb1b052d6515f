"""From records to model input, through the frozen encoders and their embedding cache.

A record here is a plain dict, the same in training and serving:
`{"image": bytes | None, "note": str | None, "sensor": {"t_s": [...], "temperature_c": [...], ...} | None}`.
Frozen embeddings are cached by content hash and encoder version, so a retrain
after new data embeds only the new records.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from mmcore import encoders, preprocess
from mmcore.config import SENSOR_CHANNELS, ModelConfig
from mmcore.encoders import IMAGE_DIM, TEXT_DIM, autocast, default_device
from mmcore.finetune import weights_tag
from mmcore.model import Batch, ModelBundle
from mmcore.progress import progress
from mmcore.preprocess import (image_pixels, ngram_block, normalised_block, prepare_image, prepare_note,
                              sensor_block)

Sensors = tuple[np.ndarray, np.ndarray]   # `Featurizer.sensors`: raw traces (N,4,L), presence (N,)


class EmbeddingCache:
    """Append-only chunks of (key -> array) per version, stored as safetensors + JSON keys.

    Holds frozen-encoder embeddings (float32) and decoded images at training resolution (uint8).
    """

    def __init__(self, root: Path | None, version: str) -> None:
        self.dir = Path(root) / version if root else None
        self.mem: dict[str, np.ndarray] = {}
        if self.dir and self.dir.is_dir():
            for keys_file in sorted(self.dir.glob("chunk-*.json")):
                tensors = self.dir / keys_file.name.replace(".json", ".safetensors")
                if tensors.is_file():
                    emb = load_file(str(tensors))["emb"]
                    self.mem.update(zip(json.loads(keys_file.read_text()), emb))

    def missing(self, keys: Iterable[str]) -> list[str]:
        return sorted({k for k in keys if k not in self.mem})

    def put(self, keys: list[str], emb: np.ndarray) -> None:
        self.mem.update(zip(keys, emb))
        if not self.dir or not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"chunk-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:16]}"
        tmp = self.dir / f".{name}.tmp"
        save_file({"emb": np.ascontiguousarray(emb)}, str(tmp))
        os.replace(tmp, self.dir / f"{name}.safetensors")
        # keys last: a chunk without its keys file is ignored, so a crash leaves no half entry
        (self.dir / f"{name}.json").write_text(json.dumps(keys))


INT8_KEY = "int8_encoders"      # ModelBundle.extra: {encoder: sha256 of the int8 graph it was trained on}


def text_key(note: str) -> str:
    return hashlib.sha256(note.encode("utf-8")).hexdigest()


def image_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def module_fingerprint(module: ModuleType) -> str:
    """Source text plus the current values of its upper-case constants: an edit or a run-time patch shows."""
    consts = {k: repr(v) for k, v in sorted(vars(module).items()) if k.isupper()}
    return hashlib.sha256((inspect.getsource(module) + json.dumps(consts)).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Digest of the files' bytes (each read once per process and while unchanged on disk)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        st = path.stat()
        digest.update(f"{path.name}:{_file_digest(str(path), st.st_size, st.st_mtime_ns)}".encode())
    return digest.hexdigest()


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


class Featurizer:
    """Frozen encoders + cache; builds `Batch`es for a model bundle's sensor statistics.

    Cached arrays are keyed by content hash under a folder named for everything that made them:
    the encoder and input size (`versions()`, what a model records), plus a hash of the preprocessing
    and encoder code, of the encoder weights and of the compute dtype. Change any of these and the
    cache misses, so old and new embeddings are never mixed."""

    def __init__(self, cfg: ModelConfig, cache_dir: Path | None = None, device: str | None = None,
                 batch_size: int = 32, progress: bool = False,
                 encoder_state: dict[str, torch.Tensor] | None = None, backend: str = "torch",
                 int8: dict[str, str] | None = None, graph_dirs: list[Path] | None = None,
                 onnx_cache: Path | None = None) -> None:
        self.cfg, self.batch_size, self.progress = cfg, batch_size, progress
        self.encoder_state = encoder_state
        self.tag = f"+ft-{weights_tag(encoder_state)}" if encoder_state is not None else ""
        self.device = device or default_device()
        self._image_enc: Any = None
        self._text_enc: Any = None
        self.cache_dir = cache_dir
        self.onnx_cache = onnx_cache or cache_dir    # where the encoders' ONNX exports live (int8 graphs beside)
        code = module_fingerprint(preprocess)
        self.dtype = "bf16" if torch.device(self.device).type == "cuda" else "fp32"   # mmcore.encoders.autocast
        # ONNX Runtime embeds for the pretrained encoders on CPU (train.embed_backend), once its export
        # has answered as torch does (mmcore.serving.onnx_encoders); fine-tuned ones and CUDA use torch
        self.backend = "onnx" if backend == "onnx" and encoder_state is None and self.dtype == "fp32" else "torch"
        made_by = [code, module_fingerprint(encoders), self.dtype, self.backend]
        image_weights = files_fingerprint(encoders.image_weight_files())
        text_weights = files_fingerprint(encoders.text_weight_files())
        self.cache_keys = {"image": f"{self.image_version}-{cache_key(*made_by, image_weights)}",
                           "text": f"{self.text_version}-{cache_key(*made_by, text_weights)}",
                           "pixels": f"decoded-{cfg.image_size}-{cache_key(code)}"}
        self.cache_keys["onnx"] = cache_key(self.cache_keys["image"], self.cache_keys["text"])   # their ONNX export
        # int8 graphs (mmcore.serving.int8), named by sha256, replace the fp32 export per encoder; their
        # embeddings get a folder of their own, so int8 and fp32 embeddings never mix
        self.int8 = dict(int8 or {})
        if self.int8 and self.backend != "onnx":
            raise ValueError(f"int8 encoders {sorted(self.int8)} run on ONNX Runtime on CPU: this featurizer embeds "
                             f"with torch ({'fine-tuned encoders' if encoder_state is not None else self.device})")
        self.graph_dirs = [Path(d) for d in graph_dirs or []]
        for name, digest in self.int8.items():
            self.cache_keys[name] = f"{self.cache_keys[name]}-int8-{digest[:16]}"
        self.image_cache = EmbeddingCache(cache_dir, self.cache_keys["image"])
        self.text_cache = EmbeddingCache(cache_dir, self.cache_keys["text"])
        self.pixel_cache = EmbeddingCache(cache_dir, self.cache_keys["pixels"])
        self.embedded = {"image": 0, "text": 0}
        self.decoded = 0

    @classmethod
    def for_bundle(cls, bundle: ModelBundle, **kwargs: Any) -> "Featurizer":
        """The featurizer a saved model needs: its input settings, its int8 encoder graphs (on ONNX Runtime)
        and, if fine-tuned, its encoder weights."""
        if int8 := bundle.extra.get(INT8_KEY):
            kwargs = {**kwargs, "backend": "onnx", "int8": int8}
        return cls(bundle.model.cfg, encoder_state=bundle.encoder_state, **kwargs)

    @property
    def image_version(self) -> str:
        return f"efficientnet-lite0-imagenet-{self.cfg.image_size}{self.tag}"

    @property
    def text_version(self) -> str:
        return f"all-MiniLM-L6-v2-{self.cfg.text_max_tokens}{self.tag}"

    def versions(self) -> dict[str, str]:
        return {"image": self.image_version, "text": self.text_version}

    def image_encoder(self) -> Any:
        """What embeds images here: the torch encoder, or its ONNX Runtime export (same call, same output)."""
        if self.backend == "onnx":
            return self._onnx()["image"]
        return self.torch_image_encoder()

    def text_encoder(self) -> Any:
        if self.backend == "onnx":
            return self._onnx()["text"]
        return self.torch_text_encoder()

    def torch_image_encoder(self) -> Any:
        if self._image_enc is None:
            from mmcore.encoders import ImageEncoder

            self._image_enc = self._load_state(ImageEncoder(), "image.").eval().to(self.device)
        return self._image_enc

    def torch_text_encoder(self) -> Any:
        if self._text_enc is None:
            from mmcore.encoders import TextEncoder

            self._text_enc = self._load_state(TextEncoder(max_tokens=self.cfg.text_max_tokens), "text.")
            self._text_enc = self._text_enc.eval().to(self.device)
        return self._text_enc

    def _onnx(self) -> dict[str, Any]:
        if not hasattr(self, "_onnx_encoders"):
            from mmcore.serving.onnx_encoders import onnx_encoders

            self._onnx_encoders = onnx_encoders(self, self.onnx_cache, int8=self.int8, graph_dirs=self.graph_dirs)
        return self._onnx_encoders

    def _load_state(self, encoder: torch.nn.Module, prefix: str) -> torch.nn.Module:
        if self.encoder_state is not None:
            encoder.load_state_dict({k[len(prefix):]: v for k, v in self.encoder_state.items() if k.startswith(prefix)})
        return encoder

    @torch.inference_mode()
    def _embed(self, items: dict[str, Any], cache: EmbeddingCache, kind: str) -> None:
        todo = cache.missing(items)
        unit = "image" if kind == "image" else "note"
        with progress(desc=f"embed {kind}", total=len(todo), unit=unit,
                      disable=not self.progress or not todo) as bar:
            for start in range(0, len(todo), self.batch_size):
                keys = todo[start:start + self.batch_size]
                with autocast(self.device):
                    if kind == "image":
                        x = torch.from_numpy(np.stack([prepare_image(items[k], self.cfg.image_size) for k in keys]))
                        emb = self.image_encoder()(x.to(self.device))
                    else:
                        emb = self.text_encoder()([items[k] for k in keys])
                cache.put(keys, emb.float().cpu().numpy())
                self.embedded[kind] += len(keys)
                bar.update(len(keys))

    def embed(self, records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image (N,1280), text (N,384), presence (N,2)) for the records' frozen modalities."""
        images = {image_key(r["image"]): r["image"] for r in records if r.get("image") is not None}
        notes = {text_key(n): n for r in records if (n := prepare_note(r.get("note")))}
        self._embed(images, self.image_cache, "image")
        self._embed(notes, self.text_cache, "text")
        img = np.zeros((len(records), IMAGE_DIM), np.float32)
        txt = np.zeros((len(records), TEXT_DIM), np.float32)
        present = np.zeros((len(records), 2), np.float32)
        for i, r in enumerate(records):
            if r.get("image") is not None:
                img[i], present[i, 0] = self.image_cache.mem[image_key(r["image"])], 1
            if note := prepare_note(r.get("note")):
                txt[i], present[i, 1] = self.text_cache.mem[text_key(note)], 1
        return img, txt, present

    def sensors(self, records: list[dict[str, Any]]) -> Sensors:
        """(raw features (N,4,L), presence (N,)) before normalisation."""
        return sensor_block(records, self.cfg.sensor_length)

    def pixels(self, records: list[dict[str, Any]]) -> np.ndarray:
        """(N, 3, S, S) uint8 at training resolution, zeros where the image is missing.

        Decoded once per image content (the cache key): later epochs and retrains read the cache."""
        images = {image_key(r["image"]): r["image"] for r in records if r.get("image") is not None}
        todo = self.pixel_cache.missing(images)
        with progress(desc="decode images", total=len(todo), unit="image",
                      disable=not self.progress or not todo) as bar:
            for start in range(0, len(todo), 256):
                keys = todo[start:start + 256]
                self.pixel_cache.put(keys, np.stack([image_pixels(images[k], self.cfg.image_size) for k in keys]))
                self.decoded += len(keys)
                bar.update(len(keys))
        out = np.zeros((len(records), 3, self.cfg.image_size, self.cfg.image_size), np.uint8)
        for i, r in enumerate(records):
            if r.get("image") is not None:
                out[i] = self.pixel_cache.mem[image_key(r["image"])]
        return out

    def tokens(self, records: list[dict[str, Any]]) -> np.ndarray:
        """(N, 2, T) token ids and attention mask, padded to text_max_tokens; all-pad where the note is missing."""
        notes = [prepare_note(r.get("note")) or "" for r in records]
        from mmcore.encoders import load_tokenizer

        tok = load_tokenizer()(notes, padding="max_length", truncation=True, max_length=self.cfg.text_max_tokens,
                               return_tensors="np")
        attention = tok["attention_mask"] * np.array([bool(n) for n in notes])[:, None]
        return np.stack([tok["input_ids"], attention], axis=1).astype(np.int64)

    def ngrams(self, records: list[dict[str, Any]]) -> torch.Tensor:
        """(N, text_ngram_buckets) character n-gram features of the notes; zeros where the note is missing."""
        return torch.from_numpy(ngram_block(records, self.cfg.text_ngram_buckets))

    def _sensor_batch(self, records: list[dict[str, Any]], mean: np.ndarray, std: np.ndarray,
                      sensors: Sensors | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`sensors`: these records' `self.sensors(records)` where the caller has them (train_bundle,
        for the statistics): resampling the traces is most of the cost of building a batch."""
        sens, present = normalised_block(sensors if sensors is not None else self.sensors(records), mean, std)
        return torch.from_numpy(sens), torch.from_numpy(present)

    def batch(self, records: list[dict[str, Any]], mean: np.ndarray, std: np.ndarray,
              sensors: Sensors | None = None) -> Batch:
        """Frozen-encoder embeddings: the input of a FusionModel."""
        img, txt, present = self.embed(records)
        sens, s_present = self._sensor_batch(records, mean, std, sensors)
        mask = torch.cat([torch.from_numpy(present), s_present[:, None]], dim=1)
        return Batch(torch.from_numpy(img), torch.from_numpy(txt), sens, mask, self.ngrams(records))

    def raw_batch(self, records: list[dict[str, Any]], mean: np.ndarray, std: np.ndarray,
                  sensors: Sensors | None = None) -> Batch:
        """Pixels and token ids: the input of a FinetuneModel (encoders in the loop)."""
        tokens = self.tokens(records)
        sens, s_present = self._sensor_batch(records, mean, std, sensors)
        present = np.stack([[r.get("image") is not None for r in records], tokens[:, 1].any(1)], axis=1)
        mask = torch.cat([torch.from_numpy(present.astype(np.float32)), s_present[:, None]], dim=1)
        return Batch(torch.from_numpy(self.pixels(records)), torch.from_numpy(tokens), sens, mask,
                     self.ngrams(records))


def sensor_stats(raw_feats: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std over present training traces; stored with the model."""
    sel = raw_feats[present > 0]
    if len(sel) == 0:
        return np.zeros(raw_feats.shape[1], np.float32), np.ones(raw_feats.shape[1], np.float32)
    mean = sel.mean(axis=(0, 2))
    std = sel.std(axis=(0, 2)) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)
