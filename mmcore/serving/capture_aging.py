"""Capture that ages instead of overflowing: captured answers the monitor has landed are deleted once
older than PARCEL_CAPTURE_RETENTION_DAYS, and at PARCEL_CAPTURE_MAX_BYTES the oldest landed ones go
first, so a new answer is dropped (store_full, counted) only when everything on disk is unlanded.

Two processes share a capture folder (maybe on two machines): the service's writers (one per BentoML
worker) write and delete, the monitor only marks. After it lands a period the monitor writes
`landed.json` (temp file + rename, so a reader sees the old or the new one, never half):

    {"through": "<ISO 8601>", "landed": [[since, until], ...]}

`through` = every answer of this folder answered before it has landed (computed from the per-second
counts, so a period the monitor skipped holds it back); `landed` keeps the landed periods after it so
a later backfill can move `through` past them. A missing or unreadable marker means "nothing landed":
nothing is deleted.

What may go: a blob or a rotated log file (`data.<worker>.log.<date>`, never written again) whose
mtime is before the cutoff. Each reference to a blob touches it (`BlobStore.put`), and an answer is
written after it was answered, so mtime < through means every answer naming the file has landed. The
open log file is never deleted; nor are counts, schema or the marker (small, and the accounting's).
A deletion races a writer of another worker that re-uses the blob; `_delete_blob` renames the blob
aside, checks its mtime is still the one judged, and puts it back touched if not. A deleted log file
leaves a tombstone under `deleted/` naming its answers routed to review, so the review queue can say
which it lost. Clocks of the machines sharing the folder are assumed in step (NTP).
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

MARKER = "landed.json"
TOMBSTONES = "deleted"
Span = tuple[datetime, datetime]


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat()


def read_marker(root: Path) -> tuple[datetime | None, list[Span]]:
    """The marker's `through` and its later landed periods; (None, []) when missing or unreadable."""
    try:
        data = json.loads((root / MARKER).read_text(encoding="utf-8"))
        through = datetime.fromisoformat(data["through"]) if data.get("through") else None
        spans = [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in data.get("landed", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return None, []
    if through is not None and through.tzinfo is None:
        return None, []
    return through, spans


def write_marker(root: Path, through: datetime | None, spans: Iterable[Span]) -> None:
    """Atomically (temp file + rename): the writers read it while the monitor replaces it."""
    later = sorted((a, b) for a, b in spans if through is None or b > through)
    body = {"through": _iso(through) if through else None, "landed": [[_iso(a), _iso(b)] for a, b in later],
            "updated_at": _iso(datetime.now(timezone.utc))}
    tmp = root / f".{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(body, indent=1), encoding="utf-8")
    os.replace(tmp, root / MARKER)


def captured_seconds(root: Path, since: datetime | None) -> list[datetime]:
    """Answer seconds (from `since`'s hour on) with at least one record captured, i.e. not sampled out."""
    lo = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H") if since else ""
    out = set()
    for path in (root / "counts").glob("*/*.json"):
        if path.stem < lo:
            continue
        try:
            seconds = json.loads(path.read_text(encoding="utf-8"))["seconds"]
        except (OSError, ValueError, KeyError):
            raise RuntimeError(f"capture counts {path} unreadable: landed answers are not marked") from None
        for second, counts in seconds.items():
            if counts.get("answered", 0) > counts.get("sampled_out", 0):
                out.add(datetime.fromisoformat(second.replace("Z", "+00:00")))
    return sorted(out)


def landed_through(through: datetime | None, spans: list[Span], seconds: list[datetime]) -> datetime | None:
    """The new `through`: the first captured second no landed period covers, else the end of the
    last landed period; never before the old `through` (what was landed stays landed)."""
    def covered(s: datetime) -> bool:
        return (through is not None and s < through) or any(a <= s < b for a, b in spans)

    ends = [b for _, b in spans] + ([through] if through else [])
    if not ends:
        return None
    first_open = next((s for s in seconds if not covered(s)), None)
    new = max(ends) if first_open is None else min(first_open, max(ends))
    return max(new, through) if through else new


def mark_landed(root: Path, period: Span) -> datetime | None:
    """The monitor's side: `period` of `root` has landed (written, empty or there already); returns
    the marker's new `through`."""
    through, spans = read_marker(root)
    spans = [*spans, period]
    new = landed_through(through, spans, captured_seconds(root, through))
    write_marker(root, new, spans)
    return new


@dataclass
class Swept:
    """What one sweep did: files and bytes deleted, the folder's bytes after it, the review answers
    whose log was deleted."""

    deleted: int = 0
    freed: int = 0
    size: int = 0
    candidates: int = 0
    review: list[str] = field(default_factory=list)


def _files(root: Path) -> Iterable[tuple[Path, os.stat_result, str | None]]:
    """(path, stat, kind) of every file under `root`; kind "blob" or "log" (a rotated data log) for
    the files that may go, else None."""
    for base, dirs, names in os.walk(root):
        rel = Path(base).relative_to(root).parts
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(base, name)
            try:
                st = path.stat()
            except OSError:
                continue
            blob = rel[:1] == ("blobs",) and not name.startswith(".")
            rotated = len(rel) == 3 and rel[0] == "log" and rel[2] == "data" and name.startswith("data.") \
                and ".log." in name
            yield path, st, "blob" if blob else "log" if rotated else None


def sweep(root: Path, cutoff: datetime, target: int | None = None,
          between: Callable[[Path, str], None] | None = None) -> Swept:
    """Delete the files that may go and were last written before `cutoff`, oldest first; with `target`,
    stop once the folder holds at most that many bytes (the cap), else delete all of them (retention).
    At the cap blobs go before logs: they are the bulk, and a log line (a few hundred bytes) is what
    the monitor's live quality reads back over `monitor.lookback_days`.
    `between(path, stage)` is a test hook for the race with a writer: run after a blob is judged
    ("judged") and after it was taken aside ("aside")."""
    out = Swept()
    limit = cutoff.timestamp()
    aged: list[tuple[bool, int, Path, os.stat_result]] = []
    for path, st, kind in _files(root):
        out.size += st.st_size
        if kind is not None and st.st_mtime < limit:
            aged.append((target is not None and kind == "log", st.st_mtime_ns, path, st))
    out.candidates = len(aged)
    for *_, path, st in sorted(aged):
        if target is not None and out.size <= target:
            break
        blob = "blobs" in path.relative_to(root).parts[:1]
        gone = _delete_blob(path, st, between) if blob else _delete_log(root, path, out)
        if gone:
            out.deleted += 1
            out.freed += st.st_size
            out.size -= st.st_size
    return out


def _delete_blob(path: Path, judged: os.stat_result, between: Callable[[Path, str], None] | None) -> bool:
    """Take the blob aside, and delete it only if nobody touched it since it was judged: a writer
    re-using it touched it first (it is put back, touched, so the next sweep judges it anew) or
    finds it gone and writes it again (identical bytes: same name)."""
    aside = path.with_name(f".{path.name}.del-{os.getpid()}")
    if between is not None:
        between(path, "judged")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another worker's sweep took it
        return False
    if between is not None:
        between(path, "aside")
    if os.stat(aside).st_mtime_ns != judged.st_mtime_ns:
        os.utime(aside)
        os.replace(aside, path)
        return False
    os.unlink(aside)
    return True


def _delete_log(root: Path, path: Path, out: Swept) -> bool:
    """A rotated data log: its review-routed answers into a tombstone first, then the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return False
    review, lines = [], 0
    for line in raw.splitlines():
        lines += 1
        try:
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("decision") == "review" and isinstance(rec.get("prediction_id"), str):
                review.append(rec["prediction_id"])
        except ValueError:
            continue
    stone = root / TOMBSTONES / f"{'.'.join(path.relative_to(root).parts[1:])}.json"
    stone.parent.mkdir(parents=True, exist_ok=True)
    tmp = stone.with_name(f".{stone.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"file": str(path.relative_to(root)), "lines": lines, "review": review,
                               "deleted_at": _iso(datetime.now(timezone.utc))}), encoding="utf-8")
    os.replace(tmp, stone)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    out.review += review
    return True


def deleted_review(roots: Iterable[Path]) -> set[str]:
    """prediction_ids routed to review whose log file a sweep deleted (from the tombstones)."""
    out: set[str] = set()
    for root in roots:
        for stone in sorted((Path(root) / TOMBSTONES).glob("*.json")):
            try:
                out.update(str(p) for p in json.loads(stone.read_text(encoding="utf-8")).get("review", []))
            except (OSError, ValueError, AttributeError):
                continue
    return out



SWEEP_S = 600.0   # how often a writer deletes what retention allows (a sweep stats every file: not per write)
ROOM = 0.9        # at the cap, a sweep frees down to this share of PARCEL_CAPTURE_MAX_BYTES (not a sweep a write)
RETRY_S = 5.0     # at the cap with nothing landed to delete, sweep again after this, or when the marker changes


class Ager:
    """A writer's side of aging: the retention sweep every SWEEP_S and the cap's sweep on demand.
    Runs in the writer thread only; `totals` are read by /capturez."""

    def __init__(self, root: Path, retention_days: float, max_bytes: int) -> None:
        self.root, self.retention_s, self.max_bytes = root, retention_days * 86400, max_bytes
        self.deleted: Counter[str] = Counter(retention=0, cap=0)  # keys fixed: /capturez reads them from another thread
        self.freed: Counter[str] = Counter(retention=0, cap=0)
        self.review_deleted = 0
        self.through: datetime | None = None
        self._last_sweep = time.monotonic()   # the first retention sweep SWEEP_S after start
        self._fruitless: tuple[float, float] | None = None  # (marker mtime, when) of a cap sweep that freed too little

    def due(self) -> bool:
        return time.monotonic() - self._last_sweep >= SWEEP_S

    def age(self, now: datetime | None = None) -> Swept | None:
        """Delete the landed files older than the retention; None when nothing has landed."""
        self._last_sweep = time.monotonic()
        self.through, _ = read_marker(self.root)
        if self.through is None:
            return None
        now = now or datetime.now(timezone.utc)
        cutoff = min(self.through, datetime.fromtimestamp(now.timestamp() - self.retention_s, timezone.utc))
        return self._count("retention", sweep(self.root, cutoff))

    def make_room(self, size: int) -> Swept | None:
        """At the cap: delete the oldest landed files until `size` more bytes fit under ROOM of the cap.
        None when it did not sweep (nothing landed, or a fruitless sweep moments ago, marker unchanged)."""
        try:
            stamp = (self.root / MARKER).stat().st_mtime
        except OSError:
            return None
        if self._fruitless and self._fruitless[0] == stamp and time.monotonic() - self._fruitless[1] < RETRY_S:
            return None
        self.through, _ = read_marker(self.root)
        if self.through is None:
            return None
        out = self._count("cap", sweep(self.root, self.through, int(self.max_bytes * ROOM) - size))
        self._fruitless = (stamp, time.monotonic()) if out.size + size > self.max_bytes else None
        return out

    def _count(self, reason: str, out: Swept) -> Swept:
        self.deleted[reason] += out.deleted
        self.freed[reason] += out.freed
        self.review_deleted += len(out.review)
        return out

    def totals(self) -> dict[str, object]:
        return {"landed_through": _iso(self.through) if self.through else None, "deleted": dict(self.deleted),
                "deleted_bytes": dict(self.freed), "review_deleted": self.review_deleted}
