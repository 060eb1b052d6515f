"""The one preprocessing path, shared by training, evaluation and serving.

Anything that turns a raw modality into model input lives here, so the bento
and the training loop cannot drift apart (no training/serving skew).
"""
from __future__ import annotations

import io
import operator
import unicodedata
import zlib
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from mmcore.config import SENSOR_CHANNELS

if TYPE_CHECKING:  # serving runs without torch (mmcore.serving.runtime)
    import torch

# ImageNet-style EfficientNet-Lite input: RGB scaled to [-1, 1].
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5


def decode_image(data: bytes) -> Image.Image:
    """Bytes to an upright RGB image (EXIF rotation applied, CMYK/alpha/16-bit/grey unified)."""
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        img = Image.fromarray((arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "P"):
        img = on_white(img.convert("RGBA"))
    return img.convert("RGB")


def on_white(img: Image.Image, band_pixels: int = 1_000_000) -> Image.Image:
    """`img` (RGBA) over opaque white: Image.alpha_composite, pixel for pixel, in bands of about a
    megapixel. Pillow holds the GIL through one alpha_composite call (a 20-megapixel palette image:
    about 240 ms), which stalled the service's event loop while another thread decoded; between bands
    other threads run."""
    out = Image.new("RGBA", img.size, (255, 255, 255, 255))
    rows = max(1, band_pixels // max(img.width, 1))
    for top in range(0, img.height, rows):
        out.alpha_composite(img, dest=(0, top), source=(0, top, img.width, min(top + rows, img.height)))
    return out


def image_pixels(data: bytes, size: int) -> np.ndarray:
    """Bytes to (3, size, size) uint8 at training resolution: what the decoded-image cache holds."""
    img = decode_image(data).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def normalise_pixels(pixels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """uint8 pixels to float32 in [-1, 1], in numpy or torch alike (the encoder input)."""
    x = pixels.astype(np.float32) if isinstance(pixels, np.ndarray) else pixels.float()
    return (x / 255.0 - IMAGE_MEAN) / IMAGE_STD


def prepare_image(data: bytes, size: int) -> np.ndarray:
    return normalise_pixels(image_pixels(data, size))


def prepare_note(note: str | None) -> str | None:
    """An empty or blank note carries no signal: treat it as the missing modality."""
    if note is None:
        return None
    note = " ".join(note.split())
    return note or None


def note_ngrams(note: str | None, buckets: int) -> np.ndarray:
    """(buckets,) L2-normalised counts of hashed character 1- and 2-grams of a prepared note.

    Why: the English MiniLM reads a Chinese note as mostly [UNK]; characters read any
    script. crc32, not hash(), so the buckets are the same in every process."""
    out = np.zeros(buckets, np.float32)
    if not note or buckets <= 0:
        return out
    text = unicodedata.normalize("NFKC", note).lower()
    grams = Counter(text)                                # counted in C, each distinct gram hashed once:
    grams.update(map(operator.add, text, text[1:]))      # a 10,000-character note was 13 ms of Python a gram at a time
    for gram, count in grams.items():
        out[zlib.crc32(gram.encode("utf-8")) % buckets] += count
    return out / np.linalg.norm(out)


def sensor_features(t_s: np.ndarray, channels: np.ndarray, length: int) -> np.ndarray:
    """Resample a trace to a fixed length; shock and light are log-scaled (heavy tails).

    channels: (rows, 4) in SENSOR_CHANNELS order -> (4, length) float32.
    """
    t = np.asarray(t_s, dtype=np.float64)
    x = np.asarray(channels, dtype=np.float64)
    grid = np.linspace(t[0], t[-1], length) if len(t) > 1 else np.full(length, t[0])
    out = np.stack([np.interp(grid, t, x[:, i]) for i in range(x.shape[1])])
    # Interpolation would smooth away short shock spikes: keep each bin's max instead.
    shock = x[:, SENSOR_CHANNELS.index("shock_g")]
    starts = np.concatenate([[0], np.searchsorted(t, np.linspace(t[0], t[-1], length + 1)[1:-1])])
    empty = np.append(starts[1:], len(shock)) <= starts     # a bin with no sample keeps the interpolation
    out[2] = np.where(empty, out[2], np.maximum.reduceat(shock, np.minimum(starts, len(shock) - 1)))
    out[2] = np.log1p(np.clip(out[2], 0, None))
    out[3] = np.log1p(np.clip(out[3], 0, None))
    return out.astype(np.float32)


def normalise_sensor(feats: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-channel standardisation with statistics stored in the model artifact."""
    return ((feats - mean[:, None]) / std[:, None]).astype(np.float32)


def sensor_arrays(sensor: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A sensor dict to (t_s (rows,), channels (rows,4)); without t_s the rate is taken as fixed."""
    channels = np.stack([np.asarray(sensor[c], dtype=np.float64) for c in SENSOR_CHANNELS], axis=1)
    t = sensor.get("t_s")
    t_s = np.asarray(t, dtype=np.float64) if t is not None else np.arange(len(channels), dtype=np.float64)
    return t_s, channels


def sensor_block(records: list[dict[str, Any]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw features (N,4,L), presence (N,)) of the records' traces, before normalisation."""
    out = np.zeros((len(records), len(SENSOR_CHANNELS), length), np.float32)
    present = np.zeros(len(records), np.float32)
    for i, r in enumerate(records):
        if (s := r.get("sensor")) is not None:
            out[i] = sensor_features(*sensor_arrays(s), length)
            present[i] = 1
    return out, present


def sensor_input(records: list[dict[str, Any]], length: int, mean: np.ndarray,
                 std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normalised traces (N,4,L), zero where absent; presence (N,)): the model's sensor input."""
    return normalised_block(sensor_block(records, length), mean, std)


def normalised_block(block: tuple[np.ndarray, np.ndarray], mean: np.ndarray,
                     std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`sensor_block`'s (raw traces, presence) normalised, zero where absent: for a caller that resampled
    the traces already (training reuses them for the statistics)."""
    sens, present = block
    return normalise_sensor(sens, mean, std) * present[:, None, None], present


def ngram_block(records: list[dict[str, Any]], buckets: int) -> np.ndarray:
    """(N, buckets) character n-gram features of the records' notes; zeros where the note is missing."""
    if not records:
        return np.zeros((0, buckets), np.float32)
    return np.stack([note_ngrams(prepare_note(r.get("note")), buckets) for r in records])
