"""From records to model input, through the frozen encoders and their embedding cache.

A record here is a plain dict, the same in training and serving:
`{"image": bytes | None, "note": str | None, "sensor": {"t_s": [...], "temperature_c": [...], ...} | None}`.
Frozen embeddings are cached by content hash and encoder version, so a retrain
after new data embeds only the new records.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from mmcore.config import SENSOR_CHANNELS, ModelConfig
from mmcore.encoders import IMAGE_DIM, TEXT_DIM, autocast, default_device
from mmcore.model import Batch
from mmcore.preprocess import normalise_sensor, prepare_image, prepare_note, sensor_features


class EmbeddingCache:
    """Append-only chunks of (key -> vector) per encoder version, stored as safetensors + JSON keys."""

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
        save_file({"emb": np.ascontiguousarray(emb, dtype=np.float32)}, str(tmp))
        os.replace(tmp, self.dir / f"{name}.safetensors")
        # keys last: a chunk without its keys file is ignored, so a crash leaves no half entry
        (self.dir / f"{name}.json").write_text(json.dumps(keys))


def text_key(note: str) -> str:
    return hashlib.sha256(note.encode("utf-8")).hexdigest()


def image_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Featurizer:
    """Frozen encoders + cache; builds `Batch`es for a model bundle's sensor statistics."""

    def __init__(self, cfg: ModelConfig, cache_dir: Path | None = None, device: str | None = None,
                 batch_size: int = 32, progress: bool = False) -> None:
        self.cfg, self.batch_size, self.progress = cfg, batch_size, progress
        self.device = device or default_device()
        self._image_enc: Any = None
        self._text_enc: Any = None
        self.cache_dir = cache_dir
        self.image_cache = EmbeddingCache(cache_dir, self.image_version)
        self.text_cache = EmbeddingCache(cache_dir, self.text_version)
        self.embedded = {"image": 0, "text": 0}

    @property
    def image_version(self) -> str:
        return f"efficientnet-lite0-imagenet-{self.cfg.image_size}"

    @property
    def text_version(self) -> str:
        return f"all-MiniLM-L6-v2-{self.cfg.text_max_tokens}"

    def versions(self) -> dict[str, str]:
        return {"image": self.image_version, "text": self.text_version}

    def image_encoder(self) -> Any:
        if self._image_enc is None:
            from mmcore.encoders import ImageEncoder

            self._image_enc = ImageEncoder().eval().to(self.device)
        return self._image_enc

    def text_encoder(self) -> Any:
        if self._text_enc is None:
            from mmcore.encoders import TextEncoder

            self._text_enc = TextEncoder(max_tokens=self.cfg.text_max_tokens).eval().to(self.device)
        return self._text_enc

    @torch.inference_mode()
    def _embed(self, items: dict[str, Any], cache: EmbeddingCache, kind: str) -> None:
        todo = cache.missing(items)
        steps = range(0, len(todo), self.batch_size)
        for start in tqdm(steps, desc=f"embed {kind}", unit="batch", disable=not self.progress or not todo):
            keys = todo[start:start + self.batch_size]
            with autocast(self.device):
                if kind == "image":
                    x = torch.from_numpy(np.stack([prepare_image(items[k], self.cfg.image_size) for k in keys]))
                    emb = self.image_encoder()(x.to(self.device))
                else:
                    emb = self.text_encoder()([items[k] for k in keys])
            cache.put(keys, emb.float().cpu().numpy())
            self.embedded[kind] += len(keys)

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

    def sensors(self, records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(raw features (N,4,L), presence (N,)) before normalisation."""
        out = np.zeros((len(records), len(SENSOR_CHANNELS), self.cfg.sensor_length), np.float32)
        present = np.zeros(len(records), np.float32)
        for i, r in enumerate(records):
            if (s := r.get("sensor")) is not None:
                out[i] = sensor_features(*sensor_arrays(s), self.cfg.sensor_length)
                present[i] = 1
        return out, present

    def batch(self, records: list[dict[str, Any]], mean: np.ndarray, std: np.ndarray) -> Batch:
        img, txt, present = self.embed(records)
        sens, s_present = self.sensors(records)
        sens = normalise_sensor(sens, mean, std) * s_present[:, None, None]
        mask = np.concatenate([present, s_present[:, None]], axis=1)
        return Batch(torch.from_numpy(img), torch.from_numpy(txt), torch.from_numpy(sens),
                     torch.from_numpy(mask))


def sensor_arrays(sensor: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A sensor dict to (t_s (rows,), channels (rows,4)); without t_s the rate is taken as fixed."""
    channels = np.stack([np.asarray(sensor[c], dtype=np.float64) for c in SENSOR_CHANNELS], axis=1)
    t = sensor.get("t_s")
    t_s = np.asarray(t, dtype=np.float64) if t is not None else np.arange(len(channels), dtype=np.float64)
    return t_s, channels


def sensor_stats(raw_feats: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std over present training traces; stored with the model."""
    sel = raw_feats[present > 0]
    if len(sel) == 0:
        return np.zeros(raw_feats.shape[1], np.float32), np.ones(raw_feats.shape[1], np.float32)
    mean = sel.mean(axis=(0, 2))
    std = sel.std(axis=(0, 2)) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)
