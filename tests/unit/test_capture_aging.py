"""Capture that ages instead of overflowing (mmcore/serving/capture_aging.py, issue 25 point 5).
Risks: an answer deleted before the monitor landed it (by retention, by the cap, or by a race with
another worker re-using its blob), new answers dropped while landed ones still fill the folder, and
losses nobody sees (the review queue's routed answers, the service's store_full drops)."""
from __future__ import annotations

import io
import logging
import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from PIL import Image
from prometheus_client import CollectorRegistry

from flows.monitor import capture_losses
from mmcore.monitor import capture_batches as cb
from mmcore.selective.review_queue import ReviewQueue
from mmcore.serving import capture_aging as aging
from mmcore.serving.capture import Capture, CapturedRecord, CaptureMetrics, CaptureSettings, new_id
from mmcore.serving.capture_store import MONITOR_LOGGER, BlobStore, folder_bytes

NOW = datetime.now(timezone.utc).replace(microsecond=0)
T1 = NOW - timedelta(days=3)            # period 1: answered three days ago
T2 = NOW - timedelta(days=2)            # period 2: two days ago
P1 = cb.make_period(T1, T1 + timedelta(minutes=1))
P2 = cb.make_period(T2, T2 + timedelta(minutes=1))
BIG = 20_000                             # bytes of one test photo (noise: JPEG cannot shrink it much)


def photo(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (80, 80), os.urandom(80 * 80 * 3)).save(buf, format="PNG")
    return buf.getvalue() + seed.to_bytes(4, "big")


def rec(at: datetime, image: bytes | None = None, decision: str = "auto", pid: str | None = None) -> CapturedRecord:
    answer = {"label": "normal", "probabilities": {"normal": 0.9, "wet": 0.1}, "modalities": ["image"],
              "model_version": "1", "decision": decision, "review_reason": ["set_size"] if decision == "review" else []}
    return CapturedRecord(prediction_id=pid or new_id(), request_id=new_id(), answered_at=at + timedelta(seconds=5),
                          latency_ms=1.0, answer=answer, image=image, note="n")


def settings(root: Path, **kw: Any) -> CaptureSettings:
    return CaptureSettings(dir=root, monitor=kw.pop("monitor", f"t_age_{uuid.uuid4().hex[:8]}"), **kw)


def write(s: CaptureSettings, records: list[CapturedRecord]) -> Capture:
    """Write `records` with a real Capture, then date each new file at its answer time, as a writer
    keeping up with traffic would have (the tests answer in the past, the writer writes now)."""
    before = {p for p in s.dir.rglob("*") if p.is_file()}
    cap = Capture(s, CaptureMetrics(CollectorRegistry()), use_bentoml_config=False)
    for r in records:
        cap.offer(r)
    cap.start().close(timeout=30)
    stamp = max(r.answered_at for r in records).timestamp()
    for p in s.dir.rglob("*"):
        if p.is_file() and p not in before and ("blobs" in p.parts or "data" in p.parts):
            os.utime(p, (stamp, stamp))
    return cap


def blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs").rglob("*") if p.is_file()}


def digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_at_the_cap_the_oldest_landed_answers_make_room_and_the_new_one_is_written(tmp_path: Path) -> None:
    root, landing = tmp_path / "cap", tmp_path / "landing"
    old = [photo(i) for i in range(4)]
    s = settings(root)
    write(s, [rec(T1, img) for img in old])
    assert cb.capture_batch([root], landing, P1, monitor=s.monitor)["status"] == "written"
    assert aging.read_marker(root)[0] == P1.until
    full = folder_bytes(root)
    cap = Capture(settings(root, monitor=s.monitor, max_bytes=full + BIG // 2), CaptureMetrics(CollectorRegistry()),
                  use_bentoml_config=False).start()
    new = photo(99)
    cap.offer(rec(NOW, new))
    cap.close(timeout=30)
    assert cap.counts.totals()["written"] == 1 and cap.counts.totals()["store_full"] == 0
    assert digest(new) in blobs(root) and len(blobs(root) & {digest(b) for b in old}) < len(old)
    assert folder_bytes(root) <= full + BIG // 2
    assert cap.metrics.deleted.labels(reason="cap")._value.get() >= 1
    assert cap.status()["aging"]["deleted"]["cap"] >= 1


def test_unlanded_answers_survive_retention_and_the_cap_and_a_new_answer_is_dropped_counted(tmp_path: Path) -> None:
    root, landing = tmp_path / "cap", tmp_path / "landing"
    landed, unlanded = photo(1), [photo(2), photo(3)]
    s = settings(root)
    write(s, [rec(T1, landed)])
    write(s, [rec(T2, img) for img in unlanded])
    assert aging.Ager(root, 0.0, 0).age() is None   # no marker yet: nothing has landed, nothing goes
    cb.capture_batch([root], landing, P1, monitor=s.monitor)
    assert aging.read_marker(root)[0] == P1.until   # period 2 has answers and has not landed
    assert aging.Ager(root, 0.0, 0).age().deleted == 1  # retention 0 days: only the landed one goes
    assert blobs(root) == {digest(b) for b in unlanded}
    cap = Capture(settings(root, monitor=s.monitor, max_bytes=folder_bytes(root)), CaptureMetrics(CollectorRegistry()),
                  use_bentoml_config=False).start()
    cap.offer(rec(NOW, photo(4)))
    cap.close(timeout=30)
    assert blobs(root) == {digest(b) for b in unlanded}  # the cap took nothing unlanded ...
    assert cap.counts.totals()["store_full"] == 1        # ... and the new answer was dropped, counted
    assert cap.status()["reason"] == "store_full"


def test_landed_answers_go_once_past_the_retention_not_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, landing = tmp_path / "cap", tmp_path / "landing"
    s = settings(root)
    first, second = photo(1), photo(2)
    write(s, [rec(T1, first)])
    write(s, [rec(T2, second)])
    cb.capture_batch([root], landing, P1, monitor=s.monitor)
    cb.capture_batch([root], landing, P2, monitor=s.monitor)
    assert aging.read_marker(root)[0] == P2.until
    ager = aging.Ager(root, retention_days=2.5, max_bytes=0)
    assert ager.age(now=NOW).deleted == 1 and blobs(root) == {digest(second)}  # 3 days old goes, 2 days stays
    assert ager.age(now=NOW + timedelta(days=1)).deleted == 1 and not blobs(root)
    monkeypatch.setattr(aging, "SWEEP_S", 0.0)           # the running writer sweeps by itself
    write(s, [rec(T2 + timedelta(seconds=10), photo(3))])
    cap = Capture(settings(root, monitor=s.monitor, retention_days=0.0), CaptureMetrics(CollectorRegistry()),
                  use_bentoml_config=False)
    fresh = photo(4)
    cap.offer(rec(NOW, fresh))                           # answered now: not landed, kept
    cap.start().close(timeout=30)
    assert blobs(root) == {digest(fresh)}                # period 2's late photo went at the writer's sweep
    assert cap.metrics.deleted.labels(reason="retention")._value.get() == 1


@pytest.mark.parametrize("stage", ["judged", "aside"])
def test_a_blob_another_worker_reuses_during_a_sweep_is_never_lost(tmp_path: Path, stage: str) -> None:
    root, landing = tmp_path / "cap", tmp_path / "landing"
    shared = photo(1)
    s = settings(root)
    write(s, [rec(T1, shared)])
    cb.capture_batch([root], landing, P1, monitor=s.monitor)
    worker2 = BlobStore(root)

    def reuse(path: Path, at: str) -> None:  # worker 2 answers a new record with the same photo, right now
        if at == stage:
            worker2.put(shared)

    out = aging.sweep(root, aging.read_marker(root)[0], between=reuse)
    assert worker2.get(digest(shared)) == shared
    assert out.deleted == (0 if stage == "judged" else 1)  # put back; or the old copy went and worker 2 wrote anew
    assert not [p for p in root.rglob(".*.del-*")]       # nothing left aside
    later = aging.sweep(root, P1.until)                  # and the fresh reference keeps it past `through`
    assert later.deleted == 0 and worker2.get(digest(shared)) == shared


def test_the_marker_waits_for_a_skipped_period_and_a_queued_one_is_not_marked(tmp_path: Path) -> None:
    root, landing = tmp_path / "cap", tmp_path / "landing"
    s = settings(root)
    p3 = cb.make_period(T2 + timedelta(days=1), T2 + timedelta(days=1, minutes=1))
    for at in (T1, T2, p3.since):
        write(s, [rec(at, photo(1))])
    cb.capture_batch([root], landing, P1, monitor=s.monitor)
    cb.capture_batch([root], landing, p3, monitor=s.monitor)  # period 2 skipped (a failed run)
    assert aging.read_marker(root)[0] == P2.since + timedelta(seconds=5)  # its first answer holds it back
    assert aging.sweep(root, aging.read_marker(root)[0]).deleted == 1  # period 1's photo only
    cb.capture_batch([root], landing, P2, monitor=s.monitor)  # the backfill
    assert aging.read_marker(root)[0] == p3.until
    # the writer still holds an answer of a period the monitor tries to land: not landed, not marked
    queued = Capture(settings(root, monitor=s.monitor), CaptureMetrics(CollectorRegistry()), use_bentoml_config=False)
    p4 = cb.make_period(NOW - timedelta(minutes=2), NOW - timedelta(minutes=1))
    queued.offer(rec(p4.since, photo(4)))
    queued.counts.flush(NOW)
    with pytest.raises(cb.NotSettled):
        cb.capture_batch([root], landing, p4, monitor=s.monitor)
    assert aging.read_marker(root)[0] == p3.until
    queued.start().close(timeout=30)


def test_the_review_queue_reports_routed_answers_capture_deleted_before_review(tmp_path: Path) -> None:
    root, landing, labels = tmp_path / "cap", tmp_path / "landing", tmp_path / "labels"
    s = settings(root)
    write(s, [rec(T1, photo(i), "review", pid=f"old{i}") for i in range(3)] + [rec(T1, None, "auto")])
    log = root / "log" / s.monitor / "data" / "data.0.log"
    for handler in logging.getLogger(MONITOR_LOGGER).handlers:  # BentoML's daily rotation, now
        if getattr(handler, "baseFilename", None) == str(log):
            handler.doRollover()
    [rotated] = log.parent.glob("data.0.log.*")
    write(s, [rec(T1 + timedelta(seconds=20), photo(9), "review", pid="kept")])
    queue = ReviewQueue([root], labels, s.monitor)
    queue.answer("old0", "damaged", labeller="rev1")  # one was reviewed in time
    cb.capture_batch([root], landing, P1, monitor=s.monitor)
    out = aging.Ager(root, 0.0, 0).age()
    assert not rotated.exists() and sorted(out.review) == ["old0", "old1", "old2"]
    assert [r.prediction_id for r in queue.pending()] == ["kept"]
    assert queue.lost == {"deleted_before_review": 2, "blobs_missing": 1}  # kept's photo went with its landing


def test_the_monitor_reports_what_the_service_dropped(tmp_path: Path) -> None:
    root, landing = tmp_path / "cap", tmp_path / "landing"
    s = settings(root, max_bytes=1)                       # full from the start, nothing landed to delete
    cap = write(s, [rec(T1, photo(1)), rec(T1, photo(2))])
    assert cap.counts.totals()["store_full"] == 2
    summary = cb.capture_batch([root], landing, P1, monitor=s.monitor)
    assert summary["dropped"]["service"]["store_full"] == 2
    assert capture_losses(summary) == ["the service dropped 2 answer(s): {'store_full': 2}"]
    assert capture_losses({**summary, "dropped": {"service": {}, "capture": {}}}) == []


def test_an_unreadable_marker_deletes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cap"
    write(settings(root), [rec(T1, photo(1))])
    (root / aging.MARKER).write_text("{not json")
    assert aging.read_marker(root) == (None, [])
    assert aging.Ager(root, 0.0, 0).age() is None and aging.Ager(root, 0.0, 1).make_room(10**9) is None
    assert len(blobs(root)) == 1


minutes = st.integers(min_value=0, max_value=600)


@settings_(max_examples=300, deadline=None)
@given(spans=st.lists(st.tuples(minutes, st.integers(min_value=1, max_value=90)), max_size=6),
       answers=st.lists(minutes, max_size=30), old=st.one_of(st.none(), minutes))
def test_the_marker_never_passes_an_answer_no_landed_period_holds(spans: list[tuple[int, int]], answers: list[int],
                                                                   old: int | None) -> None:
    """The safety property the writers rely on: every captured answer before `through` is in a landed
    period (or before the old `through`), whatever order periods land in and wherever the gaps are."""
    at = [T1 + timedelta(minutes=m) for m in sorted(set(answers))]
    landed = [(T1 + timedelta(minutes=a), T1 + timedelta(minutes=a + n)) for a, n in spans]
    before = T1 + timedelta(minutes=old) if old is not None else None
    through = aging.landed_through(before, landed, at)
    if through is None:
        assert not landed and before is None
        return
    assert before is None or through >= before
    for s in at:
        if s < through:
            assert (before is not None and s < before) or any(a <= s < b for a, b in landed)


def test_at_the_cap_blobs_go_before_the_lines_live_quality_reads(tmp_path: Path) -> None:
    root, landing = tmp_path / "blobs" / "cap", tmp_path / "landing"   # a parent named like the blob folder
    s = settings(root)
    write(s, [rec(T1, photo(1))])
    log = root / "log" / s.monitor / "data" / "data.0.log"
    for handler in logging.getLogger(MONITOR_LOGGER).handlers:
        if getattr(handler, "baseFilename", None) == str(log):
            handler.doRollover()
    [rotated] = log.parent.glob("data.0.log.*")
    for blob in (root / "blobs").rglob("*"):               # the photo is younger than the log, still first
        if blob.is_file():
            os.utime(blob, (T1.timestamp() + 30, T1.timestamp() + 30))
    cb.capture_batch([root], landing, P1, monitor=s.monitor)
    out = aging.sweep(root, P1.until, target=folder_bytes(root) - 1)
    assert out.deleted == 1 and not blobs(root) and rotated.exists()
