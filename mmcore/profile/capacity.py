"""Capacity on paper, from measurement: the system sized at a regional and a national scale.

    python -m mmcore.profile.capacity --out docs/capacity.md
    python -m mmcore.profile.capacity --measure sizes,ingest,train,serve,monitor --quick --out docs/capacity.md

Why a program and not a page: every figure in docs/capacity.md must be one someone can rerun. The
per-record costs come from the benchmark reports (reports/bench/{ingest,serve,train,monitor}.json,
whichever exist) and from measured sizes (reports/bench/sizes.json: bytes a record takes when it
lands, in data/raw, in the capture store and in the embedding cache; memory an ingest run takes per
record and one serving replica takes). The schedule comes from prefect.yaml and params.yaml, the
rest from named assumptions (CLI options, printed in the document). `--measure` runs the listed
measurements first and records their command lines and wall times (reports/bench/provenance.json).

The arithmetic is plain: a need per day is records/day times a per-record cost; parts that rework
everything kept so far (ingest rebuilds data/raw from every landing batch; the monitor rereads its
lookback) grow with the day, and each part's need is compared with one node (the benchmark machine)
to find the day it runs out. A figure that is not measured stays "not measured", never a guess.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import math
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path("reports/bench")
HOUR, DAY = 3600.0, 86400.0
GB = 1e9
NOT_MEASURED = "not measured"
# What each benchmark report holds is written by its module; these are the commands that write them
# (full and short settings). `--quick` keeps runs short on a shared 2-core machine.
BENCH_COMMANDS: dict[str, tuple[list[str], list[str]]] = {
    "ingest": (["-m", "mmcore.bench", "ingest", "--records", "3000"],
               ["-m", "mmcore.bench", "ingest", "--records", "1000"]),
    "train": (["-m", "mmcore.bench", "train"],
              ["-m", "mmcore.bench", "train", "--records", "300", "--epochs", "5", "--finetune-records", "32"]),
    "serve": (["-m", "mmcore.bench", "serve", "--seconds", "20"],
              ["-m", "mmcore.bench", "serve", "--seconds", "3", "--c1-requests", "12", "--sizes", "1,8,32"]),
    "monitor": (["-m", "mmcore.bench", "monitor"],
                ["-m", "mmcore.bench", "monitor", "--parts", "window"]),
}
GPU_COMMAND = "python -m mmcore.bench train --finetune-strategy full --out reports/bench/train_gpu.json"


# --------------------------------------------------------------------------- figures and their sources
@dataclass(frozen=True)
class Figure:
    """A per-record figure and the report field it came from; value None means not measured, and
    `source` then says which command would measure it (so no gap is ever filled by hand)."""

    value: float | None
    unit: str
    source: str


@dataclass(frozen=True)
class Assumptions:
    """What no benchmark can measure: the business side of the load. Each is a CLI option."""

    peak_factor: float = 3.0        # busiest hour's rate over the day's mean rate
    labelled_share: float = 0.05    # records that ever get a label (inspection, claim, review)
    keep_share: float = 1.0         # labelled records kept for training (1 = all, as built)
    days: int = 365                 # the horizon: a year
    train_window_h: float = 6.0     # the nightly retrain (validate, embed, train) must end within this
    node_cores: float | None = None   # one node; None = the benchmark machine's
    node_memory_gb: float | None = None
    node_disk_gb: float | None = None


@dataclass(frozen=True)
class Schedule:
    """How often things run and on how much, read from prefect.yaml, params.yaml and the code's
    defaults: the capacity of a design depends on these as much as on per-record costs."""

    monitor_runs: float             # monitor windows a day; each one runs `dvc repro ingest`
    retrains: float                 # scheduled retrains a day (nightly)
    flow_runs: float                # Prefect flow runs a day, all scheduled deployments
    window_s: float                 # monitor.window_minutes in seconds: an ingest run must fit in it
    epochs: int                     # train.epochs (an upper bound: early stopping may end sooner)
    train_fraction: float           # share of labelled records in the train split
    lookback_days: float            # monitor.lookback_days: the monitor rereads this much capture log
    drift_records: int              # monitor.drift_records embedded per window
    capture_sample: float           # PARCEL_CAPTURE_SAMPLE default
    capture_max_bytes: float        # PARCEL_CAPTURE_MAX_BYTES default, per capture folder (replica)
    check_chunk: int                # lines per ingest task (one Prefect task run each on Dask)
    shard_size: int                 # ingest.shard_size: records per Parquet shard

    @property
    def ingest_runs(self) -> float:
        return self.monitor_runs + self.retrains


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def missing(unit: str, report: str, command: str) -> Figure:
    return Figure(None, unit, f"{NOT_MEASURED}: no {report}; `{command}` writes it")


def ingest_figures(rep: dict[str, Any] | None) -> dict[str, Figure]:
    """Core-seconds per record: the workers that were busy over the measured rate (on a 2-core
    machine both workers share the cores with the parent, so this is an upper bound)."""
    if rep is None:
        cmd = "python -m mmcore.bench ingest --out reports/bench/ingest.json"
        return {"ingest_core_s": missing("core-s/record", "ingest.json", cmd),
                "validate_core_s": missing("core-s/row", "ingest.json", cmd)}
    cores = min(rep["workers"], rep["machine"]["cpus"])
    return {"ingest_core_s": Figure(cores / rep["records_per_s"], "core-s/record",
                                    f"ingest.json: {cores} cores / records_per_s {rep['records_per_s']}"),
            "validate_core_s": Figure(1 / rep["validation_rows_per_s"], "core-s/row",
                                      f"ingest.json: 1 / validation_rows_per_s {rep['validation_rows_per_s']}")}


def train_figures(rep: dict[str, Any] | None) -> dict[str, Figure]:
    """Training as core-seconds per sample and epoch (threads over samples/s), and embedding as the
    whole request path at batch 64 (decode and both encoders: what a new record costs once)."""
    if rep is None:
        cmd = "python -m mmcore.bench train --out reports/bench/train.json"
        return {k: missing(u, "train.json", cmd) for k, u in (("train_core_s", "core-s/sample-epoch"),
                                                              ("finetune_core_s", "core-s/sample-epoch"),
                                                              ("embed_core_s", "core-s/record"))}
    t, inf, ft = rep["torch_threads"], rep["inference"], rep["finetune"]
    return {"train_core_s": Figure(t / rep["samples_per_s"], "core-s/sample-epoch",
                                   f"train.json: {t} threads / {rep['strategy']} samples_per_s {rep['samples_per_s']}"),
            "finetune_core_s": Figure(t / ft["samples_per_s"], "core-s/sample-epoch",
                                      f"train.json: {t} threads / {ft['strategy']} samples_per_s {ft['samples_per_s']}"),
            "embed_core_s": Figure(inf["torch_threads"] / inf["records_per_s_b64"], "core-s/record",
                                   f"train.json: {inf['torch_threads']} thread / inference records_per_s_b64 "
                                   f"{inf['records_per_s_b64']}")}


def gpu_figure(train: dict[str, Any] | None, gpu: dict[str, Any] | None) -> Figure:
    """GPU-seconds per sample-epoch of fine-tuning, only from a report whose device is a GPU."""
    for name, rep in (("train_gpu.json", gpu), ("train.json", train)):
        if rep and not str(rep.get("device", "cpu")).startswith("cpu"):
            ft = rep["finetune"]
            return Figure(1 / ft["samples_per_s"], "GPU-s/sample-epoch",
                          f"{name}: 1 / {ft['strategy']} samples_per_s {ft['samples_per_s']} on {rep['device']}")
    return Figure(None, "GPU-s/sample-epoch", f"{NOT_MEASURED}: no report from a GPU; on a CUDA machine "
                                              f"`{GPU_COMMAND}` records the device, the samples/s of full "
                                              "fine-tuning (bf16 autocast) and the CUDA peak memory")


def serve_figures(rep: dict[str, Any] | None, monitor: dict[str, Any] | None) -> dict[str, Figure]:
    """Served core-seconds per record at concurrency 32 (one record a request), capture's measured
    overhead added when the monitor bench has it; the replica is the benchmark machine."""
    over = (monitor or {}).get("capture_overhead_rps")
    capture = (Figure(over, "share of requests/s", "monitor.json: capture_overhead_rps") if over is not None else
               missing("share of requests/s", "capture figure in monitor.json",
                       "python -m mmcore.bench monitor --parts capture --out reports/bench/monitor.json"))
    if rep is None:
        cmd = "python -m mmcore.bench serve --out reports/bench/serve.json"
        return {"serve_core_s": missing("core-s/record", "serve.json", cmd),
                "replica_rps": missing("records/s", "serve.json", cmd), "capture_overhead": capture}
    cpus, rps = rep["machine"]["cpus"], rep["served_rps_c32"]
    extra = max(0.0, over) if over is not None else 0.0
    note = f" x (1 + capture_overhead_rps {over})" if over is not None else " (capture overhead not counted)"
    return {"serve_core_s": Figure(cpus / rps * (1 + extra), "core-s/record",
                                   f"serve.json: {cpus} cores / served_rps_c32 {rps}{note}"),
            "replica_rps": Figure(rps / (1 + extra), "records/s", f"serve.json: served_rps_c32 {rps}{note}, "
                                                                   f"one {cpus}-core replica"),
            "capture_overhead": capture}


def monitor_figures(rep: dict[str, Any] | None) -> dict[str, Figure]:
    """Seconds per answer the hourly window spends reading the capture log, and per labelled answer
    judging it (the rest of the window's time; the fixed drift sample is counted in, an upper bound)."""
    if rep is None or "window_100k_seconds" not in rep:
        cmd = "python -m mmcore.bench monitor --parts window --out reports/bench/monitor.json"
        return {"monitor_read_s": missing("s/answer", "window figure in monitor.json", cmd),
                "monitor_judge_s": missing("s/labelled answer", "window figure in monitor.json", cmd)}
    w = rep["window"]
    judge = max(0.0, rep["window_100k_seconds"] - rep["read_only_seconds"])
    return {"monitor_read_s": Figure(rep["read_only_seconds"] / w["answers"], "s/answer",
                                     f"monitor.json: read_only_seconds {rep['read_only_seconds']} / answers "
                                     f"{w['answers']}"),
            "monitor_judge_s": Figure(judge / w["labelled_answers"], "s/labelled answer",
                                      f"monitor.json: (window_100k_seconds {rep['window_100k_seconds']} - "
                                      f"read_only_seconds) / labelled_answers {w['labelled_answers']}")}


SIZE_KEYS: dict[str, tuple[str, str]] = {
    "landing_b": ("bytes/record", "landing_bytes_per_record"),
    "shard_b": ("bytes/record", "raw_shard_bytes_per_record"),
    "profile_b": ("bytes/record", "raw_profile_bytes_per_record"),
    "capture_b": ("bytes/answer", "capture_bytes_per_answer"),
    "ingest_mem_b": ("bytes/record", "ingest_rss_bytes_per_record"),
    "embed_b": ("bytes/record", "embedding_cache_bytes_per_record"),
    "replica_mem_mb": ("MB/replica", "replica_rss_mb"),
    "mlflow_rows_run": ("rows/run", "mlflow.rows_per_run"),
    "mlflow_b_run": ("bytes/run", "mlflow.bytes_per_run"),
    "prefect_rows_run": ("rows/flow run", "prefect.rows_per_flow_run"),
    "prefect_b_run": ("bytes/flow run", "prefect.bytes_per_flow_run"),
}


def size_figures(rep: dict[str, Any] | None) -> dict[str, Figure]:
    """Sizes from reports/bench/sizes.json (`--measure sizes`); MLflow and Prefect only when a run's
    databases were there to count."""
    out = {}
    for key, (unit, field) in SIZE_KEYS.items():
        value: Any = rep or {}
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        cmd = ("make up, some runs, then python -m mmcore.profile.capacity --measure sizes" if "." in field
               else "python -m mmcore.profile.capacity --measure sizes")
        out[key] = (Figure(float(value), unit, f"sizes.json: {field}") if value is not None
                    else Figure(None, unit, f"{NOT_MEASURED}: `{cmd}`"))
    return out


def load_figures(bench: Path) -> dict[str, Figure]:
    """Every per-record figure the sizing uses, from whichever reports exist under `bench`."""
    rep = {n: read_json(bench / f"{n}.json") for n in ("ingest", "train", "serve", "monitor", "sizes", "train_gpu")}
    return {**ingest_figures(rep["ingest"]), **train_figures(rep["train"]),
            "gpu_s": gpu_figure(rep["train"], rep["train_gpu"]), **serve_figures(rep["serve"], rep["monitor"]),
            **monitor_figures(rep["monitor"]), **size_figures(rep["sizes"])}


# --------------------------------------------------------------------------- schedule from the config
def cron_runs_per_day(expr: str) -> int:
    """Runs a day of a cron expression's minute and hour fields (`*`, `*/k`, `a,b`, numbers); the day
    fields are taken as every day, which is what this project's schedules use."""
    def match(field: str, value: int) -> bool:
        return any(part == "*" or (part.startswith("*/") and value % int(part[2:]) == 0)
                   or (part.isdigit() and int(part) == value) for part in field.split(","))

    minute, hour = expr.split()[:2]
    return sum(match(minute, m) and match(hour, h) for h in range(24) for m in range(60))


def deployment_runs(prefect_yaml: Path) -> dict[str, float]:
    """Scheduled flow runs a day per deployment (event-triggered ones count 0)."""
    doc = yaml.safe_load(prefect_yaml.read_text())
    out = {}
    for dep in doc.get("deployments", []):
        runs = 0.0
        for s in dep.get("schedules") or []:
            runs += cron_runs_per_day(s["cron"]) if "cron" in s else DAY / float(s["interval"])
        out[dep["name"]] = runs
    return out


def load_schedule(params_path: Path, prefect_yaml: Path) -> Schedule:
    """The schedule as configured: monitor and nightly runs from prefect.yaml, sizes from params."""
    from mmcore.config import load_params
    from mmcore.data.batch import check_batch
    from mmcore.serving.capture import CaptureSettings

    p = load_params(params_path)
    runs = deployment_runs(prefect_yaml)
    defaults = CaptureSettings(dir=Path("."))
    return Schedule(monitor_runs=runs.get("monitor", 0.0), retrains=runs.get("nightly", 0.0),
                    flow_runs=sum(runs.values()), window_s=p.monitor.window_minutes * 60.0,
                    epochs=p.train.epochs,
                    train_fraction=1 - p.split.val_fraction - p.split.test_fraction - p.split.calib_fraction,
                    lookback_days=p.monitor.lookback_days, drift_records=p.monitor.drift_records,
                    capture_sample=defaults.sample, capture_max_bytes=float(defaults.max_bytes),
                    check_chunk=inspect.signature(check_batch).parameters["chunk"].default,
                    shard_size=p.ingest.shard_size)


# --------------------------------------------------------------------------- the arithmetic
def v(figs: dict[str, Figure], key: str) -> float | None:
    return figs[key].value


def prod(*xs: float | None) -> float | None:
    """A product that stays None when any factor was not measured."""
    if any(x is None for x in xs):
        return None
    return math.prod(xs)  # type: ignore[arg-type]


def total(*xs: float | None) -> float | None:
    return None if any(x is None for x in xs) else sum(xs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Load:
    """One scale's traffic and what follows from it on day `d` (days since the system went live)."""

    rate: float                     # records a day (each one served once, captured, landed, ingested)
    s: Schedule
    a: Assumptions

    def kept(self, d: float) -> float:
        return self.rate * d                                    # nothing is ever pruned, as built

    def labelled_new(self) -> float:
        return self.rate * self.a.labelled_share * self.a.keep_share

    def train_n(self, d: float) -> float:
        return self.labelled_new() * d * self.s.train_fraction

    def lookback(self, d: float) -> float:
        return self.rate * self.s.capture_sample * min(d, self.s.lookback_days)

    def peak_rps(self) -> float:
        return self.rate / DAY * self.a.peak_factor


@dataclass(frozen=True)
class Need:
    """A row of the sizing table: `per_day(d)` is the need on day d; `cumulative` rows (storage)
    sum over the year, `level` rows (replicas, memory) show the day's value."""

    group: str
    what: str
    unit: str
    per_day: Callable[[float], float | None]
    year: str = "sum"               # sum | level


def cpu_needs(L: Load, f: dict[str, Figure]) -> list[Need]:
    s, h = L.s, HOUR
    def monitor_s(d: float) -> float | None:
        return total(prod(L.lookback(d), v(f, "monitor_read_s")),
                     prod(L.lookback(d), L.a.labelled_share, v(f, "monitor_judge_s")))

    return [
        Need("CPU", f"ingest as built: data/raw rebuilt from every batch, {s.ingest_runs:g} runs/day", "core-h/day",
             lambda d: prod(s.ingest_runs, L.kept(d), v(f, "ingest_core_s"), 1 / h)),
        Need("CPU", "ingest incremental (new batches only; a design change)", "core-h/day",
             lambda d: prod(L.rate, v(f, "ingest_core_s"), 1 / h)),
        Need("CPU", f"validation of the whole profile table, {s.retrains:g} retrain/day", "core-h/day",
             lambda d: prod(s.retrains, L.kept(d), v(f, "validate_core_s"), 1 / h)),
        Need("CPU", "embedding new labelled records and the monitor's drift samples", "core-h/day",
             lambda d: prod(L.labelled_new() + s.monitor_runs * s.drift_records, v(f, "embed_core_s"), 1 / h)),
        Need("CPU", f"training, frozen encoders, at most {s.epochs} epochs over the train split", "core-h/day",
             lambda d: prod(s.retrains, L.train_n(d), s.epochs, v(f, "train_core_s"), 1 / h)),
        Need("CPU", "training, fine-tuning encoders on CPU (the measured strategy)", "core-h/day",
             lambda d: prod(s.retrains, L.train_n(d), s.epochs, v(f, "finetune_core_s"), 1 / h)),
        Need("CPU", "serving (one answer per record)", "core-h/day", lambda d: prod(L.rate, v(f, "serve_core_s"), 1 / h)),
        Need("CPU", f"monitor: {s.monitor_runs:g} windows/day, each rereading {s.lookback_days:g} days of answers",
             "core-h/day", lambda d: prod(s.monitor_runs, monitor_s(d), 1 / h)),
        Need("GPU", "training, fine-tuning encoders on GPU", "GPU-h/day",
             lambda d: prod(s.retrains, L.train_n(d), s.epochs, v(f, "gpu_s"), 1 / h)),
    ]


def memory_needs(L: Load, f: dict[str, Figure]) -> list[Need]:
    def replicas(d: float) -> float | None:
        rps = v(f, "replica_rps")
        return None if rps is None else float(math.ceil(L.peak_rps() / rps))

    return [
        Need("Memory", f"serving replicas at peak ({L.a.peak_factor:g} x the mean rate)", "replicas", replicas, "level"),
        Need("Memory", "memory per serving replica", "GB", lambda d: prod(v(f, "replica_mem_mb"), 1e6 / GB), "level"),
        Need("Memory", "memory of all serving replicas", "GB",
             lambda d: prod(replicas(d), v(f, "replica_mem_mb"), 1e6 / GB), "level"),
        Need("Memory", "ingest as built: every accepted record held in one process", "GB",
             lambda d: prod(L.kept(d), v(f, "ingest_mem_b"), 1 / GB), "level"),
        Need("Memory", "training: the embedding cache is loaded whole", "GB",
             lambda d: prod(L.labelled_new() * d, v(f, "embed_b"), 1 / GB), "level"),
    ]


def database_needs(L: Load, f: dict[str, Figure]) -> list[Need]:
    s = L.s
    return [
        Need("PostgreSQL", "capture and monitor tables (there are none: capture is files, monitor state JSON)",
             "rows/day", lambda d: 0.0),
        Need("PostgreSQL", "Prefect flow runs of the scheduled deployments", "flow runs/day",
             lambda d: s.flow_runs),
        Need("PostgreSQL", "Prefect rows of those flow runs", "rows/day", lambda d: prod(s.flow_runs, v(f, "prefect_rows_run"))),
        Need("PostgreSQL", "Prefect bytes of those flow runs", "GB/day",
             lambda d: prod(s.flow_runs, v(f, "prefect_b_run"), 1 / GB)),
        Need("PostgreSQL", f"Prefect task runs if ingest ran on Dask as built (one per {s.check_chunk} lines)",
             "task runs/day", lambda d: s.ingest_runs * math.ceil(L.kept(d) / s.check_chunk)),
        Need("PostgreSQL", "MLflow rows of the retrains", "rows/day", lambda d: prod(s.retrains, v(f, "mlflow_rows_run"))),
        Need("PostgreSQL", "MLflow bytes of the retrains", "GB/day", lambda d: prod(s.retrains, v(f, "mlflow_b_run"), 1 / GB)),
    ]


def storage_needs(L: Load, f: dict[str, Figure]) -> list[Need]:
    s = L.s
    return [
        Need("Storage", "landing batches (kept: ingest rebuilds from them)", "GB/day",
             lambda d: prod(L.rate, v(f, "landing_b"), 1 / GB)),
        Need("Storage", "captured traffic (capture store, never pruned)", "GB/day",
             lambda d: prod(L.rate, s.capture_sample, v(f, "capture_b"), 1 / GB)),
        Need("Storage", "data/raw workspace (shards and profile table)", "GB/day",
             lambda d: prod(L.rate, total(v(f, "shard_b"), v(f, "profile_b")), 1 / GB)),
        Need("Storage", f"DVC versions as built: new shards + the whole profile table and last shard, "
                        f"{s.ingest_runs:g} versions/day", "GB/day",
             lambda d: total(prod(L.rate, v(f, "shard_b"), 1 / GB),
                             prod(s.ingest_runs, total(prod(L.kept(d), v(f, "profile_b")),
                                                       prod(s.shard_size, v(f, "shard_b"))), 1 / GB))),
        Need("Storage", "embedding cache (labelled records kept for training)", "GB/day",
             lambda d: prod(L.labelled_new(), v(f, "embed_b"), 1 / GB)),
    ]


def all_needs(L: Load, f: dict[str, Figure]) -> list[Need]:
    return cpu_needs(L, f) + memory_needs(L, f) + database_needs(L, f) + storage_needs(L, f)


def year_value(n: Need, days: int) -> float | None:
    """Year total of a per-day need (summed day by day), or its level on the last day."""
    if n.year == "level":
        return n.per_day(days)
    vals = [n.per_day(d) for d in range(1, days + 1)]
    return None if any(x is None for x in vals) else sum(vals)  # type: ignore[arg-type]


def storage_on(L: Load, f: dict[str, Figure], d: float) -> float | None:
    """GB stored on day d: every storage row summed over the days so far (hourly steps)."""
    rows = storage_needs(L, f)
    steps = max(1, int(d * 24))
    per = [total(*(n.per_day(d * (i + 0.5) / steps) for n in rows)) for i in range(steps)]
    return None if any(x is None for x in per) else sum(per) * d / steps  # type: ignore[arg-type]


# --------------------------------------------------------------------------- where one node runs out
@dataclass(frozen=True)
class Limit:
    """A part's need against one node's capacity; `engine` is the existing engine that takes over and
    `change` what the design must change so that engine is enough."""

    key: str
    part: str
    unit: str
    need: Callable[[float], float | None]
    capacity: float | None
    engine: str
    change: str


def node(a: Assumptions, sizes: dict[str, Any] | None, bench_cpus: float | None) -> dict[str, float | None]:
    """One node: the CLI's figures, else the benchmark machine's (cores of the serving or ingest
    report, memory and disk from sizes.json), so that 'runs out' means 'outgrows what was measured on'."""
    m = (sizes or {}).get("machine", {})
    return {"cores": a.node_cores or bench_cpus or m.get("cpus"),
            "memory_b": a.node_memory_gb * GB if a.node_memory_gb else m.get("memory_bytes"),
            "disk_b": a.node_disk_gb * GB if a.node_disk_gb else m.get("disk_bytes")}


def limits(L: Load, f: dict[str, Figure], n: dict[str, float | None]) -> list[Limit]:
    s = L.s
    def retrain_s(d: float) -> float | None:
        return total(prod(L.train_n(d), s.epochs, v(f, "train_core_s")), prod(L.labelled_new(), v(f, "embed_core_s")))

    def monitor_s(d: float) -> float | None:
        return total(prod(L.lookback(d), v(f, "monitor_read_s")),
                     prod(L.lookback(d), L.a.labelled_share, v(f, "monitor_judge_s")))

    cores = n["cores"]
    return [
        Limit("serving", "serving at peak", "cores", lambda d: prod(L.peak_rps(), v(f, "serve_core_s")), cores,
              "BentoML replicas behind the load balancer", "replicas are stateless except the capture folder: "
              "one PARCEL_CAPTURE_DIR per replica, listed in monitor.capture_dirs"),
        Limit("ingest_time", "ingest run (as built) within a monitor window", "s per run",
              lambda d: prod(L.kept(d), v(f, "ingest_core_s"), 1 / cores if cores else None), s.window_s,
              "the Dask cluster (ingest.executor: dask)", "ingest only new batches and append shards; "
              "a rebuild of every batch grows without end however many workers check lines"),
        Limit("ingest_memory", "ingest (as built) holding every record in memory", "bytes",
              lambda d: prod(L.kept(d), v(f, "ingest_mem_b")), n["memory_b"],
              "none: on Dask the results still return to the flow's process",
              "stream each batch's accepted records to its own shards instead of one list of all records"),
        Limit("validate_time", f"validation of the whole profile table within {L.a.train_window_h:g} h", "core-s",
              lambda d: prod(L.kept(d), v(f, "validate_core_s")), prod(cores, L.a.train_window_h, HOUR),
              "none: the suite runs in one process", "validate each new batch once (the batch expectations are "
              "per batch already) and check the whole table on a sample"),
        Limit("retrain_time", f"retrain (embed new records, train) within {L.a.train_window_h:g} h", "core-s",
              retrain_s, prod(cores, L.a.train_window_h, HOUR),
              "torchrun on GPU nodes (train.nproc) and sampling of what is kept for training",
              "a bounded training set (a recent window plus a stratified sample of the past: --keep-share)"),
        Limit("train_memory", "training: embedding cache loaded whole", "bytes",
              lambda d: prod(L.labelled_new() * d, v(f, "embed_b")), n["memory_b"],
              "sampling of what is kept for training", "read the cache by shard for the records of the run"),
        Limit("monitor", "monitor window rereading its lookback, one process", "s per window", monitor_s, s.window_s,
              "none in the design", "keep labelled answers in a table partitioned by day instead of rereading "
              "the capture log of the whole lookback every hour"),
        Limit("capture_store", "capture folder under PARCEL_CAPTURE_MAX_BYTES", "bytes",
              lambda d: prod(L.rate, d, s.capture_sample, v(f, "capture_b")), s.capture_max_bytes,
              "partitioned capture storage", "prune what the capture step landed (the landing batch holds a copy), "
              "partition by answer hour in the object store"),
        Limit("disk", "one node's disk (landing, capture, data/raw, DVC cache, embeddings)", "bytes",
              lambda d: prod(storage_on(L, f, d), GB), n["disk_b"],
              "the object store (DVC remote, S3)", "a retention for landing and capture once landed and versioned"),
    ]


def passes(lim: Limit, d: float) -> bool:
    need = lim.need(d)
    return need is not None and lim.capacity is not None and need > lim.capacity


def runs_out(lim: Limit, days: int) -> float | None:
    """The day (fractional) on which the need first passes the capacity: 0 when it does from the
    first record (a need that does not grow), inf when not within `days`, None when a figure is
    missing. Hourly steps, then bisection to the minute within the hour (needs only grow)."""
    if lim.capacity is None or lim.need(1.0) is None:
        return None
    if passes(lim, 1e-9):
        return 0.0
    hour = next((h for h in range(1, days * 24 + 1) if passes(lim, h / 24)), None)
    if hour is None:
        return math.inf
    lo, hi = (hour - 1) / 24, hour / 24
    while hi - lo > 1 / 1440:
        lo, hi = (lo, (lo + hi) / 2) if passes(lim, (lo + hi) / 2) else ((lo + hi) / 2, hi)
    return hi


# --------------------------------------------------------------------------- the sizing of one scale
@dataclass(frozen=True)
class Scale:
    name: str
    records_per_day: float
    how: str


@dataclass
class Sizing:
    scale: Scale
    rows: list[tuple[Need, float | None, float | None, float | None]]
    limits: list[tuple[Limit, float | None, float | None]]   # limit, day it runs out, need/capacity at the horizon

    def order(self) -> list[tuple[Limit, float | None, float | None]]:
        """Limits by the day they run out; parts short from the start by how far they overrun on day 1
        (the worst first); not measured last."""
        def key(t: tuple[Limit, float | None, float | None]) -> tuple[bool, float, float]:
            lim, day, _ = t
            need = lim.need(1.0) if day == 0 else None
            return day is None, day if day is not None else 0.0, -(need / lim.capacity if need and lim.capacity else 0)

        return sorted(self.limits, key=key)

    @property
    def first(self) -> tuple[Limit, float] | None:
        """The part that runs out first among those measured (None if none does within the horizon)."""
        timed = [(lim, day) for lim, day, _ in self.order() if day is not None and day != math.inf]
        return timed[0] if timed else None


def size(scale: Scale, figs: dict[str, Figure], sched: Schedule, a: Assumptions, nd: dict[str, float | None]) -> Sizing:
    """Needs on day 1, on the horizon's last day and over the year; each limit's day of exhaustion."""
    L = Load(scale.records_per_day, sched, a)
    rows = [(n, n.per_day(1), n.per_day(a.days), year_value(n, a.days)) for n in all_needs(L, figs)]
    lims = []
    for lim in limits(L, figs, nd):
        need = lim.need(a.days)
        ratio = need / lim.capacity if need is not None and lim.capacity else None
        lims.append((lim, runs_out(lim, a.days), ratio))
    return Sizing(scale, rows, lims)


# --------------------------------------------------------------------------- measuring sizes
INGEST_RSS = """import dataclasses, json, resource, sys
from pathlib import Path
from mmcore.config import load_params
from mmcore.data.ingest import ingest
p, w = load_params(sys.argv[1]), Path(sys.argv[2])
cfg = dataclasses.replace(p.ingest, shard_size=int(sys.argv[3]))
s = ingest(w / "landing", w / "raw", w / "q", cfg, workers=1)
print(json.dumps({"accepted": s["accepted"], "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
REPLICA_RSS = """import json, resource, sys
from mmcore.bench.serve import synthetic_records, to_mmcore
from mmcore.serving.runtime import load_predictor, threads_setting
pred = load_predictor(sys.argv[1], "auto", threads_setting())
recs = [to_mmcore(r) for r in synthetic_records(24, seed=2)]
for r in recs[:16]:
    pred.predict([r])
pred.predict(recs[16:])
print(json.dumps({"backend": getattr(pred, "backend", "torch"),
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def tree_bytes(root: Path, pattern: str = "**/*") -> int:
    return sum(p.stat().st_size for p in root.glob(pattern) if p.is_file())


def run_json(code: str, *args: str) -> dict[str, Any]:
    """A snippet in a fresh interpreter (so its peak RSS is its own); its last stdout line is JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def api_records(batch: Path) -> list[dict[str, Any]]:
    """A landing batch's records as a client sends them (image bytes, note, sensor channels), so the
    capture store and the encoders see the same content that landed."""
    import csv

    out = []
    for line in (batch / "records.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        sensor = None
        if rec.get("sensor"):
            with open(batch / rec["sensor"], encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            sensor = {k: [float(r[k]) if r[k] != "" else None for r in rows] for k in rows[0]} if rows else None
        out.append({"record_id": rec["record_id"], "shipment_id": rec["shipment_id"], "hub": rec["hub"],
                    "note": rec.get("note"), "sensor": sensor,
                    "image": (batch / rec["image"]).read_bytes() if rec.get("image") else None})
    return out


def capture_size(records: list[dict[str, Any]], work: Path) -> dict[str, float]:
    """Bytes the capture store (log line, blobs, counts) takes per answered record, written by the
    service's own Capture class with a fixed five-class answer."""
    from prometheus_client import CollectorRegistry

    from mmcore.config import CLASSES
    from mmcore.serving.capture import Capture, CaptureMetrics, CaptureSettings, RequestInfo, new_id
    from mmcore.serving.capture_store import folder_bytes

    settings = CaptureSettings(dir=work / "capture", monitor=f"capacity_{new_id()[:8]}")
    cap = Capture(settings, CaptureMetrics(CollectorRegistry()), use_bentoml_config=False).start()
    probs = dict(zip(CLASSES, (0.6, 0.1, 0.1, 0.1, 0.1)))
    for r in records:
        present = [m for m in ("image", "note", "sensor") if r.get(m)]
        answer = {"prediction_id": new_id(), "label": CLASSES[0], "probabilities": probs, "modalities": present,
                  "model_version": "1", "prediction_set": [CLASSES[0]], "decision": "auto", "review_reason": []}
        cap.offer_answer(RequestInfo(), {k: r[k] for k in ("note", "image", "sensor")}, answer,
                         {k: r[k] for k in ("record_id", "shipment_id", "hub")})
    cap.close(timeout=120)
    written = cap.counts.totals()["written"]
    if written != len(records):
        raise RuntimeError(f"capture wrote {written} of {len(records)} records: size not measurable")
    n = float(written)
    return {"capture_bytes_per_answer": folder_bytes(settings.dir) / n,
            "capture_log_bytes_per_answer": tree_bytes(settings.dir / "log") / n,
            "capture_blob_bytes_per_answer": tree_bytes(settings.dir / "blobs") / n, "capture_answers": n}


def embedding_size(records: list[dict[str, Any]], params_path: Path, work: Path) -> dict[str, float]:
    """Bytes the frozen encoders' embedding cache takes per record (what a retrain keeps and loads)."""
    from mmcore.config import load_params
    from mmcore.features import Featurizer

    p = load_params(params_path)
    feat = Featurizer(p.model, cache_dir=work / "cache", batch_size=p.train.embed_batch_size,
                      backend=p.train.embed_backend)
    feat.embed(records)
    chunks = [q for q in (work / "cache").glob("**/chunk-*") if q.parent.name in
              (feat.cache_keys["image"], feat.cache_keys["text"])]
    return {"embedding_cache_bytes_per_record": sum(q.stat().st_size for q in chunks) / len(records),
            "embedding_records": len(records)}


def ingest_sizes(params_path: Path, work: Path, records: int) -> tuple[dict[str, float], Path]:
    """Landing and data/raw bytes per record (the configured shard size), and the memory an ingest run
    keeps per record: the peak-RSS slope between a small and a `records`-sized landing area, each
    ingested in a fresh process on one worker with shards of a twentieth of the small one, so that the
    transient of writing one shard does not pass for memory held per record."""
    from mmcore.config import load_params
    from mmcore.data.ingest import ingest
    from mmcore.synth.generate import generate_batch

    p = load_params(params_path)
    rss, shard = {}, str(max(5, records // 80))
    for n in (records // 4, records):
        ws = work / f"ingest-{n}"
        batch = generate_batch(ws / "landing", f"sizes-{n}", n, p.synth, seed=p.synth.seed)
        rss[n] = run_json(INGEST_RSS, str(params_path), str(ws), shard)
    raw, big, small = work / "raw", rss[records], rss[records // 4]
    acc = ingest(batch.parent, raw, work / "quarantine", p.ingest, workers=1)["accepted"]
    return {"landing_bytes_per_record": tree_bytes(batch) / records,
            "raw_shard_bytes_per_record": tree_bytes(raw / "shards") / acc,
            "raw_profile_bytes_per_record": (raw / "records.parquet").stat().st_size / acc,
            "ingest_rss_bytes_per_record": (big["rss_kb"] - small["rss_kb"]) * 1024 / (acc - small["accepted"]),
            "ingest_records": acc, "ingest_rss_shard_size": int(shard)}, batch


def replica_size(params_path: Path, work: Path) -> dict[str, Any]:
    """Peak RSS of one serving worker: the shipped backend (ONNX Runtime, int8 as the last package
    stage chose) with the configured architecture's random weights, after 24 distinct records."""
    from mmcore.bench.serve import exported_bundle, shipped_int8, synthetic_records
    from mmcore.config import load_params

    recs = synthetic_records(32, seed=1)
    model = exported_bundle(work / "model", load_params(params_path).model, work / "cache", recs,
                            shipped_int8(ROOT / "reports" / "package.json"))
    out = run_json(REPLICA_RSS, str(model))
    return {"replica_rss_mb": out["rss_kb"] * 1024 / 1e6, "replica_backend": out["backend"]}


def per_run(counts: dict[str, int], total_bytes: int, run_table: str, where: str) -> dict[str, Any] | None:
    runs = counts.get(run_table, 0)
    if not runs:
        return None
    key = "flow_run" if run_table == "flow_run" else "run"
    return {"db": where, "runs": runs, f"rows_per_{key}": sum(counts.values()) / runs,
            f"bytes_per_{key}": total_bytes / runs, "rows_by_table": counts}


def db_per_run(db: Path, run_table: str) -> dict[str, Any] | None:
    """Rows and bytes per run of a SQLite store (MLflow's mlflow.db, Prefect's prefect.db), read only."""
    if not db.is_file():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        counts = {t: con.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()
    return per_run(counts, db.stat().st_size, run_table, str(db))


def pg_per_run(database: str, run_table: str) -> dict[str, Any] | None:
    """The same from the production profile's PostgreSQL (`make up`, then some runs), when it answers.
    Bytes are every table's pages, indexes included, over the runs: the empty schema's pages count too,
    so with few runs this is an upper bound that falls as runs accumulate."""
    from mmcore.profile import postgres
    from mmcore.profile.settings import Profile

    try:
        profile = Profile.load()
        if not postgres.ready(profile):
            return None
        sizes = postgres.table_sizes(profile, database)
    except Exception:  # no profile here (no .env, no cluster): the SQLite stores are measured instead
        return None
    counts = {t: rows for t, (rows, _) in sizes.items()}
    return per_run(counts, sum(b for _, b in sizes.values()), run_table, f"postgresql:{database}")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "disk_bytes": shutil.disk_usage(ROOT).total, "platform": platform.platform(),
            "python": platform.python_version()}


def measure_sizes(params_path: Path, records: int, mlflow_db: Path, prefect_db: Path) -> dict[str, Any]:
    """Everything in sizes.json, in a throwaway folder."""
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        work = Path(tmp)
        out, batch = ingest_sizes(params_path, work, records)
        recs = api_records(batch)
        out.update(capture_size(recs, work))
        out.update(embedding_size(recs[:64], params_path, work))
        out.update(replica_size(params_path, work))
    out["mlflow"] = pg_per_run("mlflow", "runs") or db_per_run(mlflow_db, "runs")
    out["prefect"] = pg_per_run("prefect", "flow_run") or db_per_run(prefect_db, "flow_run")
    out["machine"] = machine()
    out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return out


# --------------------------------------------------------------------------- running the measurements
def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def record_run(bench: Path, name: str, command: str, wall_s: float) -> None:
    """Provenance: the command line and wall time that wrote a report, tied to its bytes."""
    path = bench / "provenance.json"
    prov = read_json(path) or {}
    prov[name] = {"command": command, "wall_s": round(wall_s, 1), "sha256": digest(bench / f"{name}.json"),
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(prov, indent=2))


def run_bench(name: str, quick: bool, bench: Path) -> None:
    args = [*BENCH_COMMANDS[name][1 if quick else 0], "--out", str(bench / f"{name}.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)
    record_run(bench, name, "python " + shlex.join(args), time.perf_counter() - start)


def measure(which: list[str], args: argparse.Namespace) -> None:
    bench = args.bench
    bench.mkdir(parents=True, exist_ok=True)
    for name in which:
        if name == "sizes":
            start = time.perf_counter()
            sizes = measure_sizes(args.params, args.size_records, args.mlflow_db, args.prefect_db)
            (bench / "sizes.json").write_text(json.dumps(sizes, indent=2))
            record_run(bench, "sizes", f"python -m mmcore.profile.capacity --measure sizes --size-records "
                                       f"{args.size_records}", time.perf_counter() - start)
        else:
            run_bench(name, args.quick, bench)


# --------------------------------------------------------------------------- rendering
def num(x: float | None) -> str:
    """Three significant figures, thousands separated; None is the one way to say 'not measured'."""
    if x is None:
        return NOT_MEASURED
    if x == math.inf:
        return "never"
    if abs(x) >= 100:
        return f"{round(x):,}"
    return f"{x:.3g}" if x else "0"


def when(day: float | None, days: int) -> str:
    if day is None:
        return NOT_MEASURED
    if day == math.inf:
        return f"not within {days} days"
    if day == 0:
        return "from the first day's traffic"
    if day < 1 / 24:
        return f"after {day * 1440:.0f} min"
    return f"after {day * 24:.1f} h" if day < 2 else f"on day {math.ceil(day)}"


def capacity_text(lim: Limit) -> str:
    c = lim.capacity
    if c is None:
        return NOT_MEASURED
    return {"bytes": f"{num(c / GB)} GB", "core-s": f"{num(c / HOUR)} core-h", "cores": f"{num(c)} cores",
            "s per run": f"{num(c)} s", "s per window": f"{num(c)} s"}[lim.unit]


def makefile_commands(makefile: Path) -> dict[str, str]:
    """The `make bench` line that writes each report (the fallback when a run left no provenance)."""
    out = {}
    for line in makefile.read_text().splitlines() if makefile.is_file() else []:
        for name in ("ingest", "serve", "train", "monitor"):
            if f"reports/bench/{name}.json" in line:
                out[name] = line.strip().replace("$(PY)", "python")
    return out


def report_rows(bench: Path) -> list[str]:
    """One line per report: when, on what, by which command and in how long."""
    prov, make = read_json(bench / "provenance.json") or {}, makefile_commands(ROOT / "Makefile")
    rows = ["| report | measured at (UTC) | machine | command | wall s |", "|---|---|---|---|---|"]
    for name in ("ingest", "train", "serve", "monitor", "sizes", "train_gpu"):
        rep = read_json(bench / f"{name}.json")
        if rep is None:
            continue
        at = rep.get("measured_at")
        at = ", ".join(f"{k} {t}" for k, t in at.items()) if isinstance(at, dict) else at
        m = rep.get("machine") or {}
        what = rep.get("device") or f"{m.get('cpus')} CPUs"
        what = f"{what}, {m.get('platform') or rep.get('platform', '')}".rstrip(", ")
        p = prov.get(name, {})
        if p.get("sha256") == digest(bench / f"{name}.json"):
            cmd, wall = f"`{p['command']}`", num(p["wall_s"])
        else:
            cmd, wall = (f"not recorded; `make bench` runs `{make[name]}`" if name in make else "not recorded"), "?"
        rows.append(f"| `{bench / name}.json` | {at} | {what} | {cmd} | {wall} |")
    return rows


def cost_rows(figs: dict[str, Figure]) -> list[str]:
    rows = ["| figure | value | unit | from |", "|---|---|---|---|"]
    return rows + [f"| `{k}` | {num(f.value)} | {f.unit} | {f.source} |" for k, f in figs.items()]


def assumption_rows(a: Assumptions, s: Schedule, nd: dict[str, float | None], scales: list[Scale]) -> list[str]:
    rows = ["| assumption | value | set by |", "|---|---|---|"]
    for sc in scales:
        rows.append(f"| {sc.name}: records a day | {num(sc.records_per_day)} | {sc.how} |")
    opts = {"peak_factor": "busiest hour over the mean", "labelled_share": "records that ever get a label",
            "keep_share": "labelled records kept for training (1 = all, as built)", "days": "horizon in days",
            "train_window_h": "hours the nightly retrain may take"}
    rows += [f"| {why} | {num(getattr(a, k))} | `--{k.replace('_', '-')}` |" for k, why in opts.items()]
    rows.append("| every record is served once, captured, landed and ingested | 1 | the design (DESIGN §2b) |")
    rows += [f"| one node: {k.replace('_b', '')} | {num(x / GB) + ' GB' if k.endswith('_b') and x else num(x)} | "
             f"`--node-{k.replace('_b', '').replace('memory', 'memory-gb').replace('disk', 'disk-gb')}` "
             f"(default: the benchmark machine, sizes.json) |" for k, x in nd.items()]
    conf = [("ingest runs a day (monitor windows + nightly retrains; each `dvc repro ingest`)", s.ingest_runs,
             "prefect.yaml `monitor` and `nightly` crons"), ("retrains a day", s.retrains, "prefect.yaml `nightly` cron"),
            ("Prefect flow runs a day", s.flow_runs, "prefect.yaml schedules"),
            ("monitor window, s", s.window_s, "params.yaml monitor.window_minutes"),
            ("epochs (at most)", s.epochs, "params.yaml train.epochs"),
            ("train split share", s.train_fraction, "params.yaml split"),
            ("monitor lookback, days", s.lookback_days, "params.yaml monitor.lookback_days"),
            ("drift records a window", s.drift_records, "params.yaml monitor.drift_records"),
            ("capture sample", s.capture_sample, "PARCEL_CAPTURE_SAMPLE default"),
            ("capture folder cap, GB", s.capture_max_bytes / GB, "PARCEL_CAPTURE_MAX_BYTES default"),
            ("lines per ingest task", s.check_chunk, "mmcore.data.batch.check_batch"),
            ("records per shard", s.shard_size, "params.yaml ingest.shard_size")]
    return rows + [f"| {what} | {num(x)} | {src} |" for what, x, src in conf]


def scale_rows(z: Sizing, days: int) -> list[str]:
    rows = [f"| | need | unit | day 1 | day {days} | year (sum; level on day {days}) |", "|---|---|---|---|---|---|"]
    for n, d1, dn, yr in z.rows:
        year_unit = f" {n.unit.split('/')[0]}" if n.year == "sum" and yr is not None else ""
        rows.append(f"| {n.group} | {n.what} | {n.unit} | {num(d1)} | {num(dn)} | {num(yr)}{year_unit} |")
    return rows


def limit_rows(z: Sizing, days: int) -> list[str]:
    rows = ["| part | one node | runs out | need on the last day / one node | what takes over |",
            "|---|---|---|---|---|"]
    for lim, day, ratio in z.order():
        rows.append(f"| {lim.part} | {capacity_text(lim)} | {when(day, days)} | "
                    f"{num(ratio) + ' x' if ratio is not None else NOT_MEASURED} | {lim.engine} |")
    return rows


def first_line(z: Sizing, days: int) -> str:
    first = z.first
    if first is None:
        return f"**Nothing measured runs out within {days} days on one node.**"
    lim, day = first
    return (f"**Runs out first: {lim.part}, {when(day, days)}.** What takes over: {lim.engine}. "
            f"What must change: {lim.change}.")


def keep_share_that_fits(scale: Scale, figs: dict[str, Figure], s: Schedule, a: Assumptions,
                         nd: dict[str, float | None]) -> float | None:
    """The largest share of labelled records kept for training with which the retrain still fits
    one node's window on the horizon's last day (bisection; None if not measured or none fits)."""
    def fits(keep: float) -> bool | None:
        lim = next(x for x in limits(Load(scale.records_per_day, s, dataclasses.replace(a, keep_share=keep)), figs, nd)
                   if x.key == "retrain_time")
        need = lim.need(a.days)
        return None if need is None or lim.capacity is None else need <= lim.capacity

    if fits(a.keep_share) is None or not fits(0.0):
        return None
    if fits(a.keep_share):
        return a.keep_share
    lo, hi = 0.0, a.keep_share
    for _ in range(40):
        lo, hi = ((lo + hi) / 2, hi) if fits((lo + hi) / 2) else (lo, (lo + hi) / 2)
    return lo


def row_value(z: Sizing, start: str, col: int) -> float | None:
    """A sizing row's value by the start of its text (1 = day 1, 2 = last day, 3 = year)."""
    row = next(r for r in z.rows if r[0].what.startswith(start))
    return row[col]


def change_lines(sizings: list[Sizing], figs: dict[str, Figure], s: Schedule, a: Assumptions,
                 nd: dict[str, float | None]) -> list[str]:
    """One bullet per part that runs out at some scale, with the numbers that say by how much."""
    lines = []
    keys = [lim.key for lim, _, _ in sizings[0].limits]
    for key in keys:
        found = [(z, lim, day, r) for z in sizings for lim, day, r in z.limits if lim.key == key]
        if all(day in (None, math.inf) for _, _, day, _ in found):
            continue
        lim = found[0][1]
        at = "; ".join(f"{z.scale.name}: {when(day, a.days)} ({num(r)} x one node on day {a.days})"
                       for z, _, day, r in found)
        lines.append(f"- **{lim.part}** ({at}). Takes over: {lim.engine}. Change: {lim.change}.")
    for z in sizings:
        built, incr = row_value(z, "ingest as built", 2), row_value(z, "ingest incremental", 2)
        keep = keep_share_that_fits(z.scale, figs, s, a, nd)
        if keep is not None:
            fit = f"at most {num(keep)} of the labelled records kept for training"
        elif figs["train_core_s"].value is None or figs["embed_core_s"].value is None:
            fit = NOT_MEASURED
        else:
            fit = "no share: embedding one day's labelled records alone overruns it, so more nodes are needed"
        lines.append(f"- {z.scale.name}, day {a.days}: ingest as built {num(built)} core-h/day against "
                     f"{num(incr)} core-h/day incremental. The retrain fits one node's {a.train_window_h:g} h "
                     f"with {fit}.")
    return lines


def missing_lines(figs: dict[str, Figure]) -> list[str]:
    out = [f"- `{k}` ({f.unit}): {f.source}" for k, f in figs.items() if f.value is None]
    return out or ["- nothing: every figure the sizing uses was measured"]


GROWTH = [
    "Why some needs grow with the day (the code as it stands):", "",
    "- `mmcore.data.ingest.ingest` rebuilds data/raw from every finished landing batch, and the hourly monitor "
    "runs `dvc repro ingest` after landing its window: each ingest run checks every record kept so far, holds "
    "them all in one list, and writes a new `records.parquet` that DVC stores whole for every version.",
    "- The monitor's live quality rereads the capture log of the whole lookback every window "
    "(`mmcore.monitor.window.lookback`); its measured time is charged per answer read and per labelled answer "
    "judged, the fixed drift sample included (an upper bound).",
    "- `EmbeddingCache` loads every cached embedding of an encoder version into memory when a retrain starts.",
    "- Nothing prunes the capture folder; at `PARCEL_CAPTURE_MAX_BYTES` the service drops captures (`store_full`) "
    "and keeps answering.",
    "- Training reads every labelled record kept (times `--keep-share`) for at most `train.epochs` epochs.",
]


def conclusion_lines(sizings: list[Sizing], days: int) -> list[str]:
    """What runs out first at each scale, and how many parts one node cannot carry through the horizon."""
    out = []
    for z in sizings:
        short = [lim.part for lim, day, _ in z.order() if day is not None and day != math.inf]
        first = z.first
        head = (f"{first[0].part} runs out first, {when(first[1], days)}; {first[0].engine} takes over"
                if first else f"nothing measured runs out within {days} days")
        out.append(f"- **{z.scale.name}** ({num(z.scale.records_per_day)} records a day): {head}. "
                   f"{len(short)} of {len(z.limits)} parts outgrow one node within {days} days"
                   + (f", in this order: {'; '.join(short)}." if short else "."))
    return out


def render(scales: list[Scale], sizings: list[Sizing], figs: dict[str, Figure], s: Schedule, a: Assumptions,
           nd: dict[str, float | None], bench: Path, command: str) -> str:
    """docs/capacity.md: sources, assumptions, one section per scale, then the design changes."""
    parts = ["# Capacity on paper, from measurement", "",
             f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             "(mmcore/profile/capacity.py); every figure below comes from the reports listed or from the "
             "assumptions table. Edit the assumptions through the options, not here.", "",
             "## Where the figures come from", "", *report_rows(bench), "", "Per-record costs used:", "",
             *cost_rows(figs), "",
             "Core-seconds are measured on the benchmark machine, whose cores the load generator and other "
             "jobs shared: they are upper bounds for a dedicated core. Byte sizes are those of generated records "
             "(params.yaml `synth`); a fleet's own photos may be larger, and every storage figure scales with "
             "them. GB = 10^9 bytes.", "",
             "## Assumptions", "", *assumption_rows(a, s, nd, scales), "", *GROWTH, ""]
    parts[4:4] = ["## Conclusions", "", *conclusion_lines(sizings, a.days), ""]
    for z in sizings:
        parts += [f"## {z.scale.name}: {num(z.scale.records_per_day)} records a day", "", first_line(z, a.days), "",
                  *scale_rows(z, a.days), "", "One node against each part's need:", "", *limit_rows(z, a.days), ""]
    parts += ["## What in the design must change", "", *change_lines(sizings, figs, s, a, nd), "",
              "## Not measured", "", *missing_lines(figs), ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- entry point
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Size the system at two scales from the benchmark reports.")
    ap.add_argument("--out", type=Path, default=Path("docs/capacity.md"))
    ap.add_argument("--bench", type=Path, default=BENCH, help="folder of the benchmark reports")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--prefect-yaml", type=Path, default=Path("prefect.yaml"))
    ap.add_argument("--measure", default="", help="run these first: sizes,ingest,train,serve,monitor")
    ap.add_argument("--quick", action="store_true", help="short benchmark settings (a shared machine)")
    ap.add_argument("--size-records", type=int, default=400)
    ap.add_argument("--mlflow-db", type=Path, default=Path("mlflow.db"))
    ap.add_argument("--prefect-db", type=Path,
                    default=Path(os.environ.get("PREFECT_HOME", ".prefect")) / "prefect.db")
    ap.add_argument("--regional-hubs", type=int, default=50)
    ap.add_argument("--regional-per-hub", type=int, default=5000)
    ap.add_argument("--national", type=float, default=30_000_000)
    for f in dataclasses.fields(Assumptions):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=float if f.type != "int" else int, default=f.default)
    return ap.parse_args(argv)


def scales_of(args: argparse.Namespace) -> list[Scale]:
    return [Scale("Regional network", args.regional_hubs * args.regional_per_hub,
                  f"`--regional-hubs {args.regional_hubs}` x `--regional-per-hub {args.regional_per_hub}`"),
            Scale("National network", args.national, f"`--national {num(args.national).replace(',', '')}`")]


def build(args: argparse.Namespace) -> tuple[str, list[Sizing]]:
    """Load everything, size both scales and render; returns the document and the sizings."""
    figs = load_figures(args.bench)
    sched = load_schedule(args.params, args.prefect_yaml)
    a = Assumptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Assumptions)})
    serve = read_json(args.bench / "serve.json") or read_json(args.bench / "ingest.json") or {}
    nd = node(a, read_json(args.bench / "sizes.json"), (serve.get("machine") or {}).get("cpus"))
    scales = scales_of(args)
    sizings = [size(sc, figs, sched, a, nd) for sc in scales]
    command = "python -m mmcore.profile.capacity " + shlex.join(sys.argv[1:] if getattr(args, "cli", False) else [])
    return render(scales, sizings, figs, sched, a, nd, args.bench, command.strip()), sizings


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.cli = argv is None
    if args.measure:
        measure([m for m in args.measure.split(",") if m], args)
    doc, sizings = build(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(doc)
    for z in sizings:
        first = z.first
        print(f"{z.scale.name}: {num(z.scale.records_per_day)} records/day; first to run out: "
              + (f"{first[0].part}, {when(first[1], args.days)}" if first else "nothing measured"))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
