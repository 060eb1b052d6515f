"""The record contract of a landing batch (DESIGN §2) and the raw table built from it.

One schema for the whole project: the generator writes it, ingest enforces it,
training and serving read the raw table it defines.
"""
from __future__ import annotations

import re
from enum import Enum

from mmcore.config import CLASSES, SENSOR_CHANNELS

RECORD_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SENSOR_HEADER: tuple[str, ...] = ("t_s", *SENSOR_CHANNELS)
RECORD_FIELDS: tuple[str, ...] = ("record_id", "shipment_id", "captured_at", "hub",
                                  "image", "note", "sensor", "label")
LABELS: frozenset[str] = frozenset(CLASSES)


class Reason(str, Enum):
    """Why a record was quarantined. Codes are stable: reports and alerts key on them."""

    BAD_JSON = "bad_json"
    BAD_ENCODING = "bad_encoding"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_RECORD_ID = "bad_record_id"
    DUPLICATE_RECORD_ID = "duplicate_record_id"
    BAD_TIMESTAMP = "bad_timestamp"
    UNKNOWN_LABEL = "unknown_label"
    UNSAFE_PATH = "unsafe_path"
    MISSING_FILE = "missing_file"
    BAD_IMAGE = "bad_image"
    IMAGE_TOO_LARGE = "image_too_large"
    BAD_NOTE = "bad_note"
    BAD_SENSOR = "bad_sensor"
    NO_MODALITY = "no_modality"
    BATCH_REJECTED = "batch_rejected"


# Columns of data/raw/records.parquet: normalised fields plus the profile that
# validation checks. Images and sensor arrays live in shards, keyed by record_id.
PROFILE_COLUMNS: dict[str, str] = {
    "record_id": "string", "shipment_id": "string", "captured_at": "string",
    "hub": "string", "label": "string", "batch_id": "string", "shard": "string",
    "content_sha256": "string",
    "has_image": "bool", "image_width": "Int64", "image_height": "Int64",
    "image_sha256": "string", "image_brightness": "float64",
    "has_note": "bool", "note": "string", "note_length": "int64", "note_lang": "string",
    "note_unk_share": "float64",
    "has_sensor": "bool", "sensor_rows": "Int64", "sensor_nan_count": "Int64",
    "temperature_min": "float64", "temperature_max": "float64",
    "humidity_min": "float64", "humidity_max": "float64",
    "shock_max": "float64", "light_max": "float64",
    "sensor_stuck_channels": "string",
}
NOTE_LANGS: tuple[str, ...] = ("en", "zh", "empty", "other")
