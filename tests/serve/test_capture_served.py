"""Capture over HTTP (issue 13 items 1-2): every answer carries a prediction_id and the request's id,
the served records are on disk in the capture folder, and the capture step lands them as a batch
that ingest accepts whole; with an unwritable capture folder requests still answer 200, the drop
counter on /metrics rises and /readyz stays 200 while saying capture is degraded."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pandas as pd
import pytest

from mmcore.bench.serve import serving, synthetic_records
from mmcore.data.ingest import ingest
from tests.serve.conftest import AUTH, env_for

pytestmark = pytest.mark.slow
ID = re.compile(r"^[0-9a-f]{32}$")


def next_second() -> datetime:
    """Wait for the next whole second and return it: the period starts after earlier tests' traffic."""
    now = datetime.now(timezone.utc)
    start = now.replace(microsecond=0) + timedelta(seconds=1)
    time.sleep((start - now).total_seconds())
    return start


def read_log(data: Path) -> list[dict]:
    """Every captured line of the monitor's data folder (data.<worker>.log; BentoML counts workers from 1)."""
    return [json.loads(x) for path in sorted(data.glob("data.*.log*")) for x in path.read_text().splitlines()]


def dropped(url: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf'^parcel_capture_dropped_total{{[^}}]*reason="{reason}"[^}}]*}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def land_and_ingest(capture: Path, since: datetime, until: datetime, tmp_path: Path, ingest_cfg) -> pd.DataFrame:
    """The capture step's CLI for the period (once it has passed), then ingest: four records, all accepted."""
    time.sleep(max(0.0, (until - datetime.now(timezone.utc)).total_seconds()))
    landing = tmp_path / "landing"
    cmd = [sys.executable, "-m", "mmcore.monitor.capture_batches", "--capture", capture, "--landing", landing,
           "--since", since.isoformat(), "--until", until.isoformat(), "--wait", "20",
           "--report", tmp_path / "capture.json"]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "capture.json").read_text())
    assert (report["captured"], report["landed"], report["unaccounted"]) == (4, 4, 0)
    # one record sent hub, shipment and capture time, one (predict_file) its hub only, two nothing: counted
    assert report["without_context"] == {"shipment_id": 3, "hub": 2, "captured_at": 3, "none": 2}
    out = ingest(landing, tmp_path / "raw", tmp_path / "q", ingest_cfg, workers=1)
    assert (out["landed"], out["accepted"], out["quarantined"]) == (4, 4, 0)
    return pd.read_parquet(tmp_path / "raw" / "records.parquet").set_index("prediction_id")


def test_answers_are_captured_and_land_as_a_batch_ingest_accepts(serve_ws: Path, server: str, tmp_path: Path,
                                                                ingest_cfg) -> None:
    since = next_second()
    recs = synthetic_records(2, seed=11)
    recs[0].update(shipment_id="S-serve-1", hub="AMS04", captured_at="2026-11-30T09:58:00+01:00")
    body = {"records": [recs[0], {"note": "tape cut, box resealed"}, {"sensor": recs[1]["sensor"]}]}
    bad = httpx.post(f"{server}/predict", json={"records": [{"note": "ok"}, {"note": "x", "captured_at": "today"}]},
                     headers=AUTH, timeout=120)
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["records", 1, "captured_at"], bad.text
    resp = httpx.post(f"{server}/predict", json=body, headers=AUTH, timeout=120)
    assert resp.status_code == 200, resp.text
    preds = resp.json()
    assert ID.match(resp.headers["x-request-id"]) and all(ID.match(p["prediction_id"]) for p in preds)
    one = httpx.post(f"{server}/predict_file", files={"image": ("p.jpg", base64.b64decode(recs[1]["image"]))},
                     data={"note": "wet corner", "hub": "FRA05"}, headers=AUTH, timeout=120)
    assert one.status_code == 200, one.text
    pids = [p["prediction_id"] for p in preds] + [one.json()["prediction_id"]]
    assert len(set(pids)) == 4 and one.headers["x-request-id"] != resp.headers["x-request-id"]
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)

    capture = serve_ws / ".bentoml" / "capture"  # the default: $BENTOML_HOME/capture
    log = capture / "log" / "parcel_capture" / "data"
    deadline = time.monotonic() + 30
    while not set(pids) <= {ln["prediction_id"] for ln in read_log(log)}:
        assert time.monotonic() < deadline, "captured records not on disk after 30 s"
        time.sleep(0.2)
    lines = {ln["prediction_id"]: ln for ln in read_log(log)}
    first = lines[pids[0]]
    assert first["x_request_id"] == resp.headers["x-request-id"] and first["hub"] == "AMS04"
    assert (capture / "blobs" / "sha256" / first["image"][:2] / first["image"]).read_bytes() \
        == base64.b64decode(recs[0]["image"])
    assert lines[pids[3]]["x_request_id"] == one.headers["x-request-id"] and lines[pids[3]]["note"] == "wet corner"
    for p in preds:   # the routing is captured as answered: the review queue reads it from here
        line = lines[p["prediction_id"]]
        assert line["decision"] == p["decision"] and line["prediction_set"] == ",".join(p["prediction_set"])
        assert line["review_reason"] == ",".join(p["review_reason"])
    ready = httpx.get(f"{server}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.headers["x-capture"] == "ok"

    raw = land_and_ingest(capture, since, until, tmp_path, ingest_cfg)
    assert set(raw.index) == set(pids) and raw.loc[pids[0], "shipment_id"] == "S-serve-1"
    assert raw.loc[pids[0], "captured_at"] == "2026-11-30T08:58:00+00:00"     # the client's time, in UTC
    assert raw.loc[pids[3], "hub"] == "FRA05" and raw.loc[pids[1], "hub"] == "unknown"


def test_unwritable_capture_folder_never_fails_a_request(serve_ws: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the capture folder's parent should be")  # unwritable, root or not
    # a home of its own: servers on one BENTOML_HOME share (and on start wipe) its Prometheus folder, which
    # emptied the session server's /metrics for the tests after this one
    home = tmp_path / "bentoml-home"
    shutil.copytree(serve_ws / ".bentoml", home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir", "capture"))
    env = env_for(serve_ws, PARCEL_CAPTURE_DIR=str(blocker / "capture"), BENTOML_HOME=str(home))
    with serving("parcel-condition:v1", serve_ws, env, tmp_path / "server.log") as url:
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200  # capture never takes the service out of rotation
        before = dropped(url, "write_error")
        for i in range(3):
            resp = httpx.post(f"{url}/predict", json={"records": [{"note": f"crushed {i}"}, {"note": "ok"}]},
                              headers=AUTH, timeout=120)
            assert resp.status_code == 200, resp.text
            assert len(resp.json()) == 2 and "x-request-id" in resp.headers
        deadline = time.monotonic() + 20
        while dropped(url, "write_error") < before + 6:
            assert time.monotonic() < deadline, httpx.get(f"{url}/metrics", timeout=10).text[-3000:]
            time.sleep(0.2)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.headers["x-capture"] == "degraded"
        assert ready.headers["x-capture-reason"] == "write_error"
        status = httpx.get(f"{url}/capturez", timeout=10)
        assert status.status_code == 503 and status.json()["counts"]["write_error"] >= 6
