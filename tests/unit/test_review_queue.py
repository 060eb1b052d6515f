"""The review queue (mmcore/selective/review_queue.py) and its app's API (mmcore/selective/review.py).
Risks: a reviewed record shown again (to another reviewer, or after a restart), a label batch the
label feed refuses or joins to the wrong record, a bad request that writes something, and one broken
capture line taking the whole queue down."""
from __future__ import annotations

import io
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from mmcore.config import CLASSES
from mmcore.data.ingest import ready_batches
from mmcore.monitor.capture_batches import landing_record
from mmcore.monitor.labels import join_labels, read_label_batches
from mmcore.schema import RECORD_ID_RE
from mmcore.selective.review import create_app
from mmcore.selective.review_queue import (AlreadyLabelled, BadLabel, NotFound, ReviewQueue, record_view,
                                           review_batch_id)
from mmcore.serving.capture import Capture, CapturedRecord, CaptureMetrics, CaptureSettings
from mmcore.serving.capture_store import BlobStore

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
SENSOR = {"t_s": [0.0, 60.0, 120.0], "temperature_c": [4.0, 9.5, 4.2], "humidity_pct": [50.0, 51.0, 52.0],
          "shock_g": [0.1, 6.0, 0.2], "light_lux": [0.0, 0.0, 300.0]}
KEY = "test-key-1"
REVIEWERS = {"ana": KEY, "ben": "test-key-2"}
SERVICE_KEY = "service-key-1"


def jpeg(color: tuple[int, int, int] = (150, 120, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buf, format="JPEG")
    return buf.getvalue()


def served(pid: str, minute: int, decision: str = "review", reasons: tuple[str, ...] = ("set_size",),
           pset: tuple[str, ...] = ("damaged", "wet"), note: str | None = "box corner crushed, wet patch",
           image: bytes | None = None, sensor: dict[str, Any] | None = None) -> CapturedRecord:
    """One answered record as the service hands it to capture (answer keys as mmcore.serving.schemas.Prediction's)."""
    probs = dict(zip(CLASSES, (0.05, 0.45, 0.40, 0.04, 0.06)))
    answer = {"label": "damaged", "probabilities": probs, "modalities": ["image", "text", "sensor"],
              "model_version": "3", "prediction_set": list(pset), "decision": decision,
              "review_reason": list(reasons) if decision == "review" else []}
    return CapturedRecord(prediction_id=pid, request_id=uuid.uuid4().hex, answered_at=T0 + timedelta(minutes=minute),
                          latency_ms=12.0, answer=answer, record_id=f"r-{pid}", shipment_id=f"S-{pid}", hub="AMS04",
                          note=note, image=image, sensor=sensor)


def capture(root: Path, records: list[CapturedRecord]) -> str:
    """Write `records` through the real Capture (its writer thread and BentoML's monitor log) into
    `root`; returns the monitor name (one per call: BentoML keeps a monitor per name per process)."""
    settings = CaptureSettings(dir=root, monitor=f"t_review_{uuid.uuid4().hex[:8]}")
    cap = Capture(settings, CaptureMetrics(CollectorRegistry()), use_bentoml_config=False).start()
    for rec in records:
        cap.offer(rec)
    cap.close(timeout=10)
    assert cap.counts.totals()["written"] == len(records), cap.status()
    return settings.monitor


def log_file(root: Path, monitor: str) -> Path:
    return root / "log" / monitor / "data" / "data.0.log"


def write_labels(labels: Path, batch_id: str, lines: list[dict[str, Any]], success: bool = True) -> None:
    bdir = labels / batch_id
    bdir.mkdir(parents=True)
    (bdir / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if success:
        (bdir / "_SUCCESS").write_text("")


def ids(queue: ReviewQueue) -> list[str]:
    return [r.prediction_id for r in queue.pending()]


@pytest.fixture
def three(tmp_path: Path) -> tuple[ReviewQueue, str]:
    """Three routed answers logged out of answer order, one auto answer, one photo and one sensor trace."""
    monitor = capture(tmp_path / "cap", [served("p2", 2), served("p1", 1, image=jpeg(), sensor=SENSOR),
                                         served("auto1", 0, decision="auto"), served("p3", 3)])
    return ReviewQueue([tmp_path / "cap"], tmp_path / "labels", monitor), monitor


def test_queue_holds_review_answers_oldest_first_across_capture_folders(tmp_path: Path) -> None:
    monitor = capture(tmp_path / "a", [served("a5", 5), served("a1", 1), served("auto", 0, decision="auto")])
    # a second replica's folder under the same monitor name (BentoML writes one path per name per
    # process, so its log is written under another name and moved into place)
    other = capture(tmp_path / "b", [served("b3", 3)])
    log_file(tmp_path / "b", other).parent.parent.rename(tmp_path / "b" / "log" / monitor)
    queue = ReviewQueue([tmp_path / "a", tmp_path / "b"], tmp_path / "labels", monitor)
    assert ids(queue) == ["a1", "b3", "a5"]


def test_a_label_in_any_finished_batch_takes_the_record_out_for_everyone(three: tuple[ReviewQueue, str],
                                                                        tmp_path: Path) -> None:
    queue, monitor = three
    labels = tmp_path / "labels"
    assert ids(queue) == ["p1", "p2", "p3"]
    write_labels(labels, "inspection-1", [{"prediction_id": "p1", "label": "wet",
                                           "labelled_at": "2026-12-02T09:00:00+00:00", "source": "inspection"}])
    write_labels(labels, "claim-unfinished", [{"prediction_id": "p2", "label": "wet",
                                               "labelled_at": "2026-12-02T09:00:00+00:00", "source": "claim"}],
                 success=False)
    write_labels(labels, "claim-by-record", [{"record_id": "cap-p3", "label": "tampered",
                                             "labelled_at": "2026-12-02T09:00:00Z", "source": "claim"}])
    assert ids(queue) == ["p2"]                      # a batch without _SUCCESS is not read yet
    (labels / "claim-unfinished" / "_SUCCESS").write_text("")
    assert ids(queue) == []
    restarted = ReviewQueue([tmp_path / "cap"], labels, monitor)   # another reviewer's app, or a restart
    assert ids(restarted) == []


def test_an_invalid_label_line_does_not_take_the_record_out(three: tuple[ReviewQueue, str], tmp_path: Path) -> None:
    queue, _ = three
    write_labels(tmp_path / "labels", "bad", [{"prediction_id": "p1", "label": "squashed",
                                               "labelled_at": "2026-12-02T09:00:00+00:00", "source": "review"}])
    assert ids(queue) == ["p1", "p2", "p3"]


def test_a_poison_label_batch_is_read_line_by_line_and_next_never_fails(three: tuple[ReviewQueue, str],
                                                                         tmp_path: Path) -> None:
    """Issue 25: a labelled_at with no UTC time made /api/next answer 500. Every poison line is
    skipped as ingest quarantines it (p1 and p3 stay waiting); the good line beside them counts."""
    queue, _ = three
    line = {"prediction_id": "p1", "label": "wet", "source": "claim"}
    poison = [json.dumps({**line, "labelled_at": at}).encode() for at in
              ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "2099-01-01T00:00:00Z")]
    poison += [b"[" * 100_000 + b"]" * 100_000, b"1" * 5000, b"\xff\xfe",
               json.dumps({**line, "prediction_id": "p3", "labelled_at": "2026-12-02T09:00:00Z",
                           "pad": "x" * 1_100_000}).encode(),
               json.dumps({**line, "prediction_id": "p3\u0000", "labelled_at": "2026-12-02T09:00:00Z"}).encode()]
    good = json.dumps({**line, "prediction_id": "p2", "labelled_at": "2026-12-02T09:00:00Z"}).encode()
    bdir = tmp_path / "labels" / "poison"
    bdir.mkdir(parents=True)
    (bdir / "labels.jsonl").write_bytes(b"\n".join([*poison, good]) + b"\n")
    (bdir / "_SUCCESS").write_text("")
    client = TestClient(create_app(queue, REVIEWERS))
    head = client.get("/api/next", headers={"x-api-key": KEY})
    assert head.status_code == 200 and head.json()["waiting"] == 2 and head.json()["record"]["prediction_id"] == "p1"
    assert ids(queue) == ["p1", "p3"]


def test_skip_moves_a_record_to_the_back_and_writes_nothing(three: tuple[ReviewQueue, str], tmp_path: Path) -> None:
    queue, monitor = three
    queue.skip("p1")
    assert ids(queue) == ["p2", "p3", "p1"]
    queue.skip("p2")
    assert ids(queue) == ["p3", "p1", "p2"]
    queue.skip("p1")                                  # skipped again: to the back again
    assert ids(queue) == ["p3", "p2", "p1"]
    assert not (tmp_path / "labels").exists()
    assert ids(ReviewQueue([tmp_path / "cap"], tmp_path / "labels", monitor)) == ["p1", "p2", "p3"]
    with pytest.raises(NotFound):
        queue.skip("auto1")


def test_an_answer_is_a_label_batch_the_label_feed_joins_onto_the_captured_record(
        three: tuple[ReviewQueue, str], tmp_path: Path) -> None:
    queue, monitor = three
    labels = tmp_path / "labels"
    at = datetime(2026, 12, 2, 8, 30, 15, tzinfo=timezone.utc)
    batch_id = queue.answer("p1", " Wet ", now=at, labeller="ana")

    assert batch_id == "review-20261202T083015-p1" and RECORD_ID_RE.match(batch_id)
    assert sorted(p.name for p in labels.iterdir()) == [batch_id]      # no temp folder left behind
    assert json.loads((labels / batch_id / "labels.jsonl").read_text()) == {
        "prediction_id": "p1", "label": "wet", "labelled_at": "2026-12-02T08:30:15+00:00", "source": "review",
        "labeller": "ana"}
    assert ids(queue) == ["p2", "p3"]

    line = json.loads(log_file(tmp_path / "cap", monitor).read_text().splitlines()[1])
    rec, files = landing_record(line, BlobStore(tmp_path / "cap"))     # how the capture step lands it
    row = {**rec, "batch_id": "capture-20261201T100000Z-20261201T110000Z"}
    joined = join_labels([row], read_label_batches(ready_batches(labels)))
    assert joined.accounting_error() is None and joined.quarantined == []
    assert joined.columns["cap-p1"] == {"label": "wet", "label_source": "review",
                                        "labelled_at": "2026-12-02T08:30:15+00:00", "labeller": "ana",
                                        "label_batch": "review-20261202T083015-p1"}
    assert sorted(files) == ["images/cap-p1.jpg", "sensors/cap-p1.csv"]


def test_bad_answers_are_refused_and_write_nothing(three: tuple[ReviewQueue, str], tmp_path: Path) -> None:
    queue, _ = three
    with pytest.raises(BadLabel, match="not one of the classes"):
        queue.answer("p1", "squashed", labeller="ana")
    with pytest.raises(NotFound, match="no captured answer routed to review"):
        queue.answer("auto1", "normal", labeller="ana")             # answered without review: not in the queue
    with pytest.raises(NotFound):
        queue.answer("../p1", "normal", labeller="ana")
    assert not (tmp_path / "labels").exists()
    queue.answer("p1", "damaged", labeller="ana")
    with pytest.raises(AlreadyLabelled, match="already has a label"):
        queue.answer("p1", "wet", labeller="ana")
    assert len(list((tmp_path / "labels").iterdir())) == 1


def test_a_long_prediction_id_gets_a_batch_id_within_the_feed_rule() -> None:
    now = datetime(2026, 12, 2, 8, 30, 15, tzinfo=timezone.utc)
    a, b = review_batch_id("x" * 60 + "a", now), review_batch_id("x" * 60 + "b", now)
    assert len(a) == 64 and RECORD_ID_RE.match(a) and a != b
    assert review_batch_id("f" * 32, now) == "review-20261202T083015-" + "f" * 32


def test_unreadable_and_half_written_lines_are_skipped(three: tuple[ReviewQueue, str], tmp_path: Path) -> None:
    queue, monitor = three
    path = log_file(tmp_path / "cap", monitor)
    good = path.read_text().splitlines()[0]
    with path.open("a") as f:
        f.write('{"prediction_id": "broken", "answered_at": \n')        # cut by a crash
        f.write('{"prediction_id": "no-time", "decision": "review"}\n')
        f.write("[1, 2]\n")
        f.write(json.dumps({**json.loads(good), "prediction_id": "p9", "answered_at": "2026-12-01T09:00:00+00:00"}))
    assert ids(queue) == ["p1", "p2", "p3"] and queue.unreadable == 3    # p9 not whole yet
    with path.open("a") as f:
        f.write("\n")
    assert ids(queue) == ["p9", "p1", "p2", "p3"] and queue.unreadable == 3


def test_the_view_carries_what_a_reviewer_needs(three: tuple[ReviewQueue, str]) -> None:
    queue, _ = three
    view = record_view(queue.pending()[0])
    assert view["prediction_id"] == "p1" and view["has_image"] and view["sensor"]["shock_g"] == [0.1, 6.0, 0.2]
    assert view["prediction_set"] == ["damaged", "wet"] and view["review_reason"] == ["set_size"]
    assert [c for c, _ in view["probabilities"]] == ["damaged", "wet", "tampered", "normal", "temperature_excursion"]
    assert view["answered_at"] == "2026-12-01T10:01:00+00:00" and view["model_version"] == "3"


def test_api_needs_the_key_and_explains_bad_requests(three: tuple[ReviewQueue, str], tmp_path: Path) -> None:
    queue, _ = three
    client = TestClient(create_app(queue, REVIEWERS, SERVICE_KEY))
    assert client.get("/").status_code == 200                          # the page holds no data
    assert client.get("/api/next").status_code == 401
    assert client.get("/api/next", headers={"x-api-key": "old-key"}).status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    head = client.get("/api/next", headers=auth).json()
    assert head["record"]["prediction_id"] == "p1" and head["waiting"] == 3 and head["classes"] == list(CLASSES)

    photo = client.get("/api/records/p1/image", headers=auth)
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(photo.content)).size == (48, 32)
    assert client.get("/api/records/p2/image", headers=auth).status_code == 404     # sent without a photo

    post = lambda pid, body: client.post(f"/api/records/{pid}/label", content=body, headers=auth)  # noqa: E731
    bad = post("p1", b'{"label": ')
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    assert post("p1", b'["wet"]').status_code == 400
    unknown = post("p1", b'{"label": "squashed"}')
    assert unknown.status_code == 400 and "normal" in unknown.json()["error"]
    assert post("nobody", b'{"label": "wet"}').status_code == 404
    assert not (tmp_path / "labels").exists()

    service = client.post("/api/records/p1/label", content=b'{"label": "wet"}', headers={"x-api-key": SERVICE_KEY})
    assert service.status_code == 403 and "cannot label" in service.json()["error"]   # the service's key labels nothing
    assert client.get("/api/next", headers={"x-api-key": SERVICE_KEY}).status_code == 403
    assert not (tmp_path / "labels").exists()

    ok = post("p1", b'{"label": "wet"}')
    assert ok.status_code == 201 and ok.json()["batch_id"].endswith("-p1") and ok.json()["labeller"] == "ana"
    written = json.loads((tmp_path / "labels" / ok.json()["batch_id"] / "labels.jsonl").read_text())
    assert written["labeller"] == "ana"
    again = post("p1", b'{"label": "normal"}')
    assert again.status_code == 409 and "already has a label" in again.json()["error"]
    assert client.post("/api/records/p2/skip", headers=auth).json() == {"prediction_id": "p2", "skipped": True}
    assert client.get("/api/next", headers=auth).json()["record"]["prediction_id"] == "p3"
    assert client.get("/api/nowhere", headers=auth).status_code == 404
    by_ben = client.post("/api/records/p3/label", content=b'{"label": "tampered"}', headers={"x-api-key": "test-key-2"})
    written = json.loads((tmp_path / "labels" / by_ben.json()["batch_id"] / "labels.jsonl").read_text())
    assert written["labeller"] == "ben"


def test_an_open_review_app_warns_on_every_answer_and_records_anonymous(three: tuple[ReviewQueue, str],
                                                                        tmp_path: Path) -> None:
    client = TestClient(create_app(three[0], {}))
    head = client.get("/api/next")
    assert head.status_code == 200 and "open on purpose" in head.headers["x-auth-warning"]
    ok = client.post("/api/records/p1/label", content=b'{"label": "wet"}')
    assert ok.status_code == 201 and ok.json()["labeller"] == "anonymous"


def test_the_review_app_refuses_to_start_without_reviewer_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mmcore.selective.review import main

    for name in ("PARCEL_REVIEWER_KEYS", "PARCEL_REVIEWER_KEYS_FILE", "PARCEL_ALLOW_OPEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PARCEL_API_KEY", "service-key-1")      # the service's key is no reviewer key
    args = ["--capture", str(tmp_path / "cap"), "--labels", str(tmp_path / "labels")]
    with pytest.raises(SystemExit, match="PARCEL_REVIEWER_KEYS.*PARCEL_ALLOW_OPEN=1"):
        main(args)
    monkeypatch.setenv("PARCEL_REVIEWER_KEYS", "ana:service-key-1")
    with pytest.raises(SystemExit, match="reviewers need keys of their own"):
        main(args)
