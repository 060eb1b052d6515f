"""The record contract of a landing batch (DESIGN §2) and the raw table built from it.

One schema for the whole project: the generator writes it, ingest enforces it,
training and serving read the raw table it defines.
"""
from __future__ import annotations

import re
from enum import Enum

from mmcore.config import CLASSES, SENSOR_CHANNELS

RECORD_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")   # \Z, not $: "$" also matches before a final newline
SENSOR_HEADER: tuple[str, ...] = ("t_s", *SENSOR_CHANNELS)
RECORD_FIELDS: tuple[str, ...] = ("record_id", "shipment_id", "captured_at", "hub",
                                  "image", "note", "sensor", "label")
# Optional per record: absent and null mean the same. Served traffic carries the prediction_id the
# service returned, so a late label can name the prediction (DESIGN §2b); old batches stay valid.
OPTIONAL_RECORD_FIELDS: tuple[str, ...] = ("prediction_id",)
LABELS: frozenset[str] = frozenset(CLASSES)
# Photos are JPEG or PNG (DESIGN §2), told by content, not by file name: Pillow's names for them. MPO
# is a JPEG with extra frames (phones' multi-picture files), which every JPEG decoder reads as its first.
IMAGE_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG"})

# The label feed (DESIGN §2b): labels/<batch>/labels.jsonl, one object per line with exactly one
# of record_id / prediction_id, and these fields. `landing` is the label_source of a label that
# came with its landing record (labelled at its captured_at); feeds may not claim it.
LABEL_FIELDS: tuple[str, ...] = ("label", "labelled_at")
# Optional `labeller`: who gave the label (the review app writes the reviewer's name); absent or null = unknown.
# Letters, digits and `_ . @ + -`, inner spaces allowed, 1..64 characters: a name or an e-mail, never markup.
LABELLER_RE = re.compile(r"^[\w.@+-](?:[\w .@+-]{0,62}[\w.@+-])?\Z")
# `source`: who chose the record to label. A line without one (older senders) is `unknown`: the contract
# names no default, and a label whose choice is unknown is treated as the model's choice (review).
UNKNOWN_SOURCE = "unknown"
LABEL_SOURCES: tuple[str, ...] = ("inspection", "claim", "review", UNKNOWN_SOURCE)
LANDING_SOURCE = "landing"
# Labels not chosen by the model: the only ones the gate set and calib sample (mmcore/data/split.py). The
# review app asks about answers the champion was unsure of; those label its hard cases, not served traffic.
GATE_SOURCES: tuple[str, ...] = (LANDING_SOURCE, "inspection", "claim")


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
    IMAGE_FORMAT = "image_format"          # decodes, but not as JPEG or PNG (GIF, WEBP, BMP, ...)
    IMAGE_TOO_SMALL = "image_too_small"    # a side below ingest.image_min_side px
    BAD_NOTE = "bad_note"
    BAD_SENSOR = "bad_sensor"
    NO_MODALITY = "no_modality"
    BATCH_REJECTED = "batch_rejected"
    BAD_PREDICTION_ID = "bad_prediction_id"
    DUPLICATE_PREDICTION_ID = "duplicate_prediction_id"
    # poison lines and files (records and labels): refused before they are parsed or read
    LINE_TOO_LONG = "line_too_long"        # over ingest.max_line_bytes: never parsed, kept cut in the quarantine
    TOO_DEEP = "too_deep"                  # brackets nested deeper than ingest.max_json_depth: never parsed
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"  # no UTC time, or outside earliest..now + future skew
    SENSOR_TOO_LARGE = "sensor_too_large"  # a sensor file over ingest.max_sensor_bytes (refused on its stat)
    UNREADABLE_FILE = "unreadable_file"    # records.jsonl / labels.jsonl itself cannot be read (one entry, line 0)
    INTERNAL_ERROR = "internal_error"      # a check raised what no rule foresaw: the line is kept, the batch goes on
    # label feed only
    AMBIGUOUS_ID = "ambiguous_id"          # a label line names both a record_id and a prediction_id
    UNKNOWN_ID = "unknown_id"              # the id is in no accepted record (yet: it joins once it lands)
    BAD_SOURCE = "bad_source"
    BAD_LABELLER = "bad_labeller"          # labeller not a string of 1..64 name characters (LABELLER_RE)
    CONFLICTING_LABEL = "conflicting_label"  # different labels for one record in one label batch: none applied


# Columns of data/raw/records.parquet: normalised fields plus the profile that
# validation checks. Images and sensor arrays live in shards, keyed by record_id.
PROFILE_COLUMNS: dict[str, str] = {
    "record_id": "string", "shipment_id": "string", "captured_at": "string",
    "hub": "string", "prediction_id": "string",
    # label: the winning one (landing or label feed); label_source: landing, inspection, claim or review;
    # labelled_at: UTC ISO 8601 (a landing label's is its record's captured_at); labeller: who gave it (feed's
    # optional field, null for landing labels and when the feed did not say); all null when unlabelled
    # label_batch: the batch that delivered the winning label (a label batch, or the record's own landing batch)
    "label": "string", "label_source": "string", "labelled_at": "string", "labeller": "string", "label_batch": "string",
    "batch_id": "string", "shard": "string",
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

# Columns of data/raw/label_audit.parquet: every label that lost to a later one (mmcore/monitor/labels.py),
# with the label that beat it. `line` is null for a landing label (it came with its record).
AUDIT_COLUMNS: dict[str, str] = {
    "record_id": "string", "prediction_id": "string", "label": "string", "labelled_at": "string",
    "source": "string", "labeller": "string", "batch_id": "string", "line": "Int64",
    "superseded_by_label": "string", "superseded_by_labelled_at": "string",
    "superseded_by_source": "string", "superseded_by_batch": "string",
}
