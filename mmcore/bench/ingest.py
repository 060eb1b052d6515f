"""Ingest benchmark behind `make bench` (reports/bench/ingest.json).

    python -m mmcore.bench ingest --out reports/bench/ingest.json [--records 1000]

Ingest throughput is set against the decode-only limit on the very same image files
(PIL decode + RGB + resize of every image, on the same number of worker processes,
nothing else), so the ratio says how much of ingest is overhead beyond decoding.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from mmcore.config import load_params

ROOT = Path(__file__).resolve().parents[2]


def decode_files(paths: list[str], size: int) -> int:
    for p in paths:
        with Image.open(p) as img:
            img.convert("RGB").resize((size, size), Image.BILINEAR)
    return len(paths)


def decode_limit(images: list[Path], size: int, workers: int) -> float:
    """Images per second for decode + resize alone, on a warm pool of `workers` processes."""
    chunks = [[str(p) for p in images[i::workers * 4]] for i in range(workers * 4)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(decode_files, [c[:2] for c in chunks], [size] * len(chunks)))  # warm-up
        start = time.perf_counter()
        done = sum(pool.map(decode_files, chunks, [size] * len(chunks)))
        return done / (time.perf_counter() - start)


def noop_repro_seconds(landing: Path, params: Path) -> float:
    """Wall time of `dvc repro` with nothing changed, in a throwaway workspace holding the ingest stage."""
    ws = Path(tempfile.mkdtemp(prefix="bench-dvc-"))
    try:
        stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
        (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ingest": stages["ingest"]}}))
        shutil.copy(params, ws / "params.yaml")
        shutil.copytree(ROOT / "mmcore", ws / "mmcore", ignore=shutil.ignore_patterns("__pycache__"))
        (ws / "data" / "labels").mkdir(parents=True)   # the stage's label feed: empty here
        os.symlink(landing, ws / "data" / "landing")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        dvc = [sys.executable, "-m", "dvc"]
        subprocess.run(dvc + ["init", "--no-scm", "-q"], cwd=ws, check=True, env=env)
        subprocess.run(dvc + ["repro", "-q"], cwd=ws, check=True, env=env, capture_output=True)
        start = time.perf_counter()
        subprocess.run(dvc + ["repro", "-q"], cwd=ws, check=True, env=env, capture_output=True)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def bench_ingest(records: int, params_path: Path, work: Path) -> dict[str, Any]:
    from mmcore.data.ingest import ingest
    from mmcore.synth.generate import generate_default
    from mmcore.encoders import load_tokenizer
    from mmcore.stages.validate import run_validation

    p = load_params(params_path)
    landing = work / "landing"
    batches = max(1, records // 500)
    generate_default(landing, dataclasses.replace(p.synth, batches=batches, records_per_batch=records // batches))
    tokenizer = load_tokenizer()
    workers = min(os.cpu_count() or 1, 8)
    start = time.perf_counter()
    summary = ingest(landing, work / "raw", work / "quarantine", p.ingest, tokenizer=tokenizer)
    ingest_s = time.perf_counter() - start
    images = sorted(landing.glob("*/images/*"))
    limit = decode_limit(images, p.model.image_size, workers)
    import pandas as pd

    profile = pd.read_parquet(work / "raw" / "records.parquet")
    run_validation(profile, p.validate, work / "gx")  # warm-up: imports and context scaffolding
    start = time.perf_counter()
    run_validation(profile, p.validate, work / "gx")
    validate_s = time.perf_counter() - start
    rps = summary["landed"] / ingest_s
    return {"records": summary["landed"], "records_per_s": round(rps, 1),
            "decode_limit_per_s": round(limit, 1), "ratio": round(rps / limit, 3), "goal_ratio": 0.6,
            "workers": workers, "validation_rows_per_s": round(len(profile) / validate_s, 1),
            "noop_dvc_repro_s": round(noop_repro_seconds(landing, params_path), 2),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmcore.bench ingest",
                                 description="Ingest benchmark (JSON report under reports/bench/).")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/ingest.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result = bench_ingest(args.records, args.params, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    rows = [("ingest records/s", result["records_per_s"]), ("decode-only limit/s", result["decode_limit_per_s"]),
            ("ratio (goal >= %s)" % result["goal_ratio"], result["ratio"]),
            ("validation rows/s", result["validation_rows_per_s"]), ("no-op dvc repro s", result["noop_dvc_repro_s"])]
    print(f"ingest bench: {result['records']} records, {result['workers']} workers, "
          f"{result['machine']['cpus']} cpus -> {args.out}")
    for name, value in rows:
        print(f"  {name:<22}{value:>10}")
    return 0

