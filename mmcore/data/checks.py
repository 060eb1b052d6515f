"""Record rules of the landing contract (DESIGN §2).

Each check either returns the normalised value or raises `Rejected` with a
stable reason code, so ingest can quarantine a record with its reason instead
of crashing or silently dropping it. What a line may hold is bounded before it is
parsed (`LineRules`: bytes, bracket depth), every timestamp must convert to UTC and
lie in a sane window, and every file is checked by `stat` before a byte of it is read.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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


@dataclass(frozen=True)
class LineRules:
    """What one .jsonl line may hold and when its timestamps may lie: the settings of params `ingest`
    that records and labels share (the review app, without params, uses `DEFAULT_RULES`)."""

    max_line_bytes: int
    max_json_depth: int
    earliest: datetime
    max_future: timedelta

    @classmethod
    def of(cls, cfg: IngestConfig) -> LineRules:
        return _rules(cfg.max_line_bytes, cfg.max_json_depth, cfg.earliest_timestamp, cfg.max_future_skew_hours)


@functools.lru_cache(maxsize=16)
def _rules(max_line_bytes: int, max_json_depth: int, earliest: str, future_hours: float) -> LineRules:
    start = datetime.fromisoformat(earliest.replace("Z", "+00:00")).astimezone(timezone.utc)
    return LineRules(max_line_bytes, max_json_depth, start, timedelta(hours=future_hours))


def _default(name: str) -> Any:
    return IngestConfig.__dataclass_fields__[name].default


# IngestConfig's defaults, the one place they are written
DEFAULT_RULES = _rules(_default("max_line_bytes"), _default("max_json_depth"), _default("earliest_timestamp"),
                       _default("max_future_skew_hours"))
_SKIP_CHUNK = 1 << 20


def read_lines(path: Path, max_bytes: int = DEFAULT_RULES.max_line_bytes) -> list[bytes]:
    """A .jsonl file (records or labels) as raw lines; a BOM and CRLF line ends are tolerated,
    blank lines skipped. Read line by line, never whole: a line over `max_bytes` is kept as its
    first `max_bytes + 1` bytes (enough for the check to see it is too long) and the rest is
    skipped unread into memory, so one gigabyte line costs a megabyte."""
    out = []
    with path.open("rb") as f:
        first = True
        while raw := f.readline(max_bytes + 2):
            if not raw.endswith(b"\n") and len(raw) > max_bytes + 1:
                while (rest := f.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                    pass
                raw = raw[:max_bytes + 1]
            if first:
                raw, first = raw.removeprefix(b"\xef\xbb\xbf"), False
            line = raw.rstrip(b"\n").rstrip(b"\r")
            if line.strip():
                out.append(line)
    return out


_JSON_TOKENS = re.compile(rb'\\.|[\[\]{}"]', re.S)


def check_size_and_depth(raw: bytes, rules: LineRules) -> None:
    """Bound a line before json parses it: its length, and how deep its brackets nest (json's
    parser recurses per level: 100,000 `[` raise RecursionError). Counting brackets is C-speed;
    only a line with more brackets than the limit is walked, stopping at the first level too deep."""
    if len(raw) > rules.max_line_bytes:
        raise Rejected(Reason.LINE_TOO_LONG, f"line has more than {rules.max_line_bytes} bytes "
                                             "(ingest.max_line_bytes): not parsed")
    if raw.count(b"[") + raw.count(b"{") <= rules.max_json_depth:
        return
    depth, in_string = 0, False
    for m in _JSON_TOKENS.finditer(raw):
        tok = m.group()
        if tok == b'"':
            in_string = not in_string
        elif in_string or len(tok) > 1:
            continue
        elif tok in b"[{":
            depth += 1
            if depth > rules.max_json_depth:
                raise Rejected(Reason.TOO_DEEP, f"line nests brackets deeper than {rules.max_json_depth} "
                                                "(ingest.max_json_depth): not parsed")
        else:
            depth -= 1


def quarantine_entry(batch_id: str, line_no: int, record_id: Any, reason: Reason, detail: str,
                     raw: str) -> dict[str, Any]:
    """One quarantined line, the same shape for records and labels: where it was, why, and its text."""
    return {"batch_id": batch_id, "line": line_no,
            "record_id": record_id if isinstance(record_id, str) else None,
            "reason": reason.value, "detail": detail, "raw": raw[:2000]}


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_line(raw_line: bytes, rules: LineRules) -> Any:
    """A .jsonl line (record or label) to its JSON value, each way it can fail a reason: too long or
    too deep (not parsed at all), not UTF-8, not JSON (an integer of 5,000 digits is a ValueError
    too, a depth json still cannot take a RecursionError), or a string holding half a UTF-16
    surrogate pair (`"\\ud800"` is valid JSON but no text: Parquet cannot write it)."""
    check_size_and_depth(raw_line, rules)
    try:
        obj = json.loads(raw_line.decode("utf-8"))
        if _SURROGATE_ESCAPE.search(raw_line):
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return obj
    except UnicodeEncodeError as exc:
        raise Rejected(Reason.BAD_ENCODING, "line has a lone UTF-16 surrogate escape (\\ud800-\\udfff): "
                                            "not Unicode text") from exc
    except UnicodeDecodeError as exc:
        raise Rejected(Reason.BAD_ENCODING, f"line is not UTF-8: {exc}") from exc
    except RecursionError as exc:
        raise Rejected(Reason.TOO_DEEP, "line nests too deep for the JSON parser") from exc
    except ValueError as exc:   # JSONDecodeError is one
        raise Rejected(Reason.BAD_JSON, str(exc)[:300]) from exc


def batch_lines(path: Path, batch_id: str, max_bytes: int) -> tuple[list[bytes], list[dict[str, Any]]]:
    """The lines of a batch's .jsonl (none when it is absent); a file that cannot be read at all is
    one quarantine entry (line 0) instead, so it is counted and the other batches go on."""
    try:
        return (read_lines(path, max_bytes) if path.is_file() else []), []
    except OSError as exc:
        return [], [quarantine_entry(batch_id, 0, None, Reason.UNREADABLE_FILE,
                                     f"{path.name} cannot be read: {exc.strerror or exc}", "")]


def check_id(value: Any, name: str, reason: Reason) -> str:
    """record_id and prediction_id share one rule: ids end up in file names, URLs and joins."""
    if not isinstance(value, str):
        raise Rejected(Reason.BAD_TYPE, f"{name} must be a string")
    if not RECORD_ID_RE.fullmatch(value):
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


def check_timestamp(value: str, name: str = "captured_at", rules: LineRules = DEFAULT_RULES,
                    now: datetime | None = None) -> str:
    """ISO 8601 with a timezone, normalised to UTC so ordering is comparable across hubs, and inside
    the sane window: not before `ingest.earliest_timestamp`, not more than
    `ingest.max_future_skew_hours` after now. A date at the calendar's edge (year 1 at +01:00, year
    9999 at -05:00) does not exist in UTC; a label dated 9999 would win over every correction."""
    shown = f"{name} {value[:40]!r}"
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise Rejected(Reason.BAD_TIMESTAMP, f"{shown} is not ISO 8601") from exc
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise Rejected(Reason.BAD_TIMESTAMP, f"{shown} has no timezone")
    try:
        utc = ts.astimezone(timezone.utc)
    except OverflowError as exc:
        raise Rejected(Reason.TIMESTAMP_OUT_OF_RANGE, f"{shown} has no UTC time (outside year 1..9999)") from exc
    if utc < rules.earliest:
        raise Rejected(Reason.TIMESTAMP_OUT_OF_RANGE,
                       f"{shown} is before {rules.earliest.isoformat()} (ingest.earliest_timestamp)")
    latest = (now or datetime.now(timezone.utc)) + rules.max_future
    if utc > latest:
        raise Rejected(Reason.TIMESTAMP_OUT_OF_RANGE, f"{shown} is after {latest.isoformat(timespec='seconds')}, "
                       f"more than {rules.max_future.total_seconds() / 3600:g} h ahead (ingest.max_future_skew_hours)")
    return utc.isoformat()


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


# the file system's own limits (Linux NAME_MAX, a generous PATH_MAX share): longer is refused, not tried
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024


def safe_path(batch_dir: Path, rel: str) -> Path:
    """Resolve a record's file inside its batch; anything leaving the batch is a rule violation.
    A name the OS cannot take (NUL or control characters, a lone surrogate, a part over 255 bytes)
    is refused before the OS is asked, and any error the OS still raises is a reason, not a crash."""
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ":" in rel[:3]:
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r} must be relative to the batch folder")
    if any(ord(c) < 32 or c == "\x7f" for c in rel):
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r} contains NUL or control characters")
    try:
        encoded = rel.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r} is not valid Unicode") from exc
    if len(encoded) > MAX_PATH_BYTES or any(len(p.encode()) > MAX_NAME_BYTES for p in rel.split("/")):
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r}... is longer than the file system allows "
                                           f"({MAX_NAME_BYTES} bytes a name, {MAX_PATH_BYTES} in all)")
    if ".." in Path(rel).parts:
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r} leaves the batch folder")
    try:
        root = _resolved(str(batch_dir))
        path = (batch_dir / rel).resolve()
    except (OSError, ValueError, RuntimeError) as exc:   # RuntimeError: a symlink loop (Python < 3.13)
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r} does not resolve: {exc}") from exc
    if root not in path.parents:
        raise Rejected(Reason.UNSAFE_PATH, f"path {rel[:80]!r} resolves outside the batch folder")
    return path


def read_file(path: Path, rel: str, limit: int, reason: Reason, what: str) -> bytes:
    """A record's file, its size checked on `stat` before anything is read (a 2 GB sparse "photo"
    costs a stat), and never more than `limit + 1` bytes read should it grow meanwhile."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected(Reason.MISSING_FILE, f"file {rel[:80]!r} does not exist or is not a regular file")
        if st.st_size > limit:
            raise Rejected(reason, f"{what} has {st.st_size} bytes, limit {limit}")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError as exc:
        raise Rejected(Reason.MISSING_FILE, f"file {rel[:80]!r} does not exist") from exc
    except OSError as exc:
        raise Rejected(Reason.MISSING_FILE, f"file {rel[:80]!r} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise Rejected(reason, f"{what} has more than {limit} bytes")
    return data


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
        upright = ImageOps.exif_transpose(img)   # a malformed EXIF block raises here too
        brightness = float(ImageStat.Stat(upright.convert("L")).mean[0])
    except Exception as exc:  # PIL raises many types for corrupt data
        raise Rejected(Reason.BAD_IMAGE, f"image does not decode: {type(exc).__name__}: {exc}") from exc
    return {"width": upright.width, "height": upright.height, "brightness": brightness}


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
    if (np.abs(arr) > np.finfo(np.float32).max).any():   # 1e300 is finite, and infinite stored as float32
        raise Rejected(Reason.BAD_SENSOR, "sensor has values beyond the float32 range (|x| > 3.4e38)")
    return arr.astype(np.float32)
