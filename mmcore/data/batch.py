"""One landing batch, checked line by line: each line to an accepted record (its row, image and
trace) or a quarantine entry with its reason, and duplicates resolved in line order.

Both executors of ingest run this: the local process pool (mmcore/data/ingest.py) and the Dask
cluster (mmcore/data/ingest_dask.py) send the same `check_chunk` shards. It sits below both so
that neither imports the other for it.
"""
from __future__ import annotations

import hashlib
import re
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcore.config import IngestConfig
from mmcore.data.checks import (LineRules, Rejected, batch_lines, check_fields, check_image, check_note,
                                check_sensor, check_timestamp, normalise_label, parse_line, quarantine_entry,
                                read_file, safe_path, stuck_channels)
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
    bad_share: float = 0.0
    rejected: bool = False      # held back whole (ingest.max_bad_share): its ids were not reserved


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
        "captured_at": check_timestamp(rec["captured_at"], "captured_at", LineRules.of(cfg)),
        "hub": rec["hub"].strip(), "prediction_id": rec.get("prediction_id"), "label": normalise_label(rec["label"]),
        "batch_id": batch_dir.name,
    }
    note = check_note(rec["note"], cfg)
    image = sensor = None
    if rec["image"] is not None:
        image = read_file(safe_path(batch_dir, rec["image"]), rec["image"], cfg.max_image_bytes,
                          Reason.IMAGE_TOO_LARGE, "image")
        info = check_image(image, cfg)
    if rec["sensor"] is not None:
        sensor = check_sensor(read_file(safe_path(batch_dir, rec["sensor"]), rec["sensor"], cfg.max_sensor_bytes,
                                        Reason.SENSOR_TOO_LARGE, "sensor file"), cfg)
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
    """One landing line to an accepted record or a quarantine entry; never raises for bad data,
    and not for a bug either: whatever a check raises is this line's `internal_error`, not the batch's."""
    line = raw_line.decode("utf-8", errors="replace")
    obj: Any = None
    try:
        obj = parse_line(raw_line, LineRules.of(cfg))
        acc = check_record(batch_dir, obj, cfg)
        acc.line_no = line_no
        return acc
    except Rejected as rej:
        rid = obj.get("record_id") if isinstance(obj, dict) else None
        return quarantine_entry(batch_dir.name, line_no, rid, rej.reason, rej.detail, line)
    except Exception as exc:  # noqa: BLE001 - the last resort that keeps one line from stopping every run
        rid = obj.get("record_id") if isinstance(obj, dict) else None
        return quarantine_entry(batch_dir.name, line_no, rid, Reason.INTERNAL_ERROR,
                                f"{type(exc).__name__}: {str(exc)[:300]}", line)


def check_chunk(batch_dir: Path, start: int, lines: list[bytes], cfg: IngestConfig) -> list[Accepted | dict[str, Any]]:
    """A shard of lines, the unit of work sent to a pool worker (never one task per record)."""
    return [check_line(batch_dir, start + i, ln, cfg) for i, ln in enumerate(lines)]


def check_batch(batch_dir: Path, cfg: IngestConfig, pool: Executor | None,
                chunk: int = 128) -> list[Accepted | dict[str, Any]]:
    lines, unreadable = batch_lines(batch_dir / "records.jsonl", batch_dir.name, cfg.max_line_bytes)
    starts = range(0, len(lines), chunk)
    args = [(batch_dir, s + 1, lines[s:s + chunk], cfg) for s in starts]
    if pool is None or len(args) < 2:
        parts = [check_chunk(*a) for a in args]
    else:
        parts = list(pool.map(check_chunk, *zip(*args)))
    return [*unreadable, *(item for part in parts for item in part)]


def reserved(row: dict[str, Any]) -> set[str]:
    """The ids an accepted row takes: its record_id and, under a `prediction_id:` prefix (which no
    record_id can carry: ":" breaks the id rule), its prediction_id."""
    pid = row.get("prediction_id")
    return {row["record_id"]} | ({f"prediction_id:{pid}"} if pid is not None else set())


def duplicate(row: dict[str, Any], *taken: set[str]) -> tuple[Reason, str] | None:
    """A record_id or prediction_id seen before, in an earlier batch or earlier in this one."""
    if any(row["record_id"] in t for t in taken):
        return Reason.DUPLICATE_RECORD_ID, f"record_id {row['record_id']!r} seen before"
    pid = row.get("prediction_id")
    if pid is not None and any(f"prediction_id:{pid}" in t for t in taken):
        return Reason.DUPLICATE_PREDICTION_ID, f"prediction_id {pid!r} seen before"
    return None


def ingest_batch(batch_dir: Path, cfg: IngestConfig, seen: set[str], pool: Executor | None = None) -> BatchResult:
    """Check every line of one batch (in parallel shards); duplicates are resolved in line order,
    with `seen` carrying record_ids and prediction_ids across batches. Ids are reserved in `seen`
    only once the batch's fate is known: a batch held back whole (`ingest.max_bad_share`)
    reserves nothing, so its corrected redelivery lands instead of being quarantined as duplicates."""
    result = BatchResult(batch_dir.name)
    mine: set[str] = set()
    for item in check_batch(batch_dir, cfg, pool):
        result.landed += 1
        if isinstance(item, dict):
            result.quarantined.append(item)
        elif dup := duplicate(item.row, seen, mine):
            result.quarantined.append(quarantine_entry(batch_dir.name, item.line_no, item.row["record_id"], *dup, ""))
        else:
            mine |= reserved(item.row)
            result.accepted.append(item)
    result.bad_share = len(result.quarantined) / result.landed if result.landed else 0.0
    if result.bad_share > cfg.max_bad_share:
        reject_batch(result, result.bad_share, cfg.max_bad_share)
    else:
        seen |= mine
    return result


def reject_batch(result: BatchResult, share: float, limit: float) -> None:
    """Too many bad records means the feed is broken: hold back its good records too."""
    detail = f"batch bad share {share:.2f} exceeds ingest.max_bad_share {limit:.2f}"
    for acc in result.accepted:
        result.quarantined.append(quarantine_entry(result.batch_id, -1, acc.row["record_id"],
                                                   Reason.BATCH_REJECTED, detail, ""))
    result.accepted = []
    result.rejected = True
