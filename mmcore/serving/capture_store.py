"""Where captured traffic is kept: payload blobs by content, per-second counts, and the record log
written through BentoML's monitoring API (`bentoml.monitor`).

A capture folder (PARCEL_CAPTURE_DIR) holds

    log/<monitor>/data/data.<worker>.log[.<date>]   one JSON object per captured record (BentoML's default
                                                    exporter: a TimedRotatingFileHandler, rotated daily)
    log/<monitor>/schema/schema.<worker>.log        the column schema, once per process
    blobs/sha256/<2 hex>/<64 hex>                   image bytes and sensor JSON as received, named by hash
    counts/<process>/<YYYY-MM-DDTHH>.json           per answer second: answered, sampled_out, written, drops

The record log stays small (a blob is named, not embedded) and the same image sent twice is stored
once. Counts are kept per second of answer time so the capture step can check, for any period,
that every answered record was written, sampled out or counted as dropped.
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import sys
import threading
from collections import Counter, deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

DROP_REASONS: tuple[str, ...] = ("queue_full", "store_full", "write_error", "shutdown")
COUNT_KEYS: tuple[str, ...] = ("answered", "sampled_out", "written", *DROP_REASONS)
MONITOR_LOGGER = "bentoml_monitor_data"  # the logger both of BentoML's exporters (default, otlp) write through


def second_of(ts: datetime) -> str:
    """The count bucket of an answer time: its UTC second, e.g. 2026-12-01T10:15:03Z."""
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class BlobStore:
    """Content-addressed files: the name is the SHA-256 of the bytes, written to a temp name and
    renamed, so a blob that exists is whole and a second copy of the same payload costs nothing but
    a touch (its mtime is when an answer last named it: what capture_aging ages it by)."""

    def __init__(self, root: Path) -> None:
        self.root = root / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> tuple[str, int]:
        """Store `data`; returns its digest and the bytes newly written (0 when it was there)."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        try:
            os.utime(path)  # a new reference: the blob is as young as its latest answer (capture_aging)
            return digest, 0
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return digest, len(data)

    def get(self, digest: str) -> bytes | None:
        """The blob's bytes, or None when it is missing or does not hash to its name."""
        try:
            data = self.path(digest).read_bytes()
        except (OSError, ValueError):
            return None
        return data if hashlib.sha256(data).hexdigest() == digest else None


class BoundedQueue:
    """FIFO of captured records (anything with `size()`) bounded in items and bytes; `put` never
    waits (False when full)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: deque[tuple[Any, int]] = deque()
        self._bytes = 0
        self._ready = threading.Condition()

    def put(self, item: Any) -> bool:
        size = item.size()
        with self._ready:
            if len(self._items) >= self.max_items or (self._items and self._bytes + size > self.max_bytes):
                return False
            self._items.append((item, size))
            self._bytes += size
            self._ready.notify()
            return True

    def get(self, timeout: float) -> Any | None:
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            if not self._items:
                return None
            item, size = self._items.popleft()
            self._bytes -= size
            return item

    def drain(self) -> list[Any]:
        with self._ready:
            items = [i for i, _ in self._items]
            self._items.clear()
            self._bytes = 0
            return items

    def __len__(self) -> int:
        return len(self._items)


class CountBook:
    """Counts of one server process per answer second, kept in memory and flushed to one small
    JSON file per hour. Request threads add (answered, sampled_out, queue_full), the writer thread
    adds the rest and flushes; a flush that fails leaves the hour dirty for the next one."""

    def __init__(self, root: Path, process: str) -> None:
        self.dir = root / "counts" / process
        self._seconds: dict[str, Counter[str]] = {}
        self._dirty: set[str] = set()
        self._evicted: set[str] = set()
        self._total: Counter[str] = Counter()  # since the process started, for /capturez
        self._lock = threading.Lock()

    def add(self, second: str, key: str, n: int = 1) -> None:
        with self._lock:
            self._seconds.setdefault(second, Counter())[key] += n
            self._total[key] += n
            self._dirty.add(second[:13])

    def dirty(self) -> bool:
        return bool(self._dirty)

    def totals(self) -> dict[str, int]:
        with self._lock:
            return {k: self._total.get(k, 0) for k in COUNT_KEYS}

    def flush(self, now: datetime) -> None:
        """Write every dirty hour (temp file + rename); raises OSError when the folder is unwritable."""
        self._reload_evicted()
        with self._lock:
            hours = {h: {s: dict(c) for s, c in self._seconds.items() if s[:13] == h} for h in self._dirty}
        self.dir.mkdir(parents=True, exist_ok=True)
        for hour, seconds in sorted(hours.items()):
            path = self.dir / f"{hour}.json"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"seconds": dict(sorted(seconds.items()))}, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
            with self._lock:
                if {s: dict(c) for s, c in self._seconds.items() if s[:13] == hour} == seconds:
                    self._dirty.discard(hour)
        self._forget_old(now)

    def _reload_evicted(self) -> None:
        """An hour that left memory and got a late count: add its file back first, so the flush
        writes the file's counts plus the new ones instead of the new ones alone."""
        for hour in sorted(self._dirty & self._evicted):
            path = self.dir / f"{hour}.json"
            old = json.loads(path.read_text(encoding="utf-8"))["seconds"] if path.is_file() else {}
            with self._lock:
                for second, counts in old.items():
                    self._seconds.setdefault(second, Counter()).update(counts)
                self._evicted.discard(hour)

    def _forget_old(self, now: datetime) -> None:
        """Flushed hours more than 3 h before `now` leave memory (their file keeps them): answered
        counts come at answer time and the writer's within the queue's delay, so late ones are rare."""
        horizon = second_of(now - timedelta(hours=3))[:13]
        with self._lock:
            for s in [s for s in self._seconds if s[:13] < horizon and s[:13] not in self._dirty]:
                self._evicted.add(s[:13])
                del self._seconds[s]


def read_counts(roots: Iterable[Path], since: datetime, until: datetime) -> Counter[str]:
    """Counts of every process of the capture folders `roots` for answer seconds in [since, until)."""
    lo, hi = second_of(since), second_of(until)
    total: Counter[str] = Counter()
    for root in roots:
        for path in sorted((root / "counts").glob("*/*.json")):
            if not lo[:13] <= path.stem <= hi[:13]:
                continue
            for second, counts in json.loads(path.read_text(encoding="utf-8"))["seconds"].items():
                if lo <= second < hi:
                    total.update(counts)
    return total


def folder_bytes(root: Path) -> int:
    """Bytes under `root` (what PARCEL_CAPTURE_MAX_BYTES bounds); unreadable entries count as 0."""
    total = 0
    for base, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


class MonitorLog:
    """One captured record per call to BentoML's monitoring API, `bentoml.monitor(name)`.

    Why the wrapping: the exporter BentoML is configured with writes in the caller's thread (the
    default one through a stdlib file handler) and a stdlib handler swallows its own write errors
    (`Handler.handleError` prints to stderr), so this class (1) runs each record in a fresh
    contextvars context (`bentoml.monitor` keeps its per-record state in context variables and
    would be stuck after an exception inside it), and (2) traps the handler's errors and raises
    them, so the writer can count a failed line as a drop. `log_path` set: the default exporter
    writing there (tests, tools); None: what BentoML's `monitoring` config says (the service).
    """

    def __init__(self, name: str, log_path: Path | None = None) -> None:
        self.name = name
        self._kwargs: dict[str, Any] = {}
        if log_path is not None:
            self._kwargs = {"monitor_class": "default", "monitor_options": {"log_path": str(log_path)}}
        self._error: BaseException | None = None

    def write(self, columns: list[tuple[str, Any, str, str]]) -> None:
        """Log one record: columns of (name, value, role, data_type); raises what the exporter hit."""
        self._error = None
        contextvars.Context().run(self._write, columns)
        if self._error is not None:
            raise OSError(f"monitor exporter failed: {type(self._error).__name__}: {self._error}")

    def _write(self, columns: list[tuple[str, Any, str, str]]) -> None:
        import bentoml

        self._trap()
        with bentoml.monitor(self.name, **self._kwargs) as mon:
            for name, value, role, data_type in columns:
                mon.log(value, name=name, role=role, data_type=data_type)
        self._trap()  # the exporter makes its handler on first use: trap it for the next record

    def _trap(self) -> None:
        for handler in logging.getLogger(MONITOR_LOGGER).handlers:
            if getattr(handler, "_capture_trap", None) is not self:
                handler.handleError = self._handler_error  # type: ignore[method-assign]
                handler._capture_trap = self  # type: ignore[attr-defined]

    def _handler_error(self, record: logging.LogRecord) -> None:
        self._error = sys.exc_info()[1] or RuntimeError("log handler error")
