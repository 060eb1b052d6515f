"""The review queue (issue 14): served answers the model should not make alone, waiting for a person,
and the label-feed batches that person's answers become (DESIGN §2b).

The queue is derived, never stored. Its records are the captured lines (mmcore/serving/capture.py)
with `decision == "review"`, oldest answer first, minus every prediction_id that has a label in a
finished batch of the label feed (any source: an inspection or a claim settles a record as well as a
reviewer does). So an answer leaves the queue for every reviewer at once and stays gone across
restarts, and several capture folders (one per serving replica) make one queue. Files are re-read
incrementally on each call: a log is read on from where the last call stopped, and only complete
lines are taken (the writer may be half-way through one); a line that is not a capture record is
counted as unreadable and skipped. Label batches are immutable once `_SUCCESS` exists, so each is
read once.

The capture's aging (mmcore/serving/capture_aging.py) deletes landed answers, routed or not, once old
or at the byte cap: `lost` counts the unlabelled ones it took, from the tombstones of deleted logs
(deleted_before_review) and the waiting answers whose photo or trace is gone (blobs_missing); the
app shows both, so a PARCEL_CAPTURE_RETENTION_DAYS shorter than the review backlog is seen.

Skip is the one piece of state kept in the process: a skipped record moves to the back of the queue
until the app restarts (then it is back in answer order). Skipping is a reviewer's "not now", not a
decision, so it writes nothing.

An answer becomes a label batch of its own, `review-<UTC %Y%m%dT%H%M%S>-<prediction_id>`, built in a
dot folder, renamed, `_SUCCESS` written last: ingest joins it onto `cap-<prediction_id>` once the
capture window holding that answer has landed (until then ingest quarantines it as unknown_id and
joins it on a later run).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from mmcore.config import CLASSES
from mmcore.schema import RECORD_ID_RE
from mmcore.serving.capture import MONITOR_NAME
from mmcore.serving.capture_aging import deleted_review, read_marker
from mmcore.serving.capture_store import BlobStore

REVIEW = "review"                  # the decision that routes an answer here, and the label source we write
LABELS_FILE = "labels.jsonl"       # = mmcore.monitor.labels.LABELS_FILE (not imported: that module loads pandas)
SUCCESS = "_SUCCESS"
BATCH_PREFIX = "review-"
BATCH_TIME = "%Y%m%dT%H%M%S"
MAX_BATCH_ID = 64                  # the label feed's id rule, mmcore.schema.RECORD_ID_RE
DIGEST_CHARS = frozenset("0123456789abcdef")


class ReviewError(Exception):
    """A request the queue refuses; `status` is its HTTP status, the message says what to do."""

    status = 400


class BadLabel(ReviewError):
    status = 400


class NotFound(ReviewError):
    status = 404


class AlreadyLabelled(ReviewError):
    status = 409


@dataclass(frozen=True)
class Routed:
    """One captured answer routed to review, with the capture folder that holds its blobs."""

    root: Path
    line: dict[str, Any]
    answered_at: datetime

    @property
    def prediction_id(self) -> str:
        return self.line["prediction_id"]

    def order(self) -> tuple[datetime, str]:
        return self.answered_at, self.prediction_id


def split_list(value: Any) -> list[str]:
    """A captured list column (comma-joined; "" for none) as a list; a JSON list is taken as is."""
    if isinstance(value, list):
        return [str(v) for v in value]
    if not isinstance(value, str):
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_line(raw: bytes, root: Path) -> Routed | None:
    """A log line as a routed answer, or None when it was answered without review; raises ValueError
    for a line that is no capture record (bad JSON, no valid prediction_id or answer time)."""
    line = json.loads(raw)
    if not isinstance(line, dict):
        raise ValueError("not a JSON object")
    pid = line.get("prediction_id")
    if not isinstance(pid, str) or not RECORD_ID_RE.match(pid):
        raise ValueError(f"bad prediction_id {pid!r}")
    at = datetime.fromisoformat(str(line["answered_at"]))
    if line.get("decision") != REVIEW:
        return None
    return Routed(root, line, at if at.tzinfo else at.replace(tzinfo=timezone.utc))


@dataclass
class _Tail:
    """How far one log file has been read; a new inode or a shorter file means it was replaced."""

    inode: int
    offset: int = 0
    routed: list[Routed] = field(default_factory=list)
    unreadable: int = 0


class CaptureReader:
    """Routed answers of capture folders, reading each monitor log on from where it was left."""

    def __init__(self, roots: Iterable[Path], monitor: str = MONITOR_NAME) -> None:
        self.roots = [Path(r) for r in roots]
        self.monitor = monitor
        self._tails: dict[Path, _Tail] = {}

    def logs(self) -> list[tuple[Path, Path]]:
        """(capture folder, log file) for every data log, rotated ones included."""
        return [(root, path) for root in self.roots
                for path in sorted((root / "log" / self.monitor / "data").glob("data.*.log*"))]

    def read(self) -> tuple[list[Routed], int]:
        """Every routed answer logged so far (duplicates included) and the count of unreadable lines."""
        seen = set()
        for root, path in self.logs():
            seen.add(path)
            try:
                self._read_on(root, path)
            except FileNotFoundError:  # rotated away between the listing and the read
                self._tails.pop(path, None)
        for gone in set(self._tails) - seen:
            del self._tails[gone]
        tails = self._tails.values()
        return [r for t in tails for r in t.routed], sum(t.unreadable for t in tails)

    def _read_on(self, root: Path, path: Path) -> None:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            tail = self._tails.get(path)
            if tail is None or tail.inode != st.st_ino or st.st_size < tail.offset:
                tail = self._tails[path] = _Tail(st.st_ino)
            f.seek(tail.offset)
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # being written: taken whole on a later call
                tail.offset += len(raw)
                if not raw.strip():
                    continue
                try:
                    routed = parse_line(raw, root)
                except (ValueError, KeyError, TypeError):
                    tail.unreadable += 1
                    continue
                if routed is not None:
                    tail.routed.append(routed)


class LabelIndex:
    """prediction_id -> the first finished label batch (by name) that labels it, for any source.

    A line counts when ingest would accept it (mmcore.monitor.labels' rules); a label naming the
    record as `cap-<prediction_id>` counts for that prediction_id."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._batches: dict[str, set[str]] = {}

    def refresh(self) -> dict[str, str]:
        if self.root.is_dir():
            for bdir in sorted(self.root.iterdir()):
                if bdir.name not in self._batches and not bdir.name.startswith(".") and (bdir / SUCCESS).is_file():
                    self._batches[bdir.name] = labelled_ids(bdir)
        out: dict[str, str] = {}
        for batch_id in sorted(self._batches, reverse=True):
            out.update(dict.fromkeys(self._batches[batch_id], batch_id))
        return out


def labelled_ids(batch_dir: Path) -> set[str]:
    """The prediction_ids the valid lines of one label batch name. Read with ingest's own reader, which
    turns every poison line (and an unreadable file) into a quarantine entry: never a 500 on /api/next."""
    from mmcore.monitor.labels import Label, read_label_batch

    ids = set()
    for lab in read_label_batch(batch_dir):
        if isinstance(lab, Label):
            if lab.key == "prediction_id":
                ids.add(lab.id)
            elif lab.id.startswith("cap-"):
                ids.add(lab.id.removeprefix("cap-"))
    return ids


def check_label(value: Any) -> str:
    """The class a reviewer chose, normalised like ingest does; BadLabel names the allowed ones."""
    label = value.strip().lower() if isinstance(value, str) else None
    if label not in CLASSES:
        raise BadLabel(f"label {value!r} is not one of the classes {list(CLASSES)}: "
                       'send {"label": "<class>"}')
    return label


def review_batch_id(prediction_id: str, now: datetime) -> str:
    """`review-<UTC time>-<prediction_id>`; an id too long for the feed's 64 characters is shortened
    to its head and a hash, so the batch id stays unique and still tells whose label it is."""
    head = f"{BATCH_PREFIX}{now.astimezone(timezone.utc):{BATCH_TIME}}-"
    room = MAX_BATCH_ID - len(head)
    if len(prediction_id) > room:
        prediction_id = f"{prediction_id[:room - 17]}-{hashlib.sha256(prediction_id.encode()).hexdigest()[:16]}"
    return head + prediction_id


def label_line(prediction_id: str, label: str, now: datetime, labeller: str) -> dict[str, str]:
    """A label line of the feed; `labeller` is the reviewer whose key sent it (ingest carries it into data/raw)."""
    return {"prediction_id": prediction_id, "label": label,
            "labelled_at": now.astimezone(timezone.utc).isoformat(timespec="seconds"), "source": REVIEW,
            "labeller": labeller}


def write_label_batch(labels: Path, prediction_id: str, label: str, now: datetime, labeller: str) -> str:
    """One answer as one finished label batch; returns its id. Readers never see half a batch: it is
    built in a dot folder and renamed, and `_SUCCESS` (what ingest waits for) is written last."""
    batch_id = review_batch_id(prediction_id, now)
    final = labels / batch_id
    if final.exists():
        raise AlreadyLabelled(f"label batch {batch_id} exists already: {prediction_id} was just answered")
    labels.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{batch_id}.", dir=labels))
    try:
        with (tmp / LABELS_FILE).open("w", encoding="utf-8") as f:
            f.write(json.dumps(label_line(prediction_id, label, now, labeller)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (final / SUCCESS).write_bytes(b"")
    return batch_id


def blob_digest(value: Any) -> str | None:
    """A captured blob reference when it is a SHA-256 digest (never a path: it names a file)."""
    ok = isinstance(value, str) and len(value) == 64 and set(value) <= DIGEST_CHARS
    return value if ok else None


def not_routed(prediction_id: str) -> str:
    return (f"no captured answer routed to review has prediction_id {prediction_id!r}: check the id, "
            "or the capture folders this app reads (--capture)")


class ReviewQueue:
    """The queue over capture folders and a label feed; safe to share between request threads."""

    def __init__(self, roots: Iterable[Path], labels: Path, monitor: str = MONITOR_NAME) -> None:
        self.reader = CaptureReader(roots, monitor)
        self.labels = Path(labels)
        self.index = LabelIndex(self.labels)
        self.unreadable = 0
        self.lost = {"deleted_before_review": 0, "blobs_missing": 0}
        self._skipped: dict[str, int] = {}
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def pending(self) -> list[Routed]:
        """Unlabelled routed answers: never-skipped ones oldest first, then skipped ones in skip order."""
        with self._lock:
            return self._pending()

    def find(self, prediction_id: str) -> Routed:
        """A routed answer, labelled or not (its photo stays viewable while a page shows it)."""
        with self._lock:
            routed = self._routed().get(prediction_id)
        if routed is None:
            raise NotFound(not_routed(prediction_id))
        return routed

    def skip(self, prediction_id: str) -> None:
        with self._lock:
            self._waiting(prediction_id)
            self._skipped[prediction_id] = next(self._turn)

    def answer(self, prediction_id: str, label: str, now: datetime | None = None, *, labeller: str) -> str:
        """Write the reviewer's label (validated first), naming who gave it; returns the label batch id."""
        label = check_label(label)
        with self._lock:
            self._waiting(prediction_id)
            batch_id = write_label_batch(self.labels, prediction_id, label, now or datetime.now(timezone.utc),
                                         labeller)
            self._skipped.pop(prediction_id, None)
        return batch_id

    def _routed(self) -> dict[str, Routed]:
        """Routed answers by prediction_id; the earliest line wins if a record was logged twice."""
        lines, self.unreadable = self.reader.read()
        out: dict[str, Routed] = {}
        for routed in sorted(lines, key=Routed.order):
            out.setdefault(routed.prediction_id, routed)
        return out

    def _pending(self) -> list[Routed]:
        labelled = self.index.refresh()
        routed = self._routed()
        waiting = [r for pid, r in routed.items() if pid not in labelled]
        through = {root: read_marker(root)[0] for root in self.reader.roots}
        self.lost = {"deleted_before_review": len(deleted_review(self.reader.roots) - set(labelled) - set(routed)),
                     "blobs_missing": sum(1 for r in waiting if blobs_missing(r, through.get(r.root)))}
        fresh = [r for r in waiting if r.prediction_id not in self._skipped]
        later = sorted((r for r in waiting if r.prediction_id in self._skipped),
                       key=lambda r: self._skipped[r.prediction_id])
        return fresh + later

    def _waiting(self, prediction_id: str) -> None:
        """Raise unless the answer is in the queue now: NotFound (never routed), AlreadyLabelled."""
        if not isinstance(prediction_id, str) or not RECORD_ID_RE.match(prediction_id):
            raise NotFound(f"{prediction_id!r} is not a prediction_id ([A-Za-z0-9_-]{{1,64}})")
        if prediction_id not in self._routed():
            raise NotFound(not_routed(prediction_id))
        labelled = self.index.refresh()
        if prediction_id in labelled:
            raise AlreadyLabelled(f"{prediction_id} already has a label (label batch {labelled[prediction_id]}) "
                                  "and has left the queue: load the next record")


def blobs_missing(routed: Routed, through: datetime | None) -> bool:
    """An answer the capture's aging already deleted a blob of (only a landed one, answered before its
    folder's marker's `through`, can have lost one: the queue stats no file of a fresh answer)."""
    if through is None or routed.answered_at >= through:
        return False
    digests = (blob_digest(routed.line.get(k)) for k in ("image", "sensor"))
    return any(d is not None and not BlobStore(routed.root).path(d).is_file() for d in digests)


def sensor_channels(routed: Routed) -> dict[str, Any] | None:
    """The sensor trace as received (channels and t_s), or None when absent or not in the store."""
    digest = blob_digest(routed.line.get("sensor"))
    data = BlobStore(routed.root).get(digest) if digest else None
    try:
        return json.loads(data) if data is not None else None
    except ValueError:
        return None


def image_bytes(routed: Routed) -> bytes | None:
    digest = blob_digest(routed.line.get("image"))
    return BlobStore(routed.root).get(digest) if digest else None


def record_view(routed: Routed) -> dict[str, Any]:
    """What the page shows of one answer: inputs, the model's answer, and why it was routed."""
    line = routed.line
    probs = {c: line[f"p_{c}"] for c in CLASSES if isinstance(line.get(f"p_{c}"), (int, float))}
    sensor = sensor_channels(routed)
    return {"prediction_id": routed.prediction_id, "answered_at": routed.answered_at.isoformat(),
            "record_id": line.get("record_id"), "shipment_id": line.get("shipment_id"), "hub": line.get("hub"),
            "note": line.get("note"), "has_image": line.get("image") is not None, "sensor": sensor,
            "sensor_missing": line.get("sensor") is not None and sensor is None,
            "label": line.get("label"), "probabilities": sorted(probs.items(), key=lambda kv: -kv[1]),
            "prediction_set": split_list(line.get("prediction_set")),
            "review_reason": split_list(line.get("review_reason")),
            "modalities": split_list(line.get("modalities")), "model_version": line.get("model_version")}
