"""Capture of answered traffic (DESIGN §2b): every record `/predict` and `/predict_file` answered,
with its inputs as received and the answer, kept for the capture step to land as ordinary batches.

Capture never fails or slows a request. The request thread only appends to a bounded queue (records
and bytes); one background thread writes blobs (`capture_store.BlobStore`) and the record line
through BentoML's monitoring API (`capture_store.MonitorLog`), which writes synchronously and so
cannot sit on the request path itself. The writer also ages the folder (`capture_aging`): answers the
monitor has landed go after PARCEL_CAPTURE_RETENTION_DAYS, and at PARCEL_CAPTURE_MAX_BYTES the oldest
landed ones make room. A full queue, a store full of unlanded answers or a
failed write drops the record and counts it by reason (Prometheus `parcel_capture_dropped_total`
and the per-second counts file), and `status()` says capture is degraded, which the service shows
on /readyz (headers) and /capturez while staying ready. Sampling (PARCEL_CAPTURE_SAMPLE) is decided
by the prediction id's hash, so a rerun with the same ids samples the same records.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from mmcore.serving.capture_aging import Ager, Swept
from mmcore.serving.capture_store import (DROP_REASONS, BlobStore, BoundedQueue, CountBook, MonitorLog,
                                          folder_bytes, second_of)

logger = logging.getLogger(__name__)
MONITOR_NAME = "parcel_capture"
FLUSH_S = 1.0          # counts reach disk at most this long after the writer handled a record
PROBE_S = 5.0          # while degraded by the store, how often the writer tries it again
QUEUE_FULL_WINDOW_S = 60.0  # a queue_full drop keeps capture "degraded" this long
MIB = 1024 * 1024


def new_id() -> str:
    """A request or prediction id: uuid4 as 32 hex digits (meets the landing id rule)."""
    return uuid.uuid4().hex


def _env_number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name}={raw!r} is outside {lo:g}..{hi:g}")
    return value


@dataclass(frozen=True)
class CaptureSettings:
    """Read once at service start; a bad value stops the start with the variable's name."""

    dir: Path
    sample: float = 1.0                 # share of answered records captured
    queue_records: int = 1024           # queue bound in records ...
    queue_bytes: int = 256 * MIB        # ... and in payload bytes (images reach 10 MB each)
    max_bytes: int = 10 * 1024 * MIB    # the capture folder's size at which landed answers make room
    retention_days: float = 30.0        # landed answers are deleted this long after they were written
    monitor: str = MONITOR_NAME         # BentoML monitor name: the log's folder under log/

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "CaptureSettings":
        home = Path(env.get("BENTOML_HOME") or Path.home() / "bentoml")
        return cls(dir=Path(env.get("PARCEL_CAPTURE_DIR") or home / "capture"),
                   sample=_env_number(env, "PARCEL_CAPTURE_SAMPLE", 1.0, 0.0, 1.0),
                   queue_records=int(_env_number(env, "PARCEL_CAPTURE_QUEUE", 1024, 1, 1e7)),
                   queue_bytes=int(_env_number(env, "PARCEL_CAPTURE_QUEUE_BYTES", 256 * MIB, 1, 1e12)),
                   max_bytes=int(_env_number(env, "PARCEL_CAPTURE_MAX_BYTES", 10 * 1024 * MIB, 0, 1e15)),
                   retention_days=_env_number(env, "PARCEL_CAPTURE_RETENTION_DAYS", 30.0, 0.0, 36500.0))

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    def monitoring_config(self) -> dict[str, Any]:
        """BentoML's per-service `monitoring` config: the default (file) exporter writing beside the
        blobs. A BENTOML_CONFIG file overrides it, e.g. `type: otlp` for a cluster (docs/serving.md: capture)."""
        return {"enabled": True, "type": "default", "options": {"log_path": str(self.log_dir)}}


@dataclass(frozen=True)
class RequestInfo:
    """Set per HTTP request by the middleware, read when the request's records are parsed."""

    request_id: str = field(default_factory=new_id)
    received: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class CapturedRecord:
    """One answered record: the inputs as received, the answer, and when."""

    prediction_id: str
    request_id: str
    answered_at: datetime
    latency_ms: float
    answer: dict[str, Any]              # label, probabilities, modalities, model_version
    record_id: str | None = None
    shipment_id: str | None = None
    hub: str | None = None
    captured_at: str | None = None      # the client's capture time (UTC ISO 8601, checked as ingest does)
    note: str | None = None
    image: bytes | None = None
    sensor: dict[str, Any] | None = None

    def size(self) -> int:
        """Payload bytes held while queued (sensor values as 8-byte floats)."""
        rows = sum(len(v) for v in (self.sensor or {}).values() if v is not None)
        return len(self.image or b"") + 8 * rows + len(self.note or "") + 512


class CaptureMetrics:
    """Prometheus metrics on the service's /metrics. Made at service start, not at import: BentoML
    workers set PROMETHEUS_MULTIPROC_DIR first. Tests pass their own registry."""

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client as prom

        reg = registry if registry is not None else prom.REGISTRY
        self.dropped = prom.Counter("parcel_capture_dropped", "Answered records not captured, by reason",
                                    ["reason"], registry=reg)
        self.sampled_out = prom.Counter("parcel_capture_sampled_out", "Answered records left out by "
                                        "PARCEL_CAPTURE_SAMPLE (not a drop)", registry=reg)
        self.written = prom.Counter("parcel_capture_written", "Answered records captured", registry=reg)
        self.deleted = prom.Counter("parcel_capture_deleted", "Captured files deleted after the monitor landed "
                                    "them, by reason (retention, cap)", ["reason"], registry=reg)
        self.degraded = prom.Gauge("parcel_capture_degraded", "1 while capture drops records or cannot write",
                                   registry=reg, multiprocess_mode="livemax")
        for reason in DROP_REASONS:
            self.dropped.labels(reason=reason)


_DEFAULT_METRICS: CaptureMetrics | None = None
_CURRENT: "Capture | None" = None


def default_metrics() -> CaptureMetrics:
    """One set per process: prometheus_client refuses to register a metric name twice."""
    global _DEFAULT_METRICS
    if _DEFAULT_METRICS is None:
        _DEFAULT_METRICS = CaptureMetrics()
    return _DEFAULT_METRICS


def current() -> "Capture | None":
    """The capture the service started in this process (the middleware reports its status)."""
    return _CURRENT


class Capture:
    """The bounded queue and its background writer; see the module docstring."""

    def __init__(self, settings: CaptureSettings, metrics: CaptureMetrics | None = None,
                 use_bentoml_config: bool = True) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else default_metrics()
        self.queue = BoundedQueue(settings.queue_records, settings.queue_bytes)
        self.blobs = BlobStore(settings.dir)
        process = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}-{new_id()[:6]}"
        self.counts = CountBook(settings.dir, process)
        self.log = MonitorLog(settings.monitor, None if use_bentoml_config else settings.log_dir)
        self.ager = Ager(settings.dir, settings.retention_days, settings.max_bytes)
        self._problem: tuple[str, str] | None = None     # (reason, detail) of a store that fails
        self._queue_full_at = -1e9
        self._size = 0
        self._last_flush = self._last_probe = 0.0
        self._warned: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="parcel-capture-writer", daemon=True)

    def start(self) -> "Capture":
        global _CURRENT
        _CURRENT = self
        self._thread.start()
        return self

    # --- request side: O(1), never raises ---------------------------------------------------------

    def offer_answer(self, request: RequestInfo, inputs: dict[str, Any], answer: dict[str, Any],
                     client: dict[str, str | None]) -> None:
        """Capture one answered record (`inputs` as `mmcore.predict` got them, `answer` the response
        record with its prediction_id, `client` the record's record_id, shipment_id, hub and captured_at)."""
        now = datetime.now(timezone.utc)
        try:
            item = CapturedRecord(
                prediction_id=answer["prediction_id"], request_id=request.request_id, answered_at=now,
                latency_ms=round((time.monotonic() - request.received) * 1000, 3),
                answer={k: answer.get(k) for k in ("label", "probabilities", "modalities", "model_version",
                                                   "prediction_set", "decision", "review_reason")},
                note=inputs.get("note"), image=inputs.get("image"), sensor=inputs.get("sensor"), **client)
        except Exception as exc:  # a bug here must not fail the request: count it as answered and dropped
            self.counts.add(second_of(now), "answered")
            self._drop(second_of(now), "write_error", f"capture record not built: {exc!r}")
            return
        try:
            self.offer(item)
        except Exception as exc:  # not expected (offer only counts and appends): log, never raise
            self._warn("offer", f"capture offer failed: {exc!r}")

    def offer(self, item: CapturedRecord) -> None:
        second = second_of(item.answered_at)
        self.counts.add(second, "answered")
        if zlib.crc32(item.prediction_id.encode()) / 2**32 >= self.settings.sample:
            self.counts.add(second, "sampled_out")
            self.metrics.sampled_out.inc()
        elif self._stop.is_set():  # offered after close(): nobody would write it
            self._drop(second, "shutdown", "offered after the capture closed")
        elif not self.queue.put(item):
            self._queue_full_at = time.monotonic()
            self._drop(second, "queue_full", f"{len(self.queue)} records queued")

    def status(self) -> dict[str, Any]:
        """`capture: ok|degraded`, the reason and detail, queue depth and this process's counts."""
        problem = self._problem
        if problem is None and time.monotonic() - self._queue_full_at < QUEUE_FULL_WINDOW_S:
            problem = ("queue_full", f"records dropped in the last {QUEUE_FULL_WINDOW_S:g} s")
        return {"capture": "degraded" if problem else "ok", "reason": problem[0] if problem else None,
                "detail": problem[1] if problem else None, "queued": len(self.queue),
                "sample": self.settings.sample, "counts": self.counts.totals(), "aging": self.ager.totals()}

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued within `timeout`; what is left is counted as dropped (shutdown)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for item in self.queue.drain():
            self._drop(second_of(item.answered_at), "shutdown", "service stopped before it was written")
        self._flush(force=True)

    # --- writer thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        self._check_store()
        while True:
            item = self.queue.get(timeout=FLUSH_S / 2)
            if item is not None:
                self._write(item)
            elif self._stop.is_set():
                break
            self._housekeeping()

    def _write(self, item: CapturedRecord) -> None:
        second = second_of(item.answered_at)
        if self._over(item.size()):
            self._sweep_aged(room=item.size())
        if self._over(item.size()):  # everything on disk is still unlanded: this answer is dropped, counted
            self._problem = ("store_full", f"capture folder at {self._size} of {self.settings.max_bytes} bytes")
            self._drop(second, "store_full", self._problem[1])
            return
        try:
            columns, new_bytes = self._columns(item)
            self.log.write(columns)
        except Exception as exc:
            self._problem = ("write_error", f"{type(exc).__name__}: {exc}"[:300])
            self._drop(second, "write_error", self._problem[1])
            return
        self._size += new_bytes + len(json.dumps([c[1] for c in columns], default=str))
        self._problem = None
        self.counts.add(second, "written")
        self.metrics.written.inc()

    def _over(self, size: int) -> bool:
        return bool(self.settings.max_bytes) and self._size + size > self.settings.max_bytes

    def _swept(self, out: Swept | None, reason: str) -> None:
        """A sweep's result: the folder's true size (other workers write there too) and the metric."""
        if out is None:
            return
        self._size = out.size
        self.metrics.deleted.labels(reason=reason).inc(out.deleted)
        if out.review:
            self._warn("review_deleted", f"capture deleted {len(out.review)} landed answer(s) routed to review "
                       "with their log (the review queue reports those still unlabelled)")

    def _columns(self, item: CapturedRecord) -> tuple[list[tuple[str, Any, str, str]], int]:
        """The record line (blobs named by digest) and the bytes its new blobs took."""
        image = sensor = None
        new_bytes = 0
        if item.image is not None:
            image, n = self.blobs.put(item.image)
            new_bytes += n
        if item.sensor is not None:
            sensor, n = self.blobs.put(json.dumps(item.sensor, separators=(",", ":")).encode())
            new_bytes += n
        ans = item.answer
        cols = [("prediction_id", item.prediction_id, "prediction", "categorical"),
                ("x_request_id", item.request_id, "prediction", "categorical"),
                ("answered_at", item.answered_at.isoformat(), "prediction", "categorical"),
                ("record_id", item.record_id, "feature", "categorical"),
                ("shipment_id", item.shipment_id, "feature", "categorical"),
                ("hub", item.hub, "feature", "categorical"),
                ("captured_at", item.captured_at, "feature", "categorical"),
                ("note", item.note, "feature", "categorical"),
                ("image", image, "feature", "categorical"),
                ("sensor", sensor, "feature", "categorical"),
                ("label", ans["label"], "prediction", "categorical"),
                *[(f"p_{c}", p, "prediction", "numerical") for c, p in ans["probabilities"].items()],
                ("modalities", ",".join(ans["modalities"]), "prediction", "categorical"),
                ("prediction_set", ",".join(ans.get("prediction_set") or []), "prediction", "categorical"),
                ("decision", ans.get("decision"), "prediction", "categorical"),
                ("review_reason", ",".join(ans.get("review_reason") or []), "prediction", "categorical"),
                ("model_version", ans["model_version"], "prediction", "categorical"),
                ("latency_ms", item.latency_ms, "prediction", "numerical")]
        return cols, new_bytes

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._problem is not None and now - self._last_probe >= PROBE_S:
            self._check_store()
        if self.counts.dirty() and now - self._last_flush >= FLUSH_S:
            self._flush()
        if self.ager.due():
            self._sweep_aged()
        self.metrics.degraded.set(1 if self.status()["capture"] == "degraded" else 0)

    def _check_store(self) -> None:
        """At start and while degraded by the store: can the folder be written, and is there room?"""
        self._last_probe = time.monotonic()
        try:
            self.settings.dir.mkdir(parents=True, exist_ok=True)
            probe = self.settings.dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
            self._size = folder_bytes(self.settings.dir)
        except OSError as exc:
            self._problem = ("write_error", f"capture folder not writable: {type(exc).__name__}: {exc}"[:300])
            return
        if self._over(1):
            self._sweep_aged(room=0)
        full = self.settings.max_bytes and self._size >= self.settings.max_bytes
        self._problem = ("store_full", f"capture folder at {self._size} of {self.settings.max_bytes} bytes") \
            if full else None

    def _sweep_aged(self, room: int | None = None) -> None:
        """Retention, or at the cap room for `room` bytes; a sweep that fails is logged, tried again later."""
        try:
            if room is None:
                self._swept(self.ager.age(), "retention")
            else:
                self._swept(self.ager.make_room(room), "cap")
        except OSError as exc:
            self._warn("aging", f"capture aging failed: {type(exc).__name__}: {exc}")

    def _flush(self, force: bool = False) -> None:
        self._last_flush = time.monotonic()
        if not (force or self.counts.dirty()):
            return
        try:
            self.counts.flush(datetime.now(timezone.utc))
        except OSError as exc:  # kept in memory; the next flush tries again
            self._warn("counts", f"capture counts not written: {type(exc).__name__}: {exc}")

    def _drop(self, second: str, reason: str, detail: str) -> None:
        self.counts.add(second, reason)
        self.metrics.dropped.labels(reason=reason).inc()
        self._warn(reason, f"capture dropped a record ({reason}): {detail}")

    def _warn(self, key: str, message: str) -> None:
        """At most one log line per reason a minute (a full disk would otherwise log every request)."""
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= 60:
            self._warned[key] = now
            logger.warning(message)
