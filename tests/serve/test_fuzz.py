"""Fuzz: schemathesis generates at least 500 requests from the service's own OpenAPI schema
(valid and invalid bodies for /predict, /predict_file, /labels); no answer may be a 5xx."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_generated_requests_never_get_a_5xx(server: str, tmp_path: Path) -> None:
    report = tmp_path / "events.ndjson"
    cmd = [Path(sys.executable).parent / "schemathesis", "run", f"{server}/docs.json",
           "--checks", "not_a_server_error", "--max-examples", "160", "--seed", "20261123",
           "--phases", "examples,coverage,fuzzing", "--workers", "2", "--request-timeout", "120",
           "--no-color", "--report", "ndjson", "--report-ndjson-path", report,
           "--generation-database", "none"]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    statuses = []
    for line in report.read_text().splitlines():
        event = json.loads(line)
        for step in event.get("ScenarioFinished", {}).get("recorder", {}).get("interactions", {}).values():
            if step.get("response"):
                statuses.append(step["response"]["status_code"])
    assert len(statuses) >= 500, (len(statuses), proc.stdout[-3000:])
    assert not [s for s in statuses if s >= 500]
