"""Record rules of the landing contract (DESIGN §2).

Each check either returns the normalised value or raises `Rejected` with a
stable reason code, so ingest can quarantine a record with its reason instead
of crashing or silently dropping it.
"""
from __future__ import annotations

import functools
import io
import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, ImageStat

from mmcore.config import IngestConfig
from mmcore.schema import IMAGE_FORMATS, LABELS, RECORD_FIELDS, RECORD_ID_RE, SENSOR_HEADER, Reason


class Rejected(Exception):
    """A record broke a rule; carries the reason code and a human-readable detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def read_lines(path: Path) -> list[bytes]:
    """A .jsonl file (records or labels) as raw lines; a BOM and CRLF line ends are tolerated,
    blank lines skipped."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    return [ln.rstrip(b"\r") for ln in data.split(b"\n") if ln.strip()]


def quarantine_entry(batch_id: str, line_no: int, record_id: Any, reason: Reason, detail: str,
                     raw: str) -> dict[str, Any]:
    """One quarantined line, the same shape for records and labels: where it was, why, and its text."""
    return {"batch_id": batch_id, "line": line_no,
            "record_id": record_id if isinstance(record_id, str) else None,
            "reason": reason.value, "detail": detail, "raw": raw[:2000]}


def check_id(value: Any, name: str, reason: Reason) -> str:
    """record_id and prediction_id share one rule: ids end up in file names, URLs and joins."""
    if not isinstance(value, str):
        raise Rejected(Reason.BAD_TYPE, f"{name} must be a string")
    if not RECORD_ID_RE.match(value):
        raise Rejected(reason, f"{name} {value[:80]!r} breaks [A-Za-z0-9_-]{{1,64}}")
    return value


def check_fields(obj: Any) -> dict[str, Any]:
    """Required fields present and typed; optional ones (prediction_id) checked when present."""
    if not isinstance(obj, dict):
        raise Rejected(Reason.BAD_TYPE, f"a record must be a JSON object, got {type(obj).__name__}")
    missing = [f for f in RECORD_FIELDS if f not in obj]
    if missing:
        raise Rejected(Reason.MISSING_FIELD, f"missing field(s) {missing}")
    for name in ("record_id", "shipment_id", "captured_at", "hub"):
        if not isinstance(obj[name], str) or not obj[name].strip():
            raise Rejected(Reason.BAD_TYPE, f"{name} must be a non-empty string")
    for name in ("image", "note", "sensor", "label"):
        if obj[name] is not None and not isinstance(obj[name], str):
            raise Rejected(Reason.BAD_TYPE, f"{name} must be a string or null")
    check_id(obj["record_id"], "record_id", Reason.BAD_RECORD_ID)
    if obj.get("prediction_id") is not None:   # optional (OPTIONAL_RECORD_FIELDS): absent = null
        check_id(obj["prediction_id"], "prediction_id", Reason.BAD_PREDICTION_ID)
    return obj


def check_timestamp(value: str, name: str = "captured_at") -> str:
    """ISO 8601 with a timezone, normalised to UTC so ordering is comparable across hubs."""
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise Rejected(Reason.BAD_TIMESTAMP, f"{name} {value[:40]!r} is not ISO 8601") from exc
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise Rejected(Reason.BAD_TIMESTAMP, f"{name} {value[:40]!r} has no timezone")
    return ts.astimezone(timezone.utc).isoformat()


def normalise_label(value: str | None) -> str | None:
    """`Damaged` and ` damaged ` mean `damaged`; anything else outside the classes is refused."""
    if value is None:
        return None
    label = value.strip().lower()
    if label not in LABELS:
        raise Rejected(Reason.UNKNOWN_LABEL, f"label {value[:40]!r} is not one of {sorted(LABELS)}")
    return label


def check_note(value: str | None, cfg: IngestConfig) -> str | None:
    if value is None:
        return None
    if "\x00" in value:
        raise Rejected(Reason.BAD_NOTE, "note contains NUL bytes")
    if len(value) > cfg.max_note_chars:
        raise Rejected(Reason.BAD_NOTE, f"note has {len(value)} chars, limit {cfg.max_note_chars}")
    return value.replace("\r\n", "\n").strip()


@functools.lru_cache(maxsize=64)
def _resolved(batch_dir: str) -> Path:
    return Path(batch_dir).resolve()


def safe_path(batch_dir: Path, rel: str) -> Path:
    """Resolve a record's file inside its batch; anything leaving the batch is a rule violation."""
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ":" in rel[:3]:
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r} must be relative to the batch folder")
    if ".." in Path(rel).parts:
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r} leaves the batch folder")
    root = _resolved(str(batch_dir))
    path = (batch_dir / rel).resolve()
    if root not in path.parents:
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r} resolves outside the batch folder")
    if not path.is_file():
        raise Rejected(Reason.MISSING_FILE, f"file {rel[:80]!r} does not exist")
    return path


def open_image(data: bytes, cfg: IngestConfig) -> Image.Image:
    """The photo rules that the header answers, nothing decoded: JPEG or PNG by content, not by file
    name; within the byte and pixel limits; at least `cfg.image_min_side` px a side. The service runs
    these while it parses a request (mmcore/serving/limits.py), where a full decode would be costly."""
    if not data:
        raise Rejected(Reason.BAD_IMAGE, "image file is empty")
    if len(data) > cfg.max_image_bytes:
        raise Rejected(Reason.IMAGE_TOO_LARGE, f"image has {len(data)} bytes, limit {cfg.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise Rejected(Reason.IMAGE_TOO_LARGE, f"decompression bomb refused: {exc}") from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise Rejected(Reason.BAD_IMAGE, f"image does not decode: {type(exc).__name__}: {exc}") from exc
    if img.format not in IMAGE_FORMATS:
        raise Rejected(Reason.IMAGE_FORMAT, f"image format {img.format or 'unknown'}: JPEG or PNG only")
    if img.width * img.height > cfg.max_image_pixels:
        raise Rejected(Reason.IMAGE_TOO_LARGE, f"image is {img.width}x{img.height}, limit {cfg.max_image_pixels} pixels")
    if min(img.width, img.height) < cfg.image_min_side:
        raise Rejected(Reason.IMAGE_TOO_SMALL,
                       f"image {img.width}x{img.height} px: at least {cfg.image_min_side} px a side")
    return img


def check_image(data: bytes, cfg: IngestConfig) -> dict[str, Any]:
    """The photo rules, for ingest and the service alike: the header's (`open_image`), then a full
    decode, so truncated files are caught here, not in training."""
    img = open_image(data, cfg)
    try:
        img.load()
    except Exception as exc:  # PIL raises many types for corrupt data
        raise Rejected(Reason.BAD_IMAGE, f"image does not decode: {type(exc).__name__}: {exc}") from exc
    upright = ImageOps.exif_transpose(img)
    grey = upright.convert("L")
    return {"width": upright.width, "height": upright.height, "brightness": float(ImageStat.Stat(grey).mean[0])}


# Channels that always move on a live tracker; light stays at 0 in a closed box, so it is not here.
LIVE_CHANNELS: tuple[str, ...] = ("temperature_c", "humidity_pct", "shock_g")


def stuck_channels(arr: np.ndarray) -> list[str]:
    """Channels frozen at one value for the whole trace: a dead sensor, flagged but kept
    (the other channels still carry signal), and counted by validation."""
    cols = [SENSOR_HEADER.index(c) for c in LIVE_CHANNELS]
    return [SENSOR_HEADER[i] for i in cols if float(arr[:, i].max()) == float(arr[:, i].min())]


def check_sensor(data: bytes, cfg: IngestConfig) -> np.ndarray:
    """Parse a sensor CSV into a (rows, 5) float32 array: header, count, finiteness and time order."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Rejected(Reason.BAD_SENSOR, "sensor file is not UTF-8") from exc
    first, _, body = text.lstrip("\r\n").partition("\n")
    header = tuple(h.strip() for h in first.split(","))
    if header != SENSOR_HEADER:
        raise Rejected(Reason.BAD_SENSOR, f"sensor header {','.join(header)[:80]!r}, expected {','.join(SENSOR_HEADER)}")
    try:  # numpy's C parser: the hot loop of ingest; it also refuses rows with a wrong column count
        arr = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise Rejected(Reason.BAD_SENSOR, f"sensor rows do not parse as {len(SENSOR_HEADER)} numbers: {exc}") from exc
    rows = arr.shape[0]
    if not cfg.min_sensor_rows <= rows <= cfg.max_sensor_rows:
        raise Rejected(Reason.BAD_SENSOR, f"sensor has {rows} rows, allowed {cfg.min_sensor_rows}..{cfg.max_sensor_rows}")
    if not np.isfinite(arr).all():
        raise Rejected(Reason.BAD_SENSOR, "sensor has NaN or infinite values")
    dt = np.diff(arr[:, 0])
    if (dt <= 0).any():
        raise Rejected(Reason.BAD_SENSOR, "sensor t_s is not strictly increasing")
    if not math.isclose(float(dt.max()), float(dt.min()), rel_tol=0.05, abs_tol=1e-6):
        raise Rejected(Reason.BAD_SENSOR, f"sensor rate is not fixed (steps {dt.min():g}..{dt.max():g} s)")
    return arr.astype(np.float32)
