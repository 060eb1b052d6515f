"""One landing batch, checked line by line: each line to an accepted record (its row, image and
trace) or a quarantine entry with its reason, and duplicates resolved in line order.

Both executors of ingest run this: the local process pool (mmcore/data/ingest.py) and the Dask
cluster (mmcore/data/ingest_dask.py) send the same `check_chunk` shards. It sits below both so
that neither imports the other for it.
"""
from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcore.config import IngestConfig
from mmcore.data.checks import (Rejected, check_fields, check_image, check_note, check_sensor, check_timestamp,
                                normalise_label, quarantine_entry, read_lines, safe_path, stuck_channels)
from mmcore.schema import Reason

CJK_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass
class Accepted:
    row: dict[str, Any]
    image: bytes | None
    sensor: Any  # (rows, 5) float32 array or None
    line_no: int = 0


@dataclass
class BatchResult:
    batch_id: str
    landed: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)


def note_language(note: str | None) -> str:
    if not note:
        return "empty"
    if CJK_RE.search(note):
        return "zh"
    return "en" if re.search(r"[A-Za-z]", note) else "other"


def check_record(batch_dir: Path, obj: Any, cfg: IngestConfig) -> Accepted:
    """All rules for one record; raises Rejected with the first rule it breaks."""
    rec = check_fields(obj)
    row: dict[str, Any] = {
        "record_id": rec["record_id"], "shipment_id": rec["shipment_id"].strip(),
        "captured_at": check_timestamp(rec["captured_at"]), "hub": rec["hub"].strip(),
        "prediction_id": rec.get("prediction_id"), "label": normalise_label(rec["label"]), "batch_id": batch_dir.name,
    }
    note = check_note(rec["note"], cfg)
    image = sensor = None
    if rec["image"] is not None:
        image = safe_path(batch_dir, rec["image"]).read_bytes()
        info = check_image(image, cfg)
    if rec["sensor"] is not None:
        sensor = check_sensor(safe_path(batch_dir, rec["sensor"]).read_bytes(), cfg)
    if image is None and not note and sensor is None:
        raise Rejected(Reason.NO_MODALITY, "record has no image, no note text and no sensor trace")
    row.update(image_profile(image, info if image is not None else None))
    row.update(note_profile(note))
    row.update(sensor_profile(sensor))
    digest = hashlib.sha256()
    for part in (row["image_sha256"] or "", note or "", sensor.tobytes() if sensor is not None else b""):
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\x1f")
    row["content_sha256"] = digest.hexdigest()
    return Accepted(row, image, sensor)


def image_profile(data: bytes | None, info: dict[str, Any] | None) -> dict[str, Any]:
    if data is None or info is None:
        return {"has_image": False, "image_width": None, "image_height": None,
                "image_sha256": None, "image_brightness": None}
    return {"has_image": True, "image_width": info["width"], "image_height": info["height"],
            "image_sha256": hashlib.sha256(data).hexdigest(), "image_brightness": info["brightness"]}


def note_profile(note: str | None) -> dict[str, Any]:
    return {"has_note": bool(note), "note": note, "note_length": len(note or ""),
            "note_lang": note_language(note)}


def sensor_profile(arr: Any) -> dict[str, Any]:
    if arr is None:
        keys = ("temperature_min", "temperature_max", "humidity_min", "humidity_max", "shock_max", "light_max",
                "sensor_stuck_channels")
        return {"has_sensor": False, "sensor_rows": None, "sensor_nan_count": None, **dict.fromkeys(keys)}
    return {"has_sensor": True, "sensor_rows": int(arr.shape[0]), "sensor_nan_count": 0,
            "temperature_min": float(arr[:, 1].min()), "temperature_max": float(arr[:, 1].max()),
            "humidity_min": float(arr[:, 2].min()), "humidity_max": float(arr[:, 2].max()),
            "shock_max": float(arr[:, 3].max()), "light_max": float(arr[:, 4].max()),
            "sensor_stuck_channels": ",".join(stuck_channels(arr))}


def check_line(batch_dir: Path, line_no: int, raw_line: bytes, cfg: IngestConfig) -> Accepted | dict[str, Any]:
    """One landing line to an accepted record or a quarantine entry; never raises for bad data."""
    line = raw_line.decode("utf-8", errors="replace")
    obj: Any = None
    try:
        raw_line.decode("utf-8")
        obj = json.loads(line)
        acc = check_record(batch_dir, obj, cfg)
        acc.line_no = line_no
        return acc
    except UnicodeDecodeError as exc:
        return quarantine_entry(batch_dir.name, line_no, None, Reason.BAD_ENCODING, f"line is not UTF-8: {exc}", line)
    except json.JSONDecodeError as exc:
        return quarantine_entry(batch_dir.name, line_no, None, Reason.BAD_JSON, str(exc), line)
    except Rejected as rej:
        rid = obj.get("record_id") if isinstance(obj, dict) else None
        return quarantine_entry(batch_dir.name, line_no, rid, rej.reason, rej.detail, line)


def check_chunk(batch_dir: Path, start: int, lines: list[bytes], cfg: IngestConfig) -> list[Accepted | dict[str, Any]]:
    """A shard of lines, the unit of work sent to a pool worker (never one task per record)."""
    return [check_line(batch_dir, start + i, ln, cfg) for i, ln in enumerate(lines)]


def check_batch(batch_dir: Path, cfg: IngestConfig, pool: Executor | None,
                chunk: int = 128) -> list[Accepted | dict[str, Any]]:
    records_file = batch_dir / "records.jsonl"
    lines = read_lines(records_file) if records_file.is_file() else []
    starts = range(0, len(lines), chunk)
    args = [(batch_dir, s + 1, lines[s:s + chunk], cfg) for s in starts]
    if pool is None or len(args) < 2:
        parts = [check_chunk(*a) for a in args]
    else:
        parts = list(pool.map(check_chunk, *zip(*args)))
    return [item for part in parts for item in part]


def duplicate(row: dict[str, Any], seen: set[str]) -> tuple[Reason, str] | None:
    """A record_id or prediction_id seen before. Prediction ids share `seen` under a
    `prediction_id:` prefix, which no record_id can carry (":" breaks the id rule)."""
    if row["record_id"] in seen:
        return Reason.DUPLICATE_RECORD_ID, f"record_id {row['record_id']!r} seen before"
    pid = row.get("prediction_id")
    if pid is not None and f"prediction_id:{pid}" in seen:
        return Reason.DUPLICATE_PREDICTION_ID, f"prediction_id {pid!r} seen before"
    return None


def ingest_batch(batch_dir: Path, cfg: IngestConfig, seen: set[str], pool: Executor | None = None) -> BatchResult:
    """Check every line of one batch (in parallel shards); duplicates are resolved in line order,
    with `seen` carrying record_ids and prediction_ids across batches."""
    result = BatchResult(batch_dir.name)
    for item in check_batch(batch_dir, cfg, pool):
        result.landed += 1
        if isinstance(item, dict):
            result.quarantined.append(item)
        elif dup := duplicate(item.row, seen):
            result.quarantined.append(quarantine_entry(batch_dir.name, item.line_no, item.row["record_id"], *dup, ""))
        else:
            seen.add(item.row["record_id"])
            if item.row.get("prediction_id") is not None:
                seen.add(f"prediction_id:{item.row['prediction_id']}")
            result.accepted.append(item)
    return result


def reject_batch(result: BatchResult, share: float, limit: float) -> None:
    """Too many bad records means the feed is broken: hold back its good records too."""
    detail = f"batch bad share {share:.2f} exceeds ingest.max_bad_share {limit:.2f}"
    for acc in result.accepted:
        result.quarantined.append(quarantine_entry(result.batch_id, -1, acc.row["record_id"],
                                                   Reason.BATCH_REJECTED, detail, ""))
    result.accepted = []
