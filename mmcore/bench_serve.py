"""Serving benchmark behind `make bench`: the HTTP service against in-process `mmcore.predict`,
all measured in the same run on the same machine.

    python -m mmcore.bench_serve --out reports/bench/serve.json [--seconds 20]

Figures (JSON): in-process predict time against batch size (`inproc_ms_by_batch`; `inproc_ms_b1`
is batch 1) and the adaptive-batching settings those times imply (`batching.derived`, next to
what service.py is configured with); latency of one-record requests at concurrency 1
(`p50_ms_c1`, `p95_ms_c1`) and at concurrency 32 (`p99_ms_c32`); throughput at concurrency 32
with adaptive batching and without it (`batched_rps_c32`, `unbatched_rps_c32`: the same service
started with PARCEL_BATCHING=0). Goals, as ratios: p50 at concurrency 1 within
1.3 x in-process + 5 ms, batched throughput at least 3 x unbatched, and the routing's cost (`routing`:
prediction sets, threshold and unimodal opinions) within 1.10 x the same weights served without it.

The model is the parameters' architecture with random weights (seeded): inference cost does
not depend on the weights, and the benchmark needs no trained champion. Every request carries a
different record (image, note and sensor trace), so no cache can answer it.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmcore.config import CLASSES, ModelConfig, load_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL_NAME = "parcel-condition"
SENSOR_KEYS = ("t_s", "temperature_c", "humidity_pct", "shock_g", "light_lux")
NOTES = ("corner crushed, box dented", "wet patch on the side, label smeared", "tape cut and resealed",
         "parcel fine, no marks", "warm to the touch at pickup", "外箱破损", "seal broken, contents loose")


# A random model's probabilities sit near 1/5: these make its answers take every routing path.
RANDOM_CALIBRATION = {"alpha": 0.1, "set_quantile": 0.7905, "confidence_thresholds": dict.fromkeys(CLASSES, 0.209),
                      "disagreement_threshold": 0.0005, "min_auto_precision": 0.98, "delta": 0.1}


def random_bundle(path: Path, cfg: ModelConfig, seed: int = 0, routing: bool = True) -> Path:
    """A model directory of the configured architecture with seeded random weights; with `routing`,
    random unimodal opinions and a fixed calibration too, so answers carry real sets and decisions."""
    import dataclasses

    import torch

    from mmcore.features import Featurizer
    from mmcore.model import MODALITIES, FusionModel, ModelBundle
    from mmcore.selective.calibrate import Calibration
    from mmcore.selective.router import Router

    torch.manual_seed(seed)

    def bundle(mcfg: ModelConfig) -> ModelBundle:
        return ModelBundle(FusionModel(mcfg, num_classes=len(CLASSES)).eval(), list(CLASSES),
                           np.zeros(4, np.float32), np.ones(4, np.float32), Featurizer(cfg).versions())

    bundle(cfg).save(path)
    if routing:
        Router.save_opinions(path, {m: bundle(dataclasses.replace(cfg, modalities=(m,))) for m in MODALITIES})
        Calibration(**RANDOM_CALIBRATION).save(path)
    return path


def synthetic_records(n: int, seed: int = 0, rows: int = 120, image_side: int = 224) -> list[dict[str, Any]]:
    """`n` distinct records in the API format (DESIGN §5): JPEG as base64, note, sensor channels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((image_side, image_side),
                                                                                     Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        t = np.arange(rows) * 60.0
        sensor = {"t_s": t, "temperature_c": 4 + rng.normal(0, 0.3, rows), "humidity_pct": 55 + rng.normal(0, 2, rows),
                  "shock_g": np.abs(rng.normal(0.2, 0.3, rows)), "light_lux": np.zeros(rows)}
        out.append({"record_id": f"bench-{seed}-{i}", "note": f"{NOTES[i % len(NOTES)]} ({seed}-{i})",
                    "image": base64.b64encode(buf.getvalue()).decode(),
                    "sensor": {k: [round(float(x), 3) for x in sensor[k]] for k in SENSOR_KEYS}})
    return out


def to_mmcore(rec: dict[str, Any]) -> dict[str, Any]:
    """An API record as `mmcore.predict` takes it (what service.to_mmcore does after validation)."""
    return {"note": rec.get("note"), "image": base64.b64decode(rec["image"]) if rec.get("image") else None,
            "sensor": rec.get("sensor")}


def inproc_ms_by_batch(predictor: Any, records: list[dict[str, Any]], sizes: tuple[int, ...],
                       repeats: int) -> dict[int, float]:
    """Best-of-`repeats` wall time of `predictor.predict` per batch size, never the same record twice."""
    recs = [to_mmcore(r) for r in records]
    predictor.predict(recs[:2])  # warm-up
    pos, out = 2, {}
    for b in sizes:
        times = []
        for _ in range(repeats):
            batch, pos = recs[pos:pos + b], pos + b
            start = time.perf_counter()
            predictor.predict(batch)
            times.append((time.perf_counter() - start) * 1000)
        out[b] = min(times)
    return out


def derive_batching(ms_by_batch: dict[int, float], gain: float = 0.1, concurrency: int = 32,
                    records_per_request: int = 4, headroom: float = 10.0, cap_ms: int = 60_000) -> dict[str, Any]:
    """Adaptive-batching settings from in-process time against batch size.

    max_batch_size: the smallest measured size whose time per record is within `gain` of the best
    (a bigger batch buys less than that and only adds waiting). max_latency_ms: BentoML's
    dispatcher answers 503 when its estimate for the oldest queued request (queue wait plus all
    queued requests as one batch) passes this bound, so it must cover the design load:
    `concurrency` requests of `records_per_request` records at the measured per-record time, times
    `headroom` (the machine is shared: batch-1 times of this bench ranged from 28 to 514 ms across
    runs on one day; 8.2 s, ten times the drain time of a full queue, gave 503s in the first seconds
    of the load test, while the dispatcher's estimate still rests on its first few batches), rounded up to
    100 ms and capped at the service's 60 s traffic timeout.
    """
    per_record = {b: t / b for b, t in ms_by_batch.items()}
    best = min(per_record.values())
    size = max(2, min(b for b, v in per_record.items() if v <= best * (1 + gain)))  # BentoML's floor is 2
    queue_ms = concurrency * records_per_request * per_record.get(size, best) * headroom
    return {"max_batch_size": size, "max_latency_ms": min(cap_ms, int(math.ceil(queue_ms / 100) * 100)),
            "ms_per_record": {b: round(v, 2) for b, v in per_record.items()},
            "rule": f"size: first within {gain:.0%} of the best ms/record; latency: {concurrency} requests x "
                    f"{records_per_request} records x ms/record at that size x {headroom}, at most {cap_ms} ms"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(target: str, cwd: Path, env: dict[str, str], log: Path, ready_s: float = 240) -> Iterator[str]:
    """`bentoml serve <target>` on a free loopback port; yields its URL once /readyz answers 200,
    stops it (SIGTERM, then SIGKILL after 30 s) on exit. Output goes to `log`."""
    import httpx

    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bentoml serve {target} exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} not ready after {ready_s} s; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


async def _closed_loop(url: str, bodies: list[bytes], concurrency: int, seconds: float | None,
                       requests: int | None) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request when the last is answered."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    stop = time.perf_counter() + seconds if seconds else math.inf
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.perf_counter() < stop and (requests is None or sent < requests):
            body = bodies[sent % len(bodies)]
            sent += 1
            start = time.perf_counter()
            try:
                resp = await http.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
                key = None if resp.status_code == 200 else str(resp.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            if key is None:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors[key] = errors.get(key, 0) + 1

    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "elapsed_s": elapsed}


def closed_loop(url: str, bodies: list[bytes], concurrency: int, seconds: float | None = None,
                requests: int | None = None) -> dict[str, Any]:
    return asyncio.run(_closed_loop(url, bodies, concurrency, seconds, requests))


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


def batch_size_metric(url: str) -> float | None:
    """Mean merged batch size from BentoML's Prometheus histogram (None before any batch)."""
    import httpx

    total = count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_sum{") and 'method_name="predict"' in line:
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("bentoml_service_adaptive_batch_size_count{") and 'method_name="predict"' in line:
            count += float(line.rsplit(" ", 1)[1])
    return round(total / count, 2) if count else None


def bench_serve(seconds: float, params_path: Path, work: Path, sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
                c1_requests: int = 40, repeats: int = 3) -> dict[str, Any]:
    from mmcore.predict import load_model
    from mmcore.stages.package import import_model

    os.environ["BENTOML_HOME"] = str(work / "bentoml")
    os.environ["PARCEL_MODEL_TAG"] = f"{MODEL_NAME}:v0"
    import service  # its settings, as configured: batching, and torch threads for the in-process figures
    import torch

    torch.set_num_threads(service.TORCH_THREADS)
    cfg = load_params(params_path).model
    model_dir = random_bundle(work / "model", cfg)
    plain_dir = random_bundle(work / "plain", cfg, routing=False)     # the same weights, no routing
    records = synthetic_records(max(2 + sum(sizes) * repeats, 4 * c1_requests, 96), seed=1)

    # the batch-size sweep first, with no server competing for the CPU
    ms_by_batch = inproc_ms_by_batch(load_model(model_dir), records, sizes, repeats)
    predictor = load_model(model_dir)
    predictor.predict([to_mmcore(r) for r in records[-3:]])

    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    env["PARCEL_MODEL_TAG"] = str(import_model(model_dir, MODEL_NAME, "0").tag)
    plain_tag = str(import_model(plain_dir, MODEL_NAME, "1").tag)
    env.pop("PARCEL_API_KEY", None)
    bodies = [json.dumps({"records": [r]}).encode() for r in records]
    warm = max(4, int(seconds / 5))
    with serving("service:ParcelCondition", ROOT, env, work / "logs" / "batched.log") as url:
        closed_loop(url, bodies, 1, requests=5)
        # in-process batch 1 right before and after the concurrency-1 run (server idle meanwhile),
        # so both see the same machine; the figure is the median of all those calls
        b1 = time_b1_ms(predictor, records[:c1_requests // 2])
        c1 = closed_loop(url, bodies, 1, requests=c1_requests)
        b1 += time_b1_ms(predictor, records[c1_requests // 2:c1_requests])
        inproc_b1_ms = float(np.median(b1))
        with serving("service:ParcelCondition", ROOT, {**env, "PARCEL_MODEL_TAG": plain_tag},
                     work / "logs" / "plain.log") as plain_url:
            routing = routing_cost(url, plain_url, bodies, c1_requests, load_model(model_dir),
                                   load_model(plain_dir), records)
        closed_loop(url, bodies, 32, seconds=warm)
        batched = closed_loop(url, bodies, 32, seconds=seconds)
        mean_batch = batch_size_metric(url)
    with serving("service:ParcelCondition", ROOT, {**env, "PARCEL_BATCHING": "0"}, work / "logs" / "unbatched.log") as url:
        closed_loop(url, bodies, 32, seconds=warm)
        unbatched = closed_loop(url, bodies, 32, seconds=seconds)

    p50_c1 = pct(c1["latencies"], 50)
    limit = 1.3 * inproc_b1_ms + 5
    rps_b = len(batched["latencies"]) / batched["elapsed_s"]
    rps_u = len(unbatched["latencies"]) / unbatched["elapsed_s"]
    return {
        "p50_ms_c1": p50_c1, "p95_ms_c1": pct(c1["latencies"], 95), "p99_ms_c32": pct(batched["latencies"], 99),
        "p50_ms_c32": pct(batched["latencies"], 50), "inproc_ms_b1": round(inproc_b1_ms, 1),
        "batched_rps_c32": round(rps_b, 2), "unbatched_rps_c32": round(rps_u, 2),
        "p50_c1_limit_ms": round(limit, 1), "p50_c1_ratio": round(p50_c1 / limit, 3), "goal_p50_c1_ratio_max": 1.0,
        "batching_speedup": round(rps_b / rps_u, 2) if rps_u else None, "goal_batching_speedup_min": 3.0,
        "routing": routing,
        "errors": {"c1": c1["errors"], "batched_c32": batched["errors"], "unbatched_c32": unbatched["errors"]},
        "requests": {"c1": len(c1["latencies"]), "batched_c32": len(batched["latencies"]),
                     "unbatched_c32": len(unbatched["latencies"])},
        "mean_merged_batch_c32": mean_batch, "seconds_per_c32_run": seconds,
        "inproc_ms_by_batch": {str(b): round(t, 1) for b, t in ms_by_batch.items()},
        "batching": {"derived": derive_batching(ms_by_batch),
                     "configured": {"max_batch_size": service.MAX_BATCH_SIZE, "max_latency_ms": service.MAX_LATENCY_MS}},
        "record": {"image": "224x224 JPEG", "sensor_rows": len(records[0]["sensor"]["t_s"]), "note": "one sentence"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch_threads": _torch_threads()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def time_b1_ms(predictor: Any, records: list[dict[str, Any]]) -> list[float]:
    """ms of each record's `predict` at batch 1, its embeddings computed afresh as serving does."""
    out = []
    for rec in records:
        predictor.featurizer.image_cache.mem.clear()
        predictor.featurizer.text_cache.mem.clear()
        start = time.perf_counter()
        predictor.predict([to_mmcore(rec)])
        out.append((time.perf_counter() - start) * 1000)
    return out


def routing_cost(url: str, plain_url: str, bodies: list[bytes], requests: int, routed: Any, plain: Any,
                 records: list[dict[str, Any]], rounds: int = 4) -> dict[str, Any]:
    """p50 at concurrency 1 with the sets, threshold and unimodal opinions (mmcore.selective) against the
    same weights without them, served side by side and in process, in alternating rounds (goal: <= 1.10)."""
    served: dict[str, list[float]] = {"routed": [], "plain": []}
    inproc: dict[str, list[float]] = {"routed": [], "plain": []}
    per = max(2, requests // rounds)
    for k in range(rounds):
        part = bodies[k * per:(k + 1) * per]
        served["routed"] += closed_loop(url, part, 1, requests=per)["latencies"]
        served["plain"] += closed_loop(plain_url, part, 1, requests=per)["latencies"]
        for name, pred in (("routed", routed), ("plain", plain)):
            inproc[name] += time_b1_ms(pred, records[k * per:(k + 1) * per])
    p50 = {k: pct(v, 50) for k, v in served.items()}
    ip50 = {k: float(np.median(v)) for k, v in inproc.items()}
    return {"p50_ms_c1": p50, "p50_c1_routing_ratio": round(p50["routed"] / p50["plain"], 3),
            "inproc_ms_b1": {k: round(v, 2) for k, v in ip50.items()},
            "inproc_routing_ratio": round(ip50["routed"] / ip50["plain"], 3), "goal_ratio_max": 1.10,
            "requests_each": len(served["routed"])}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serving benchmark (JSON report under reports/bench/).")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each concurrency-32 run")
    ap.add_argument("--c1-requests", type=int, default=40)
    ap.add_argument("--sizes", default="1,2,4,8,16,32,64", help="batch sizes timed in process")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/serve.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # service.py lives at the project root
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        result = bench_serve(args.seconds, args.params, Path(tmp), c1_requests=args.c1_requests,
                             sizes=tuple(int(b) for b in args.sizes.split(",")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    rows = [("in-process b1 ms", result["inproc_ms_b1"]), ("p50 c1 ms", result["p50_ms_c1"]),
            ("p95 c1 ms", result["p95_ms_c1"]),
            (f"p50 c1 / limit ({result['p50_c1_limit_ms']} ms; goal <= 1)", result["p50_c1_ratio"]),
            ("p99 c32 ms", result["p99_ms_c32"]), ("batched rps c32", result["batched_rps_c32"]),
            ("unbatched rps c32", result["unbatched_rps_c32"]),
            ("batched / unbatched (goal >= 3)", result["batching_speedup"]),
            ("mean merged batch c32", result["mean_merged_batch_c32"]),
            ("p50 c1 routed / plain (goal <= 1.10)", result["routing"]["p50_c1_routing_ratio"]),
            ("in-process b1 routed / plain", result["routing"]["inproc_routing_ratio"])]
    print(f"serve bench: {result['machine']['cpus']} cpus -> {args.out}")
    for name, value in rows:
        print(f"  {name:<42}{value:>10}")
    print(f"  batching derived {result['batching']['derived']['max_batch_size']}/"
          f"{result['batching']['derived']['max_latency_ms']} ms, configured "
          f"{result['batching']['configured']['max_batch_size']}/{result['batching']['configured']['max_latency_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
