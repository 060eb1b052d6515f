"""Capacity sizing (mmcore/profile/capacity.py) on small fake reports.
Risks: needs that do not follow the load, a bottleneck that is the same whatever the scale, a
missing report turned into a number, a day of exhaustion off by the step of the scan."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from mmcore.profile import capacity as cap

MACHINE = {"cpus": 2, "platform": "test"}


def reports() -> dict[str, dict[str, Any]]:
    """Round per-record costs: 0.01 core-s to ingest, 0.001 to validate, 0.05 to serve, 10 KB on disk."""
    return {
        "ingest": {"records_per_s": 200.0, "workers": 2, "validation_rows_per_s": 1000.0, "machine": MACHINE,
                   "measured_at": "2026-12-01T00:00:00Z"},
        "train": {"strategy": "frozen", "samples_per_s": 2000.0, "torch_threads": 2, "device": "cpu (2 cores)",
                  "finetune": {"strategy": "top_k", "samples_per_s": 10.0},
                  "inference": {"records_per_s_b64": 20.0, "torch_threads": 1}, "measured_at": "2026-12-01T00:00:00Z"},
        "serve": {"served_rps_c32": 40.0, "machine": MACHINE, "measured_at": "2026-12-01T00:00:00Z"},
        "monitor": {"window_100k_seconds": 60.0, "read_only_seconds": 2.0,
                    "window": {"answers": 100_000, "labelled_answers": 50_000}, "capture_overhead_rps": 0.02,
                    "measured_at": {"window": "2026-12-01T00:00:00Z"}, "machine": MACHINE},
        "sizes": {"landing_bytes_per_record": 10_000.0, "raw_shard_bytes_per_record": 8_000.0,
                  "raw_profile_bytes_per_record": 300.0, "capture_bytes_per_answer": 12_000.0,
                  "ingest_rss_bytes_per_record": 20_000.0, "embedding_cache_bytes_per_record": 6_000.0,
                  "replica_rss_mb": 1000.0, "mlflow": None, "prefect": None,
                  "machine": {**MACHINE, "memory_bytes": 32e9, "disk_bytes": 500e9},
                  "measured_at": "2026-12-01T00:00:00Z"},
    }


def write(bench: Path, reps: dict[str, dict[str, Any]]) -> Path:
    bench.mkdir(parents=True, exist_ok=True)
    for name, rep in reps.items():
        (bench / f"{name}.json").write_text(json.dumps(rep))
    return bench


SCHEDULE = cap.Schedule(monitor_runs=24, retrains=1, flow_runs=169, window_s=3600, epochs=60, train_fraction=0.5,
                        lookback_days=30, drift_records=500, capture_sample=1.0, capture_max_bytes=10e9,
                        check_chunk=128, shard_size=1000)
NODE = {"cores": 2.0, "memory_b": 32e9, "disk_b": 500e9}


def sizing(figs: dict[str, cap.Figure], rate: float, a: cap.Assumptions | None = None) -> cap.Sizing:
    return cap.size(cap.Scale("s", rate, "test"), figs, SCHEDULE, a or cap.Assumptions(days=30), NODE)


def row(z: cap.Sizing, start: str) -> tuple[float | None, float | None, float | None]:
    n, d1, dn, yr = next(r for r in z.rows if r[0].what.startswith(start))
    return d1, dn, yr


@pytest.fixture
def figs(tmp_path: Path) -> dict[str, cap.Figure]:
    return cap.load_figures(write(tmp_path / "bench", reports()))


LINEAR = ("ingest as built", "ingest incremental", "validation", "training, frozen", "serving (one",
          "landing batches", "captured traffic", "data/raw workspace", "ingest as built: every accepted")


def test_per_record_costs_come_from_the_reports(figs: dict[str, cap.Figure]) -> None:
    assert figs["ingest_core_s"].value == pytest.approx(2 / 200)
    assert figs["serve_core_s"].value == pytest.approx(2 / 40 * 1.02)     # capture overhead counted in
    assert figs["monitor_judge_s"].value == pytest.approx(58 / 50_000)
    assert "ingest.json" in figs["ingest_core_s"].source


def test_needs_scale_linearly_with_records_a_day(figs: dict[str, cap.Figure]) -> None:
    one, two = sizing(figs, 100_000), sizing(figs, 200_000)
    for start in LINEAR:
        for a, b in zip(row(one, start), row(two, start)):
            assert a is not None and b == pytest.approx(2 * a), start


def test_a_rebuild_of_everything_grows_with_the_day_an_incremental_ingest_does_not(figs: dict[str, cap.Figure]) -> None:
    z = sizing(figs, 100_000)
    built, incremental = row(z, "ingest as built: data/raw"), row(z, "ingest incremental")
    assert built[1] == pytest.approx(30 * built[0])
    assert incremental[1] == pytest.approx(incremental[0])
    # 25 runs a day, each over every record kept: 25 x 100,000 x 0.01 core-s on day 1
    assert built[0] == pytest.approx(25 * 100_000 * 0.01 / 3600)


def test_what_runs_out_first_changes_between_the_scales(figs: dict[str, cap.Figure]) -> None:
    regional, national = sizing(figs, 250_000), sizing(figs, 30_000_000)
    assert regional.first is not None and national.first is not None
    assert national.first[0].key == "serving" and national.first[1] == 0
    assert regional.first[0].key != "serving"
    serving = next(day for lim, day, _ in regional.limits if lim.key == "serving")
    assert serving == math.inf      # 250,000 a day at 3 x peak is 8.7/s: one 2-core replica serves 39/s


def test_serving_is_not_first_when_a_replica_is_fast_enough(tmp_path: Path) -> None:
    reps = reports()
    reps["serve"]["served_rps_c32"] = 1e6
    national = sizing(cap.load_figures(write(tmp_path / "b", reps)), 30_000_000)
    assert national.first is not None and national.first[0].key != "serving"


def test_a_missing_report_is_not_measured_never_a_number(tmp_path: Path) -> None:
    reps = reports()
    del reps["serve"]
    bench = write(tmp_path / "b", reps)
    figs = cap.load_figures(bench)
    assert figs["serve_core_s"].value is None and "mmcore.bench serve" in figs["serve_core_s"].source
    z = sizing(figs, 30_000_000)
    assert row(z, "serving (one") == (None, None, None)
    assert next(day for lim, day, _ in z.limits if lim.key == "serving") is None
    assert z.first is not None and z.first[0].key != "serving"
    doc = cap.render([z.scale], [z], figs, SCHEDULE, cap.Assumptions(days=30), NODE, bench, "test")
    line = next(ln for ln in doc.splitlines() if "serving (one answer per record)" in ln)
    assert line.count(cap.NOT_MEASURED) == 3
    assert "`serve_core_s`" in doc.split("## Not measured")[1]


def test_gpu_hours_only_from_a_gpu_report(tmp_path: Path, figs: dict[str, cap.Figure]) -> None:
    assert figs["gpu_s"].value is None and "CUDA" in figs["gpu_s"].source
    assert row(sizing(figs, 250_000), "training, fine-tuning encoders on GPU") == (None, None, None)
    reps = reports()
    reps["train_gpu"] = {**reps["train"], "device": "NVIDIA H100", "finetune": {"strategy": "full", "samples_per_s": 4000.0}}
    gpu = cap.load_figures(write(tmp_path / "g", reps))["gpu_s"]
    assert gpu.value == pytest.approx(1 / 4000) and "H100" in gpu.source


def test_runs_out_on_the_right_day() -> None:
    def limit(need: Any, capacity: float) -> cap.Limit:
        return cap.Limit("k", "p", "bytes", need, capacity, "e", "c")

    assert cap.runs_out(limit(lambda d: 10 * d, 25), 30) == pytest.approx(2.5, abs=1 / 1440)
    assert cap.runs_out(limit(lambda d: 50.0, 25), 30) == 0
    assert cap.runs_out(limit(lambda d: 10 * d, 1e9), 30) == math.inf
    assert cap.runs_out(limit(lambda d: None, 25), 30) is None


@pytest.mark.parametrize("expr, runs", [("5 * * * *", 24), ("0 2 * * *", 1), ("*/15 * * * *", 96),
                                        ("0,30 1,13 * * *", 4)])
def test_cron_runs_per_day(expr: str, runs: int) -> None:
    assert cap.cron_runs_per_day(expr) == runs


def test_keep_share_that_fits_brings_the_retrain_under_the_window(figs: dict[str, cap.Figure]) -> None:
    a = cap.Assumptions(days=365)
    scale = cap.Scale("r", 250_000, "test")
    keep = cap.keep_share_that_fits(scale, figs, SCHEDULE, a, NODE)
    assert keep is not None and 0 < keep < 1
    z = cap.size(scale, figs, SCHEDULE, cap.Assumptions(days=365, keep_share=keep * 0.99), NODE)
    assert next(day for lim, day, _ in z.limits if lim.key == "retrain_time") == math.inf
