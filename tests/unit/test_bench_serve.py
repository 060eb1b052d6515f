"""The serving benchmark's pure parts: batching settings derived from measured times, and its records."""
from __future__ import annotations

import base64

from mmcore.bench.serve import derive_batching, synthetic_records, to_mmcore


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
