"""Closed by default, on a real `bentoml serve`: a bento started without a key stops before any worker
starts and says what to set; a running one takes only the service's key on /predict, refuses a
reviewer's key with a 403 that says what it is for, and keeps its probes open."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from mmcore.bench.serve import free_port
from tests.serve.conftest import API_KEY, AUTH, REVIEWER_KEY, env_for

BODY = {"records": [{"note": "corner crushed"}]}


def test_a_bento_without_a_key_refuses_to_start_and_says_what_to_set(serve_ws: Path) -> None:
    env = env_for(serve_ws)
    del env["PARCEL_API_KEY"]
    cmd = [Path(sys.executable).parent / "bentoml", "serve", "parcel-condition:v1", "--host", "127.0.0.1",
           "--port", str(free_port())]
    proc = subprocess.run([str(c) for c in cmd], cwd=serve_ws, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "refuses to start without a key: set PARCEL_API_KEY, or PARCEL_ALLOW_OPEN=1" in proc.stderr + proc.stdout


def test_predict_takes_the_service_key_only(server: str) -> None:
    assert httpx.post(f"{server}/predict", json=BODY, headers=AUTH, timeout=120).status_code == 200
    assert httpx.post(f"{server}/predict", json=BODY, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=120).status_code == 200
    missing = httpx.post(f"{server}/predict", json=BODY, timeout=30)
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]
    reviewer = httpx.post(f"{server}/predict", json=BODY, headers={"x-api-key": REVIEWER_KEY}, timeout=30)
    assert reviewer.status_code == 403 and "reviewer key" in reviewer.json()["error"]
    file_call = httpx.post(f"{server}/predict_file", files={"image": b"x"}, headers={"x-api-key": REVIEWER_KEY},
                           timeout=30)
    assert file_call.status_code == 403
    ready = httpx.get(f"{server}/readyz", timeout=10)
    assert ready.status_code == 200 and "x-auth-warning" not in ready.headers    # closed: nothing to warn about
