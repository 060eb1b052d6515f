"""Capture of served traffic (mmcore/serving/capture.py): the bounded queue and its background writer.
Risks: a full queue or a broken store failing or slowing a request, drops that go uncounted, a
degraded capture that nobody can see, sampling that is not the configured share."""
from __future__ import annotations

import io
import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from mmcore.serving import capture as capture_mod
from mmcore.serving.capture import (Capture, CapturedRecord, CaptureMetrics, CaptureSettings, RequestInfo,
                                    new_id)
from mmcore.serving.capture_store import MONITOR_LOGGER, BlobStore


def jpeg(color: tuple[int, int, int] = (150, 120, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="JPEG")
    return buf.getvalue()


def answer(pid: str | None = None) -> dict[str, Any]:
    return {"prediction_id": pid or new_id(), "label": "damaged", "model_version": "3",
            "probabilities": {"normal": 0.25, "damaged": 0.75}, "modalities": ["image", "text"]}


def item(note: str = "dented", image: bytes | None = None, at: datetime | None = None, **kw: Any) -> CapturedRecord:
    return CapturedRecord(prediction_id=new_id(), request_id=new_id(), answered_at=at or datetime.now(timezone.utc),
                          latency_ms=1.0, answer=answer(), note=note, image=image, **kw)


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Capture]:
    """A Capture writing under tmp (a monitor name of its own: BentoML caches monitors by name)."""
    made: list[Capture] = []

    def build(start: bool = True, **over: Any) -> Capture:
        settings = CaptureSettings(**{"dir": tmp_path / "cap", "monitor": f"t_{uuid.uuid4().hex[:8]}", **over})
        cap = Capture(settings, CaptureMetrics(CollectorRegistry()), use_bentoml_config=False)
        made.append(cap)
        return cap.start() if start else cap

    yield build
    for cap in made:
        cap.close(timeout=5)


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def dropped(cap: Capture, reason: str) -> float:
    return cap.metrics.dropped.labels(reason=reason)._value.get()


def log_lines(cap: Capture) -> list[dict[str, Any]]:
    path = cap.settings.log_dir / cap.settings.monitor / "data" / "data.0.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_records_reach_the_monitor_log_with_their_blobs(make: Callable[..., Capture]) -> None:
    cap = make()
    img = jpeg()
    req = RequestInfo()
    sensor = {"t_s": None, "temperature_c": [4.0, 5.0], "humidity_pct": [50.0, 51.0], "shock_g": [0.1, 9.0],
              "light_lux": [0.0, 0.0]}
    for note in ("a", "b"):  # the same photo twice: one blob
        cap.offer_answer(req, {"note": note, "image": img, "sensor": sensor}, answer(),
                         {"record_id": "r1", "shipment_id": "S1", "hub": "AMS04"})
    cap.close()
    lines = log_lines(cap)
    assert [ln["note"] for ln in lines] == ["a", "b"]
    first = lines[0]
    assert first["x_request_id"] == req.request_id and first["hub"] == "AMS04" and first["shipment_id"] == "S1"
    assert first["p_damaged"] == 0.75 and first["modalities"] == "image,text" and first["model_version"] == "3"
    assert datetime.fromisoformat(first["answered_at"]).tzinfo is not None and first["latency_ms"] >= 0
    blobs = BlobStore(cap.settings.dir)
    assert blobs.get(first["image"]) == img and first["image"] == lines[1]["image"]
    assert json.loads(blobs.get(first["sensor"])) == sensor
    assert len([p for p in (cap.settings.dir / "blobs").rglob("*") if p.is_file()]) == 2
    counts = [json.loads(p.read_text()) for p in (cap.settings.dir / "counts").glob("*/*.json")]
    assert sum(c.get("written", 0) for f in counts for c in f["seconds"].values()) == 2
    assert cap.status()["capture"] == "ok" and cap.metrics.written._value.get() == 2


def test_full_queue_drops_counts_and_degrades_without_blocking(make: Callable[..., Capture]) -> None:
    cap = make(start=False, queue_records=2)
    t0 = time.monotonic()
    for _ in range(5):
        cap.offer(item())
    assert time.monotonic() - t0 < 0.5  # the request side never waits for the writer
    assert len(cap.queue) == 2 and dropped(cap, "queue_full") == 3
    status = cap.status()
    assert status["capture"] == "degraded" and status["reason"] == "queue_full"
    assert status["counts"]["answered"] == 5 and status["counts"]["queue_full"] == 3
    cap.start()
    cap.close()
    assert len(log_lines(cap)) == 2 and cap.counts.totals()["written"] == 2


def test_queue_bound_in_bytes(make: Callable[..., Capture]) -> None:
    cap = make(start=False, queue_bytes=10_000)
    big = jpeg() + b"\0" * 20_000
    cap.offer(item(image=big))   # alone it passes (a bound below one image would starve capture) ...
    cap.offer(item(image=big))   # ... a second one does not fit
    assert len(cap.queue) == 1 and dropped(cap, "queue_full") == 1


def test_unwritable_folder_drops_counts_degrades_and_recovers(tmp_path: Path, make: Callable[..., Capture],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture_mod, "PROBE_S", 0.1)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the capture folder's parent should be")  # unwritable even for root
    cap = make(dir=blocker / "cap")
    wait_for(lambda: cap.status()["capture"] == "degraded")
    assert cap.status()["reason"] == "write_error" and "not writable" in cap.status()["detail"]
    cap.offer_answer(RequestInfo(), {"note": "x", "image": jpeg(), "sensor": None}, answer(), {})
    wait_for(lambda: dropped(cap, "write_error") == 1)
    assert cap.counts.totals()["answered"] == 1 and cap.metrics.degraded._value.get() == 1
    blocker.unlink()
    blocker.mkdir()  # the operator fixes the volume: the next probe finds it writable
    wait_for(lambda: cap.status()["capture"] == "ok")
    cap.offer(item())
    wait_for(lambda: cap.counts.totals()["written"] == 1)


def test_full_store_drops_and_degrades(make: Callable[..., Capture]) -> None:
    cap = make(max_bytes=5_000)
    cap.offer(item(image=jpeg() + b"\0" * 10_000))
    wait_for(lambda: dropped(cap, "store_full") == 1)
    assert cap.status()["reason"] == "store_full"
    assert not (cap.settings.dir / "blobs").exists()


def test_a_log_handler_error_is_counted_not_swallowed(make: Callable[..., Capture]) -> None:
    import logging

    cap = make()
    cap.offer(item())
    wait_for(lambda: cap.counts.totals()["written"] == 1)

    class Broken:
        def write(self, _: str) -> None:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            pass

    for handler in logging.getLogger(MONITOR_LOGGER).handlers:
        handler.stream = Broken()  # type: ignore[attr-defined]
    cap.offer(item())
    wait_for(lambda: dropped(cap, "write_error") == 1)
    assert "No space left" in cap.status()["detail"]


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_sampling_keeps_the_configured_share_by_prediction_id(make: Callable[..., Capture], rate: float) -> None:
    cap = make(start=False, sample=rate, queue_records=10_000)
    items = [item() for _ in range(2000)]
    for it in items:
        cap.offer(it)
    out = cap.counts.totals()["sampled_out"]
    assert cap.metrics.sampled_out._value.get() == out and dropped(cap, "queue_full") == 0
    assert abs((2000 - out) / 2000 - rate) < 0.04 and len(cap.queue) == 2000 - out
    again = make(start=False, sample=rate, queue_records=10_000)
    for it in items:
        again.offer(it)
    assert again.counts.totals()["sampled_out"] == out  # decided by the id, not a coin per process


def test_close_counts_what_it_could_not_write(make: Callable[..., Capture]) -> None:
    cap = make(start=False)
    for _ in range(3):
        cap.offer(item())
    cap.close(timeout=0)
    assert dropped(cap, "shutdown") == 3
    files = list((cap.settings.dir / "counts").glob("*/*.json"))
    assert sum(c.get("shutdown", 0) for p in files for c in json.loads(p.read_text())["seconds"].values()) == 3


def test_settings_from_environment() -> None:
    s = CaptureSettings.from_env({"BENTOML_HOME": "/srv/bento"})
    assert s.dir == Path("/srv/bento/capture") and s.sample == 1.0 and s.queue_records == 1024
    assert s.monitoring_config() == {"enabled": True, "type": "default",
                                     "options": {"log_path": "/srv/bento/capture/log"}}
    s = CaptureSettings.from_env({"PARCEL_CAPTURE_DIR": "/c", "PARCEL_CAPTURE_SAMPLE": "0.25",
                                  "PARCEL_CAPTURE_QUEUE": "8", "PARCEL_CAPTURE_MAX_BYTES": "1000"})
    assert (s.dir, s.sample, s.queue_records, s.max_bytes) == (Path("/c"), 0.25, 8, 1000)
    for name, value in [("PARCEL_CAPTURE_SAMPLE", "1.5"), ("PARCEL_CAPTURE_QUEUE", "many")]:
        with pytest.raises(ValueError, match=name):
            CaptureSettings.from_env({name: value})


def test_middleware_request_ids_probe_headers_and_capturez(tmp_path: Path, make: Callable[..., Capture]) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from mmcore.serving.middleware import CaptureMiddleware, current_request

    async def predict(_: Request) -> JSONResponse:  # what parsing a record sees: the request's id
        return JSONResponse({"seen": current_request().request_id})

    async def readyz(_: Request) -> PlainTextResponse:
        return PlainTextResponse("\n")

    app = CaptureMiddleware(Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)]))
    client = TestClient(app)
    make()
    a, b = client.post("/predict"), client.post("/predict")
    assert a.json()["seen"] == a.headers["x-request-id"] != b.headers["x-request-id"]
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.headers["x-capture"] == "ok" and "x-capture-reason" not in ready.headers
    assert client.get("/capturez").json()["capture"] == "ok"
    (tmp_path / "blocker").write_text("")
    broken = make(dir=tmp_path / "blocker" / "cap")  # the service's capture is now this one
    wait_for(lambda: broken.status()["capture"] == "degraded")
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.headers["x-capture"] == "degraded"  # still in rotation
    assert ready.headers["x-capture-reason"] == "write_error"
    z = client.get("/capturez")
    assert z.status_code == 503 and z.json()["reason"] == "write_error"


def test_counts_of_an_hour_that_left_memory_still_add_up(tmp_path: Path) -> None:
    from datetime import timedelta

    from mmcore.serving.capture_store import CountBook, read_counts

    book, t0 = CountBook(tmp_path, "proc"), datetime(2026, 11, 30, 10, tzinfo=timezone.utc)
    book.add("2026-11-30T10:00:05Z", "answered")
    book.flush(datetime.now(timezone.utc))      # hours ago: leaves memory after the flush
    book.add("2026-11-30T10:00:05Z", "written")  # a late count of that hour
    book.flush(datetime.now(timezone.utc))
    assert read_counts([tmp_path], t0, t0 + timedelta(hours=1)) == {"answered": 1, "written": 1}
