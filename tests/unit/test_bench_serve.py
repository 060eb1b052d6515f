"""The serving benchmark's pure parts: batching settings derived from measured times, its records, and
the abuse part's requests and summary."""
from __future__ import annotations

import base64
import json

from mmcore.bench.abuse import requests, side_for, summarise
from mmcore.bench.serve import derive_batching, synthetic_records, to_mmcore
from mmcore.serving.limits import image_cost


def test_batch_size_is_where_time_per_record_stops_falling() -> None:
    # per record: 100, 60, 40, 30, 29, 28.5 ms: 8 is the first within 10% of the best (31.35 ms)
    times = {1: 100.0, 2: 120.0, 4: 160.0, 8: 240.0, 16: 464.0, 32: 912.0}
    got = derive_batching(times)
    assert got["max_batch_size"] == 8
    assert got["max_latency_ms"] == 38400  # 32 requests x 4 records x 30 ms x 10 headroom


def test_no_gain_from_batching_gives_the_smallest_allowed_batch() -> None:
    got = derive_batching({1: 50.0, 2: 100.0, 4: 200.0})
    assert got["max_batch_size"] == 2 and got["max_latency_ms"] == 60000  # 64 s, capped at the timeout


def test_synthetic_records_are_distinct_and_complete() -> None:
    recs = synthetic_records(5, seed=3)
    assert len({r["image"] for r in recs}) == len({r["note"] for r in recs}) == 5
    for r in recs:
        m = to_mmcore(r)
        assert m["image"] == base64.b64decode(r["image"]) and m["image"][:2] == b"\xff\xd8"
        assert len({len(v) for v in r["sensor"].values()}) == 1


def test_abuse_requests_fit_a_megabyte_and_sit_at_the_limits_they_name() -> None:
    """Small limits keep it fast; each body is within `max_bytes`, the at-budget ones within the budget
    by the service's own header check, the over-budget ones over it, and the record limit filled."""
    bodies = requests(budget_mp=2.0, image_mp=1.5, max_records=8, max_note=200, max_rows=50, max_bytes=200_000)
    assert all(len(b) <= 200_000 for b in bodies.values())
    assert {"palette_x2_at_budget", "palette_x2_over_budget", "deep_json", "small_images_at_record_limit"} <= set(bodies)

    def costs(name: str) -> float:
        return sum(image_cost(base64.b64decode(r["image"])).megapixels for r in json.loads(bodies[name])["records"])

    for name in ("palette_x2_at_budget", "palette_x16_at_budget", "rgba_png_x2_at_budget", "rgb_png_x2_at_budget"):
        assert 1.9 < costs(name) <= 2.0, name
    assert costs("palette_x2_over_budget") > 2.0
    assert len(json.loads(bodies["small_images_at_record_limit"])["records"]) == 8
    assert all(len(r["note"]) == 200 for r in json.loads(bodies["long_notes"])["records"])
    assert side_for(2.0, 2, 2) ** 2 * 2 * 2 <= 2e6 < (side_for(2.0, 2, 2) + 1) ** 2 * 2 * 2


def test_abuse_summary_names_the_worst_request_and_each_goal() -> None:
    run = {"requests": {"a": {"median_s": 0.4}, "b": {"median_s": 2.5}}, "healthz_ms": [5.0] * 99 + [300.0]}
    got = summarise(run)
    assert got["worst_request"] == "b" and got["max_request_seconds"] == 2.5
    assert got["goals"]["max_request_seconds"] == {"op": "<=", "limit": 2.0, "met": False}
    assert got["goals"]["healthz_p99_ms"]["met"] is (got["healthz_p99_ms"] <= 100)
