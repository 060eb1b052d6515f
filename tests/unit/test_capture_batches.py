"""The capture step (mmcore/monitor/capture_batches.py): captured traffic of a period becomes an ordinary
landing batch. Risks: served records that ingest refuses, a prediction_id lost on the way, records
that vanish between the service and the landing area unnoticed, a batch written twice or half."""
from __future__ import annotations

import io
import json
import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from mmcore.data.ingest import ingest
from mmcore.monitor import capture_batches as cb
from mmcore.serving.capture import Capture, CapturedRecord, CaptureMetrics, CaptureSettings, new_id

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=timezone.utc)
PERIOD = cb.make_period(T0, T0 + timedelta(minutes=1))
TRACE = [4.0 + 0.01 * i for i in range(40)]


def image(fmt: str = "JPEG", color: tuple[int, int, int] = (150, 120, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buf, format=fmt)
    return buf.getvalue()


def sensor(t_s: list[float] | None = None) -> dict[str, Any]:
    return {"t_s": t_s, "temperature_c": TRACE, "humidity_pct": TRACE, "shock_g": TRACE, "light_lux": TRACE}


def rec(second: int, **kw: Any) -> CapturedRecord:
    answer = {"label": "normal", "probabilities": {"normal": 0.9, "wet": 0.1}, "modalities": ["text"],
              "model_version": "1"}
    return CapturedRecord(prediction_id=new_id(), request_id=kw.pop("request_id", new_id()),
                          answered_at=T0 + timedelta(seconds=second, microseconds=1234), latency_ms=5.0,
                          answer=answer, **kw)


def captured(root: Path, records: list[CapturedRecord], queue_records: int = 1024) -> tuple[CaptureSettings, Capture]:
    """Offer `records` (answered in the past: the period is over) and write them all."""
    settings = CaptureSettings(dir=root, monitor=f"t_{uuid.uuid4().hex[:8]}", queue_records=queue_records)
    cap = Capture(settings, CaptureMetrics(CollectorRegistry()), use_bentoml_config=False)
    for r in records:
        cap.offer(r)
    cap.start().close(timeout=30)
    return settings, cap


def land(settings: CaptureSettings, landing: Path, **kw: Any) -> dict[str, Any]:
    return cb.capture_batch([settings.dir], landing, PERIOD, monitor=settings.monitor, **kw)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mixed() -> list[CapturedRecord]:
    req = new_id()
    return [rec(1, note="corner crushed", image=image(), sensor=sensor(), shipment_id="S-77", hub="AMS04",
                captured_at="2026-11-30T09:58:00+00:00", request_id=req),
            rec(2, image=image("PNG"), request_id=req),                        # no shipment: per request
            rec(3, note="wet box", sensor=sensor([float(i) * 30 for i in range(40)])),  # t_s as sent
            rec(4, note="tape cut", record_id="client-7"),
            rec(59, note="last second of the period"), rec(60, note="next period"), rec(-1, note="last period")]


def test_a_captured_period_becomes_a_batch_that_ingest_accepts_whole(tmp_path: Path, ingest_cfg) -> None:
    records = mixed()
    settings, _ = captured(tmp_path / "cap", records)
    summary = land(settings, tmp_path / "landing")
    assert summary["status"] == "written" and summary["batch_id"] == "capture-20261130T100000Z-20261130T100100Z"
    assert summary["landed"] == summary["captured"] == 5 and summary["unaccounted"] == 0
    bdir = tmp_path / "landing" / summary["batch_id"]
    lines = [json.loads(x) for x in (bdir / "records.jsonl").read_text().splitlines()]
    assert [ln["prediction_id"] for ln in lines] == [r.prediction_id for r in records[:5]]
    first, second = lines[0], lines[1]
    assert first["record_id"] == f"cap-{records[0].prediction_id}" and first["label"] is None
    assert (first["shipment_id"], first["hub"]) == ("S-77", "AMS04")
    assert second["shipment_id"] == f"req-{records[1].request_id}" and second["hub"] == "unknown"
    assert second["image"].endswith(".png") and first["image"].endswith(".jpg")
    assert first["captured_at"] == "2026-11-30T09:58:00+00:00"       # the client's, kept
    assert second["captured_at"] == "2026-11-30T10:00:02.001234+00:00"   # none sent: the answer time, counted
    assert summary["without_context"] == {"shipment_id": 4, "hub": 4, "captured_at": 4, "none": 4}
    csv = (bdir / first["sensor"]).read_text().splitlines()
    assert csv[0] == "t_s,temperature_c,humidity_pct,shock_g,light_lux" and csv[2].startswith("60.0,")
    assert (bdir / lines[2]["sensor"]).read_text().splitlines()[2].startswith("30.0,")
    assert (bdir / first["image"]).read_bytes() == records[0].image
    assert sorted(p.name for p in bdir.iterdir())[-1] == "sensors" and (bdir / "_SUCCESS").is_file()

    out = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg, workers=1)
    assert (out["landed"], out["accepted"], out["quarantined"]) == (5, 5, 0)
    raw = pd.read_parquet(tmp_path / "raw" / "records.parquet").set_index("record_id")
    assert set(raw["prediction_id"]) == {r.prediction_id for r in records[:5]}
    assert raw["label"].isna().all() and raw.loc[first["record_id"], "has_sensor"]


def test_accounting_adds_service_and_capture_drops(tmp_path: Path) -> None:
    records = [rec(i, note=f"n{i}", image=image(color=(i, 2 * i, 90))) for i in range(1, 6)]
    settings, cap = captured(tmp_path / "cap", records, queue_records=3)  # 2 of 5 find the queue full
    log = settings.log_dir / settings.monitor / "data" / "data.0.log"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    (settings.dir / "blobs" / "sha256" / lines[0]["image"][:2] / lines[0]["image"]).unlink()
    summary = land(settings, tmp_path / "landing")
    assert summary["captured"] == 5 and summary["landed"] == 2
    assert summary["dropped"]["service"]["queue_full"] == 2 and summary["dropped"]["capture"]["blob_missing"] == 1
    assert summary["captured"] == summary["landed"] + sum(summary["dropped"]["service"].values()) \
        + sum(summary["dropped"]["capture"].values())


def test_idempotent_same_period_same_bytes_never_rewritten(tmp_path: Path) -> None:
    settings, _ = captured(tmp_path / "cap", mixed())
    a, b = land(settings, tmp_path / "a"), land(settings, tmp_path / "b")
    assert a["batch_id"] == b["batch_id"] and tree(tmp_path / "a") == tree(tmp_path / "b")
    records = tmp_path / "a" / a["batch_id"] / "records.jsonl"
    before = records.stat().st_mtime_ns
    assert land(settings, tmp_path / "a")["status"] == "exists" and records.stat().st_mtime_ns == before


def test_leftovers_of_a_crashed_run_are_rebuilt(tmp_path: Path) -> None:
    settings, _ = captured(tmp_path / "cap", mixed())
    landing = tmp_path / "landing"
    (landing / f".{PERIOD.batch_id}.tmp-99999" / "images").mkdir(parents=True)   # crashed while building
    (landing / PERIOD.batch_id).mkdir()                                          # crashed before _SUCCESS
    (landing / PERIOD.batch_id / "records.jsonl").write_text("half\n")
    assert land(settings, landing)["status"] == "written"
    assert [p.name for p in landing.iterdir()] == [PERIOD.batch_id]
    assert len((landing / PERIOD.batch_id / "records.jsonl").read_text().splitlines()) == 5


def test_a_period_that_has_not_settled_is_refused(tmp_path: Path) -> None:
    settings = CaptureSettings(dir=tmp_path / "cap", monitor=f"t_{uuid.uuid4().hex[:8]}")
    cap = Capture(settings, CaptureMetrics(CollectorRegistry()), use_bentoml_config=False)
    for i in range(3):
        cap.offer(rec(i + 1, note="queued"))      # answered and counted, not written yet
    cap.counts.flush(datetime.now(timezone.utc))
    with pytest.raises(cb.NotSettled, match="3 answered record"):
        land(settings, tmp_path / "landing")
    with pytest.raises(cb.NotSettled, match="not passed"):
        cb.capture_batch([settings.dir], tmp_path / "landing", PERIOD, now=T0 + timedelta(seconds=30))
    lossy = land(settings, tmp_path / "landing", accept_loss=True)   # after a crash: land what is there
    assert lossy["status"] == "empty" and lossy["unaccounted"] == 3 and not (tmp_path / "landing").exists()
    cap.start().close()
    assert land(settings, tmp_path / "landing")["landed"] == 3


def test_cli(tmp_path: Path) -> None:
    settings, _ = captured(tmp_path / "cap", mixed())
    args = ["--capture", str(settings.dir), "--landing", str(tmp_path / "landing"), "--monitor", settings.monitor,
            "--since", "2026-11-30T11:00:00+01:00", "--until", "2026-11-30T10:01:00Z",
            "--report", str(tmp_path / "report.json")]
    assert cb.main(args) == 0
    assert json.loads((tmp_path / "report.json").read_text())["landed"] == 5
    assert cb.main([*args[:-2], "--until", "2099-01-01T00:00:00Z"]) == 3   # not over yet: nothing written
    with pytest.raises(ValueError, match="timezone"):
        cb.parse_time("2026-11-30T10:00:00")
    with pytest.raises(ValueError, match="whole second"):
        cb.parse_time("2026-11-30T10:00:00.5Z")
    assert os.listdir(tmp_path / "landing") == [PERIOD.batch_id]


@pytest.mark.parametrize("pid, req", [("p1\n", "r1"), ("p1", "r1\n"), ("p/1", "r1"), ("p" * 61, "r1")])
def test_a_captured_line_with_an_id_outside_the_rule_cannot_land(pid: str, req: str, tmp_path: Path) -> None:
    """Ids become file names and record ids: a final newline ("$" matched before it) is outside the rule too."""
    line = {"prediction_id": pid, "x_request_id": req, "answered_at": "2026-12-01T10:00:00+00:00", "note": "wet"}
    assert cb.landing_record(line, cb.BlobStore(tmp_path)) == "bad_record"


def test_captured_context_lands_and_the_gate_sees_the_hub(tmp_path: Path, ingest_cfg) -> None:
    """Hub, shipment and capture time sent with /predict reach data/raw, the split by shipment and the
    gate set's hub slices; a record sent without them is counted, and lands as hub `unknown`."""
    from mmcore.config import SplitConfig
    from mmcore.data.split import split_run
    from mmcore.stages.evaluate import gate_set
    from tests.unit.test_labels import lab, write_labels

    records = [rec(i + 1, image=image(color=(40 * i, 90, 120)), note=f"box {i}", shipment_id=f"S-{i // 2}",
                   hub="AMS04" if i % 2 else "FRA05", captured_at=f"2026-11-30T0{i}:00:00+01:00") for i in range(4)]
    records.append(rec(9, image=image(color=(250, 10, 10)), note="no context"))
    settings, _ = captured(tmp_path / "cap", records)
    summary = land(settings, tmp_path / "landing")
    assert summary["landed"] == 5 and summary["without_context"] == {"shipment_id": 1, "hub": 1, "captured_at": 1,
                                                                     "none": 1}
    write_labels(tmp_path / "labels", "inspections", [lab("wet", source="inspection", prediction_id=r.prediction_id)
                                                      for r in records])
    ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg, workers=1, labels=tmp_path / "labels")
    raw = pd.read_parquet(tmp_path / "raw" / "records.parquet").set_index("prediction_id")
    utc = ["2026-11-29T23:00:00+00:00", "2026-11-30T00:00:00+00:00", "2026-11-30T01:00:00+00:00",
           "2026-11-30T02:00:00+00:00"]
    for i, r in enumerate(records[:4]):
        assert raw.loc[r.prediction_id, ["shipment_id", "hub", "captured_at"]].tolist() == [f"S-{i // 2}", r.hub, utc[i]]
    assert raw.loc[records[4].prediction_id, "hub"] == "unknown"

    everything_gates = SplitConfig(val_fraction=0.0, test_fraction=1.0, calib_fraction=0.0, salt="ctx")
    split_run(tmp_path / "raw", tmp_path / "split" / "splits.parquet", everything_gates)
    gate = gate_set(tmp_path / "raw", tmp_path / "split" / "splits.parquet")
    assert {k: int(v.sum()) for k, v in gate.groups.items() if k.startswith("hub=")} == {
        "hub=AMS04": 2, "hub=FRA05": 2, "hub=unknown": 1}
    assert set(gate.shipments) == {"S-0", "S-1", f"req-{records[4].request_id}"}
