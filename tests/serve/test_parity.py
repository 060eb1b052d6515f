"""Parity: what the service answers equals `mmcore.predict` on the same records (1e-5), also when
adaptive batching merges concurrent requests into one model call."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mmcore.bench_serve import synthetic_records, to_mmcore
from mmcore.config import CLASSES

pytestmark = pytest.mark.slow


def merged_batches(url: str) -> tuple[float, float]:
    """(model calls, of which with more than one request merged) from BentoML's batch-size histogram."""
    calls = single = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if 'method_name="predict"' not in line:
            continue
        if line.startswith("bentoml_service_adaptive_batch_size_count{"):
            calls += float(line.rsplit(" ", 1)[1])
        elif line.startswith("bentoml_service_adaptive_batch_size_bucket{") and 'le="1.0"' in line:
            single += float(line.rsplit(" ", 1)[1])
    return calls, calls - single


def test_served_probabilities_equal_mmcore_predict_under_batching(serve_ws: Path, server: str) -> None:
    from mmcore.predict import load_model

    records = synthetic_records(24, seed=3)
    for i, rec in enumerate(records):  # every pattern of missing modalities
        if i % 4 == 1:
            rec.pop("image")
        elif i % 4 == 2:
            rec["note"] = None
        elif i % 4 == 3:
            rec.pop("sensor")
    local = load_model(serve_ws / "models" / "v1").predict([to_mmcore(r) for r in records])
    bodies = [{"records": [r]} for r in records] + [{"records": records[:5]}]

    def post(body: dict) -> list[dict]:
        resp = httpx.post(f"{server}/predict", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        return resp.json()

    before = merged_batches(server)
    for _ in range(10):  # bounded: until the dispatcher has merged requests (its first ~30 calls train it)
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, bodies))
        served = [a[0] for a in answers[:-1]] + answers[-1]
        expected = local + local[:5]
        for got, want in zip(served, expected, strict=True):
            assert got["label"] == want["label"] and got["modalities"] == want["modalities"]
            for c in CLASSES:
                assert abs(got["probabilities"][c] - want["probabilities"][c]) < 1e-5, (c, got, want)
        if merged_batches(server)[1] > before[1]:
            break
    assert merged_batches(server)[1] > before[1], "no model call merged two requests"
