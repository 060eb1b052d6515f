"""The serve bench's `abuse` part: what the costliest request of at most 1 MB costs the service, and
whether /healthz on the same server still answers meanwhile (issue 25: a 79 kB request cost 22 s).

    python -m mmcore.bench abuse --out reports/bench/serve.json   # the key `abuse`; the other figures are kept

Requests built up to the limits of mmcore/serving/limits.py (palette, alpha, 16-bit, RGB PNG and JPEG
images filling the per-image limit or the request's decoded-pixel budget, palette bombs past both,
many small images at the record limit, long notes, long sensor traces, deep JSON), each at most
`MAX_BYTES`, are sent one at a time, `repeats` times each, to the service with a seeded random-weight
model, while one client asks /healthz every `HEALTHZ_EVERY_S`. Figures: each request's status and
seconds (median of its repeats: the machine is shared); `max_request_seconds`, the worst median (goal
<= 2 s) and which request it was; `healthz_p99_ms` over the polls made while those requests ran (goal
<= 100 ms).
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

MAX_BYTES = 1_000_000
HEALTHZ_EVERY_S = 0.02
GOALS = {"max_request_seconds": 2.0, "healthz_p99_ms": 100.0}


def flat_image(mode: str, side: int, fmt: str = "PNG") -> bytes:
    """A one-colour `side` x `side` image: a few kB of file for any number of pixels (how a bomb is made)."""
    from PIL import Image

    if mode == "I;16":
        img = Image.fromarray(np.full((side, side), 1000, np.uint16))
    else:
        img = Image.new(mode, (side, side))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def side_for(megapixels: float, count: int, factor: int) -> int:
    """The largest square side such that `count` images of it count at most `megapixels` decoded."""
    return math.isqrt(int(megapixels * 1e6 / (count * factor)))


def body(records: list[dict[str, Any]]) -> bytes:
    return json.dumps({"records": records}, separators=(",", ":")).encode()


def images_body(data: bytes, count: int) -> bytes:
    return body([{"record_id": f"a{i}", "image": base64.b64encode(data).decode()} for i in range(count)])


def most_records(make: Callable[[int], dict[str, Any]], limit: int, max_bytes: int = MAX_BYTES) -> bytes:
    """As many records from `make(i)` as fit both `limit` and `max_bytes`."""
    records: list[dict[str, Any]] = []
    size = len(body([]))
    while len(records) < limit:
        rec = make(len(records))
        size += len(json.dumps(rec, separators=(",", ":"))) + 1
        if size > max_bytes:
            break
        records.append(rec)
    return body(records)


def requests(budget_mp: float, image_mp: float, max_records: int, max_note: int, max_rows: int,
             max_bytes: int = MAX_BYTES) -> dict[str, bytes]:
    """The abusive requests, by name, each at most `max_bytes`: legal ones at the limits, and bombs past them."""
    tiny = flat_image("RGB", 32, "JPEG")
    rows = [round(0.5 + (i % 7) / 10, 1) for i in range(max_rows)]
    sensor = {c: rows for c in ("temperature_c", "humidity_pct", "shock_g", "light_lux")}
    out = {
        "palette_bombs_6300px": images_body(flat_image("P", 6300), 16),   # issue 25: 16 of them cost 22 s
        "palette_at_image_limit": images_body(flat_image("P", side_for(image_mp, 1, 2)), 1),
        "palette_x2_at_budget": images_body(flat_image("P", side_for(budget_mp, 2, 2)), 2),
        "palette_x16_at_budget": images_body(flat_image("P", side_for(budget_mp, 16, 2)), 16),
        "palette_x2_over_budget": images_body(flat_image("P", side_for(image_mp, 1, 2)), 2),
        "rgba_png_x2_at_budget": images_body(flat_image("RGBA", side_for(budget_mp, 2, 2)), 2),
        "grey16_png_x2_at_budget": images_body(flat_image("I;16", side_for(budget_mp, 2, 2)), 2),
        "rgb_png_at_image_limit": images_body(flat_image("RGB", side_for(image_mp, 1, 1)), 1),
        "rgb_png_x2_at_budget": images_body(flat_image("RGB", side_for(budget_mp, 2, 1)), 2),
        "jpeg_at_half_budget": images_body(flat_image("RGB", side_for(budget_mp, 2, 1), "JPEG"), 1),
        "small_images_at_record_limit": most_records(
            lambda i: {"record_id": f"s{i}", "image": base64.b64encode(tiny).decode(), "note": "box dented"},
            max_records, max_bytes),
        "long_notes": most_records(lambda i: {"note": (f"{i} " + "wet side, " * (max_note // 10))[:max_note]},
                                   max_records, max_bytes),
        "long_sensor_traces": most_records(lambda i: {"sensor": sensor}, max_records, max_bytes),
        "deep_json": b'{"records":' + b"[" * (max_bytes - 12) + b"}",
    }
    return {k: v for k, v in out.items() if len(v) <= max_bytes}


async def _run(url: str, bodies: dict[str, bytes], repeats: int, key: str) -> dict[str, Any]:
    import httpx

    healthz: list[float] = []
    during: dict[str, list[float]] = {}   # the same polls by the request that was running
    running = [""]
    done = asyncio.Event()

    async def poll(http: httpx.AsyncClient) -> None:
        while not done.is_set():
            start, name = time.perf_counter(), running[0]
            await http.get(f"{url}/healthz")
            healthz.append((time.perf_counter() - start) * 1000)
            during.setdefault(name, []).append(healthz[-1])
            await asyncio.sleep(HEALTHZ_EVERY_S)

    per: dict[str, dict[str, Any]] = {}
    headers = {"content-type": "application/json", "x-api-key": key}
    async with httpx.AsyncClient(timeout=300) as http, httpx.AsyncClient(timeout=30) as health:
        poller = asyncio.create_task(poll(health))
        for name, content in bodies.items():
            running[0] = name
            seconds, statuses = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                resp = await http.post(f"{url}/predict", content=content, headers=headers)
                seconds.append(round(time.perf_counter() - start, 3))
                statuses.append(resp.status_code)
            per[name] = {"bytes": len(content), "status": sorted(set(statuses)), "seconds": seconds,
                         "median_s": round(float(np.median(seconds)), 3), "answer": resp.text[:240]}
        done.set()
        await poller
    for name, polls in during.items():
        if name in per:
            per[name]["healthz_max_ms"] = round(max(polls), 1)
    return {"requests": per, "healthz_ms": healthz}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """The two figures with their goals, and which request was the worst."""
    per, healthz = run["requests"], run["healthz_ms"]
    worst = max(per, key=lambda k: per[k]["median_s"])
    figures = {"max_request_seconds": per[worst]["median_s"],
               "healthz_p99_ms": round(float(np.percentile(healthz, 99)), 1) if healthz else None}
    goals = {k: {"op": "<=", "limit": GOALS[k], "met": v is not None and v <= GOALS[k]} for k, v in figures.items()}
    return {**figures, "worst_request": worst, "goals": goals, "healthz_polls": len(healthz),
            "healthz_max_ms": round(max(healthz), 1) if healthz else None, "requests": per}


def bench_abuse(params_path: Path, work: Path, repeats: int = 3) -> dict[str, Any]:
    """The abuse figures against a served random-weight model (the serve bench's model and server)."""
    from mmcore.bench.serve import (BENCH_KEY, BIN, MODEL_NAME, ROOT, exported_bundle, serving, shipped_int8,
                                    synthetic_records)
    from mmcore.config import load_params

    os.environ["BENTOML_HOME"] = str(work / "bentoml")   # as bench_serve sets it for the same `work`
    from mmcore.serving import limits
    from mmcore.stages.package import import_model

    model_dir = work / "model"
    exported_bundle(model_dir, load_params(params_path).model, work / "cache", synthetic_records(32, seed=2),
                    shipped_int8(ROOT / "reports" / "package.json"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARCEL_")}
    env.update(BENTOML_HOME=os.environ["BENTOML_HOME"], BENTOML_DO_NOT_TRACK="True", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PATH=f"{BIN}:{os.environ.get('PATH', '')}",
               PARCEL_MODEL_TAG=str(import_model(model_dir, MODEL_NAME, "0").tag), PARCEL_API_KEY=BENCH_KEY,
               PARCEL_MAX_REQUEST_MEGAPIXELS=str(limits.MAX_REQUEST_MEGAPIXELS))   # what the bodies are built for
    bodies = requests(limits.MAX_REQUEST_MEGAPIXELS, limits.MAX_IMAGE_PIXELS / 1e6, limits.MAX_RECORDS,
                      limits.MAX_NOTE_CHARS, limits.MAX_SENSOR_ROWS)
    with serving("service:ParcelCondition", ROOT, env, work / "logs" / "abuse.log") as url:
        load_before = os.getloadavg()[0]
        run = asyncio.run(_run(url, bodies, repeats, BENCH_KEY))
    return {**summarise(run), "max_bytes": MAX_BYTES, "repeats": repeats,
            "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
                                "cpus": os.cpu_count()},   # a shared machine: how busy it was
            "limits": {"request_megapixels": limits.MAX_REQUEST_MEGAPIXELS,
                       "image_megapixels": limits.MAX_IMAGE_PIXELS / 1e6, "records": limits.MAX_RECORDS},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m mmcore.bench abuse",
                                 description="The costliest requests of at most 1 MB (key `abuse` of the serve report).")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/serve.json"))
    args = ap.parse_args(argv)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        result["abuse"] = abuse = bench_abuse(args.params, Path(tmp), args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"abuse: worst {abuse['worst_request']} {abuse['max_request_seconds']} s (goal <= 2), "
          f"healthz p99 {abuse['healthz_p99_ms']} ms (goal <= 100) -> {args.out}")
    return 0
