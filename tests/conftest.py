"""Shared fixtures: tiny landing batches written by hand, in the DESIGN §2 format."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mmcore.config import IngestConfig, load_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def jpeg_bytes(size: int = 64, color: tuple[int, int, int] = (180, 140, 90), fmt: str = "JPEG") -> bytes:
    img = Image.new("RGB", (size, size), color)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def photo(fmt: str, width: int, height: int, color: tuple[int, int, int] = (180, 140, 90)) -> bytes:
    """A plain photo of any size in any format Pillow writes (MPO: a JPEG with a second frame)."""
    img = Image.new("RGB", (width, height), color)
    buf = io.BytesIO()
    extra = {"save_all": True, "append_images": [img.copy()]} if fmt == "MPO" else {}
    img.save(buf, format=fmt, **extra)
    return buf.getvalue()


# Photos outside the landing contract (DESIGN §2: JPEG or PNG, at least ingest.image_min_side = 32 px a
# side): the reason ingest quarantines each with, and the detail it writes, which the service's 400 quotes.
BAD_PHOTOS: dict[str, tuple[bytes, str, str]] = {
    "gif_1x1": (photo("GIF", 1, 1), "image_format", "image format GIF: JPEG or PNG only"),
    "webp": (photo("WEBP", 64, 64), "image_format", "image format WEBP: JPEG or PNG only"),
    "bmp": (photo("BMP", 64, 64), "image_format", "image format BMP: JPEG or PNG only"),
    "png_31x40": (photo("PNG", 31, 40), "image_too_small", "image 31x40 px: at least 32 px a side"),
    "jpeg_40x31": (photo("JPEG", 40, 31), "image_too_small", "image 40x31 px: at least 32 px a side"),
}


def sensor_csv(rows: int = 60, nan: bool = False, header: str = "t_s,temperature_c,humidity_pct,shock_g,light_lux",
               shuffle_time: bool = False, frozen_temperature: bool = False) -> str:
    t = np.arange(rows) * 60.0
    if shuffle_time:
        t[[3, 4]] = t[[4, 3]]
    lines = [header]
    for i in range(rows):
        temp = "nan" if nan and i == 5 else "4.000" if frozen_temperature else f"{4 + 0.1 * np.sin(i):.3f}"
        lines.append(f"{t[i]:.1f},{temp},{55 + 0.5 * np.cos(i):.2f},{0.2 + 0.01 * (i % 3):.2f},0.0")
    return "\n".join(lines) + "\n"


def record(rid: str, **over: Any) -> dict[str, Any]:
    rec = {"record_id": rid, "shipment_id": f"S{rid}", "captured_at": "2026-11-20T03:10:00+08:00",
           "hub": "SHA01", "image": f"images/{rid}.jpg", "note": "corner crushed",
           "sensor": f"sensors/{rid}.csv", "label": "damaged"}
    rec.update(over)
    return rec


def write_batch(root: Path, batch_id: str, records: list[dict[str, Any]], files: dict[str, bytes | str],
                extra_lines: list[str] = (), success: bool = True) -> Path:
    bdir = root / batch_id
    (bdir / "images").mkdir(parents=True, exist_ok=True)
    (bdir / "sensors").mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = bdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    (bdir / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if success:
        (bdir / "_SUCCESS").write_text("")
    return bdir


def good_files(rid: str) -> dict[str, bytes | str]:
    return {f"images/{rid}.jpg": jpeg_bytes(), f"sensors/{rid}.csv": sensor_csv()}


@pytest.fixture
def ingest_cfg() -> IngestConfig:
    return load_params(ROOT / "params.yaml").ingest
