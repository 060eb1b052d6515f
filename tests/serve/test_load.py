"""Load: locust, headless, 32 concurrent users for 20 s against the bento on loopback; zero errors.

20 s is long enough for every user to be answered many times over at that concurrency, which is the claim;
sustained throughput over a longer run is the serve benchmark's (`make bench`, reports/bench/serve.json)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.conftest import API_KEY

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent


def test_concurrency_32_for_20s_without_errors(server: str, tmp_path: Path) -> None:
    cmd = [Path(sys.executable).parent / "locust", "-f", HERE / "locustfile.py", "--headless", "--host", server,
           "--users", "32", "--spawn-rate", "32", "--run-time", "20s", "--stop-timeout", "60",
           "--csv", tmp_path / "load", "--only-summary", "--exit-code-on-error", "1", "--loglevel", "WARNING"]
    proc = subprocess.run([str(c) for c in cmd], cwd=HERE.parents[1], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PARCEL_API_KEY": API_KEY})
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "load_stats.csv").open())}
    total = rows["Aggregated"]
    failures = (tmp_path / "load_failures.csv").read_text()
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}\n{failures}"
    assert int(total["Failure Count"]) == 0, failures
    assert int(total["Request Count"]) >= 32, total  # every user got answers
