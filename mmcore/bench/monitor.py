"""Monitoring benchmark behind `make bench` (reports/bench/monitor.json): what capture costs the
service, how long a window of 100,000 answers takes to judge, and how the embedding drift test
behaves with and without a shifted hub. Everything is measured in the same run.

    python -m mmcore.bench monitor --out reports/bench/monitor.json [--seconds 15 --resamples 1000]

- capture_overhead_p50, capture_overhead_rps (fractions; goal <= 0.05 each): the service with a
  seeded random-weight model (as mmcore.bench.serve), capture on (PARCEL_CAPTURE_SAMPLE=1) against
  off (=0), rounds in ABBA order so drift of the machine cancels: p50 latency at concurrency 1,
  requests/s at concurrency 32.
- window_100k_seconds (goal <= 60 on 2 cores), read_only_seconds (its limit): 100,000 capture log
  lines in the service's format, half labelled through the feed; the window's answers section and
  live quality (shipment bootstrap, per version and hub), plus the embedding drift test on the
  window's drift sample (`monitor.drift_records` records through the frozen encoders; the reference's
  embeddings are cached at training time and are not counted). read_only_seconds is reading the log.
- false_alarm_rate, false_alarm_upper (goal <= 0.05: the one-sided 95% Clopper-Pearson bound),
  detection_rate (goal >= 0.90 at a 20% new-hub share): real encoder embeddings of generated records,
  embedded once (`--usual` records from the usual hubs, `--shifted` from the `new_hub_alt` preset, not
  the `new_hub` the scenario uses) and resampled: `--resamples` windows without shift and
  `--shifted-resamples` per new-hub share, each of `monitor.drift_records` records drawn as whole
  shipments against `monitor.reference_records` of the other usual records, drawn as the monitor draws
  them (mmcore.monitor.window.reference_sample, the window's hub mix). A window alarms as the monitor's
  report does: an encoder's test significant at mmcore.monitor.window.ALPHA with its held-out AUC at
  `monitor.min_drift_auc`; test_alarm_rate counts significance alone, and drift.min_auc_sweep both
  rates at other minimum effects (how the default was chosen).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmcore.config import CLASSES, Params, load_params

PARTS = ("window", "drift", "capture")
GOALS = {"capture_overhead_p50": ("<=", 0.05), "capture_overhead_rps": ("<=", 0.05),
         "window_100k_seconds": ("<=", 60.0), "false_alarm_upper": ("<=", 0.05), "detection_rate": (">=", 0.90)}


def capture_overhead(work: Path, params: Params, seconds: float, c1_requests: int, rounds: int) -> dict[str, Any]:
    """Capture on against off on the same service, ABBA order; fractions of the off figures."""
    from mmcore.bench.serve import (BENCH_KEY, BIN, MODEL_NAME, ROOT, closed_loop, pct, random_bundle, serving,
                                    synthetic_records)
    from mmcore.stages.package import import_model

    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PARCEL_API_KEY": BENCH_KEY}
    os.environ["BENTOML_HOME"] = env["BENTOML_HOME"]
    env["PARCEL_MODEL_TAG"] = str(import_model(random_bundle(work / "model", params.model), MODEL_NAME, "0").tag)
    bodies = [json.dumps({"records": [r]}).encode() for r in synthetic_records(200, seed=3)]
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    order = [m for r in range(rounds) for m in (("off", "on") if r % 2 == 0 else ("on", "off"))]
    for i, mode in enumerate(tqdm(order, desc="capture on/off", unit="server")):
        menv = {**env, "PARCEL_CAPTURE_SAMPLE": "1" if mode == "on" else "0",
                "PARCEL_CAPTURE_DIR": str(work / f"capture-{i}")}
        with serving("service:ParcelCondition", ROOT, menv, work / "logs" / f"{i}-{mode}.log") as url:
            closed_loop(url, bodies, 1, requests=5)
            c1 = closed_loop(url, bodies, 1, requests=c1_requests)
            closed_loop(url, bodies, 32, seconds=max(3.0, seconds / 4))
            c32 = closed_loop(url, bodies, 32, seconds=seconds)
        runs[mode].append({"p50_ms_c1": pct(c1["latencies"], 50), "rps_c32": len(c32["latencies"]) / c32["elapsed_s"],
                           "errors": sum(c1["errors"].values()) + sum(c32["errors"].values())})
    mean = {m: {k: float(np.mean([r[k] for r in rs])) for k in ("p50_ms_c1", "rps_c32", "errors")}
            for m, rs in runs.items()}
    return {"capture_overhead_p50": round(mean["on"]["p50_ms_c1"] / mean["off"]["p50_ms_c1"] - 1, 4),
            "capture_overhead_rps": round(1 - mean["on"]["rps_c32"] / mean["off"]["rps_c32"], 4),
            "capture": {"runs": runs, "order": order, "seconds_per_c32_run": seconds, "c1_requests": c1_requests}}


def capture_log(root: Path, n: int, seed: int, start: datetime) -> Path:
    """`n` answers in the capture log's format (mmcore.serving.capture), in one data file."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(len(CLASSES), 0.5), size=n)
    data = root / "log" / "parcel_capture" / "data"
    data.mkdir(parents=True, exist_ok=True)
    with (data / "data.1.log").open("w") as f:
        for i in range(n):
            line = {"prediction_id": f"{i:032x}", "x_request_id": f"{i // 4:032x}",
                    "answered_at": (start + timedelta(milliseconds=30 * i)).isoformat(), "record_id": f"r{i}",
                    "shipment_id": f"s{i // 3}", "hub": f"H{i % 6}", "note": "box dented", "image": "0" * 64,
                    "sensor": "1" * 64, "label": CLASSES[int(probs[i].argmax())],
                    **{f"p_{c}": float(p) for c, p in zip(CLASSES, probs[i])},
                    "modalities": "image,note,sensor", "model_version": str(1 + (i * 2) // n), "latency_ms": 40.0}
            f.write(json.dumps(line) + "\n")
    return root


def window_100k(work: Path, params: Params, n: int) -> dict[str, Any]:
    """Reading and judging `n` captured answers (half labelled), and the drift sample's embeddings."""
    from mmcore.bench.serve import synthetic_records, to_mmcore
    from mmcore.features import Featurizer
    from mmcore.monitor.capture_batches import Period
    from mmcore.monitor.window import answers_section, capture_lines, encoder_drift, quality_section
    from mmcore.monitor import quality

    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    root = capture_log(work / "capture-100k", n, 0, start)
    period = Period(start, start + timedelta(days=2))
    t0 = time.perf_counter()
    lines = capture_lines([root], [period])
    read_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    truth = [CLASSES[int(rng.integers(len(CLASSES)))] for _ in range(n)]
    labelled = rng.random(n) < 0.5
    profile = pd.DataFrame({"record_id": [f"cap-{i:032x}" for i in range(n)],
                            "prediction_id": [f"{i:032x}" for i in range(n)],
                            "label": np.where(labelled, truth, None), "label_source": np.where(labelled, "claim", None),
                            "labelled_at": np.where(labelled, "2026-12-03T00:00:00+00:00", None),
                            "shipment_id": [f"s{i // 3}" for i in range(n)], "hub": [f"H{i % 6}" for i in range(n)]})
    records = [to_mmcore(r) for r in synthetic_records(params.monitor.drift_records, seed=5)]
    feat = Featurizer(params.model, cache_dir=work / "cache", batch_size=params.train.embed_batch_size)
    reference = [to_mmcore(r) for r in synthetic_records(400, seed=6)]
    feat.embed(reference)                              # cached, as the train split's are after training
    t1 = time.perf_counter()
    lines = capture_lines([root], [period])
    preds = quality.predictions(lines, list(CLASSES))
    gate = {"1": {"macro_f1": 0.88}, "2": {"macro_f1": 0.89}}
    answers = answers_section(preds, np.arange(500) % len(CLASSES), gate)
    live = quality_section(profile, preds, gate, params, seed=0)
    drift = encoder_drift(feat, reference, records, seed=0, min_auc=params.monitor.min_drift_auc)
    total_s = time.perf_counter() - t1
    return {"window_100k_seconds": round(total_s, 2), "read_only_seconds": round(read_s, 2),
            "window": {"answers": answers["answers"], "labelled_answers": live["labelled_answers"],
                       "versions": sorted(live["versions"]), "drift_sample": len(records),
                       "drift_tested": sorted(k for k, v in drift.items() if v.get("drift") is not None),
                       "n_boot": params.monitor.n_boot}}


def embedded_pool(work: Path, params: Params, usual_n: int, shifted_n: int, cache: Path) -> dict[str, Any]:
    """Generated records from the usual hubs and from a new one (`new_hub_alt`), landed through ingest
    and embedded once by the real frozen encoders; every window is then resampled from these."""
    from mmcore.synth.generate import generate_batch
    from mmcore.synth.shift import load_shift
    from mmcore.data.ingest import ingest
    from mmcore.data.raw import load_records
    from mmcore.features import Featurizer

    cfg = params.synth
    generate_batch(work / "landing", "usual", usual_n, cfg, seed=11)
    generate_batch(work / "landing", "newhub", shifted_n, dataclasses.replace(cfg, shift=load_shift("new_hub_alt")),
                   seed=12)
    ingest(work / "landing", work / "raw", work / "q", params.ingest, workers=1)
    profile, records = load_records(work / "raw")
    feat = Featurizer(params.model, cache_dir=cache, batch_size=params.train.embed_batch_size, progress=True,
                      backend=params.train.embed_backend)
    img, txt, has = feat.embed(records)
    return {"emb": {"image": img, "text": txt}, "has": has, "new": (profile["batch_id"] == "newhub").to_numpy(),
            "ship": profile["shipment_id"].astype(str).to_numpy(), "hub": profile["hub"].astype(str).to_numpy(),
            "ids": profile["record_id"].astype(str).to_numpy()}


def whole_shipments(rng: np.random.Generator, rows: np.ndarray, ship: np.ndarray, n: int) -> np.ndarray:
    """Rows of shipments in random order until `n` records: a window holds whole shipments."""
    if n <= 0:
        return rows[:0]
    rank = {s: i for i, s in enumerate(rng.permutation(np.unique(ship[rows])))}
    order = rows[np.argsort([rank[s] for s in ship[rows]], kind="stable")]
    return order[:n]


def window_finding(pool: dict[str, Any], params: Params, seed: int, shifted: int) -> dict[str, Any]:
    """One window as the monitor judges it: `drift_records` records (whole shipments, `shifted` of them
    from the new hub) against `reference_records` of the other usual records in the window's hub mix."""
    from mmcore.monitor.window import counted_drift, encoder_tests, reference_sample

    rng = np.random.default_rng(seed)
    cfg, ship = params.monitor, pool["ship"]
    usual, new = np.flatnonzero(~pool["new"]), np.flatnonzero(pool["new"])
    win = np.concatenate([whole_shipments(rng, usual, ship, cfg.drift_records - shifted),
                          whole_shipments(rng, new, ship, shifted)])
    rest = np.setdiff1d(usual, np.flatnonzero(np.isin(ship, ship[win])))   # no parcel on both sides
    frame = pd.DataFrame({"record_id": pool["ids"][rest], "hub": pool["hub"][rest], "row": rest})
    ref = frame.set_index("record_id").loc[reference_sample(frame, pd.Series(pool["hub"][win]),
                                                            cfg.reference_records, seed), "row"].to_numpy()
    emb, has = pool["emb"], pool["has"]
    res = encoder_tests({k: v[ref] for k, v in emb.items()}, has[ref], {k: v[win] for k, v in emb.items()}, has[win],
                        seed, (ship[ref], ship[win]), cfg.min_drift_auc)
    counted, _ = counted_drift(res)
    return {"alarm": any(v.get("drift") for v in res.values()), "counted": bool(counted),
            "tests": [(bool(v.get("drift")), float(v.get("auc", 0.5))) for v in res.values()]}


def upper95(k: int, n: int) -> float:
    """Clopper-Pearson one-sided 95% upper bound of a rate seen k times in n."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(0.95, k + 1, n - k))


def sweep(findings: list[dict[str, Any]], cut: float) -> float:
    """The share of windows that would count as drifting were `monitor.min_drift_auc` `cut`."""
    return float(np.mean([any(d and a >= cut for d, a in f["tests"]) for f in findings]))


def drift_rates(work: Path, params: Params, resamples: int, shifted_resamples: int, shares: tuple[float, ...],
                usual_n: int, shifted_n: int, cache: Path) -> dict[str, Any]:
    """False alarms over `resamples` no-shift windows and detections by new-hub share, at the monitor's
    own window and reference sizes; a window alarms as the monitor's report does: an encoder's drift
    with its held-out AUC at `monitor.min_drift_auc` (`false_alarm_rate`, `detection_rate`), or at
    any AUC (`test_alarm_rate`: the test's own level)."""
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    pool = embedded_pool(work, params, usual_n, shifted_n, cache)
    embed_s, n = time.perf_counter() - t0, params.monitor.drift_records
    # one BLAS thread: on a busy 2-core machine two threads per small matrix spin against each other (7x slower)
    with threadpool_limits(1):
        quiet = [window_finding(pool, params, s, 0) for s in tqdm(range(resamples), desc="no shift")]
        moved = {sh: [window_finding(pool, params, 10_000 * (i + 1) + s, int(round(sh * n)))
                      for s in tqdm(range(shifted_resamples), desc=f"{sh:.0%} new hub")]
                 for i, sh in enumerate(shares)}
    false, test_false = sum(f["counted"] for f in quiet), sum(f["alarm"] for f in quiet)
    detection = {f"{sh:.0%}": round(float(np.mean([f["counted"] for f in fs])), 4) for sh, fs in moved.items()}
    cuts = [0.5, 0.52, 0.54, 0.55, 0.56, 0.58, 0.6, 0.65, 0.7]
    return {"false_alarm_rate": round(false / resamples, 4), "false_alarm_upper": round(upper95(false, resamples), 4),
            "test_alarm_rate": round(test_false / resamples, 4),
            "test_alarm_upper": round(upper95(test_false, resamples), 4),
            "detection_rate": detection.get("20%"), "detection_by_share": detection,
            "drift": {"windows_no_shift": resamples, "windows_per_share": shifted_resamples,
                      "embed_seconds": round(embed_s, 1), "windows_seconds": round(time.perf_counter() - t0 - embed_s, 1),
                      "window": n, "reference": params.monitor.reference_records,
                      "min_drift_auc": params.monitor.min_drift_auc,
                      "usual_records": int((~pool["new"]).sum()), "shifted_records": int(pool["new"].sum()),
                      "shift_preset": "new_hub_alt", "test_units": "shipments",
                      "auc_no_shift_quantiles": {q: round(float(np.quantile([max(a for _, a in f["tests"])
                                                                              for f in quiet], q)), 4)
                                                 for q in (0.5, 0.9, 0.95, 0.99)},
                      "min_auc_sweep": {f"{c:.2f}": {"false_alarm_rate": round(sweep(quiet, c), 4),
                                                     **{f"detection_{sh:.0%}": round(sweep(fs, c), 4)
                                                        for sh, fs in moved.items()}} for c in cuts}}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmcore.bench monitor",
                                 description="Monitoring benchmark (JSON report under reports/bench/).")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each concurrency-32 run")
    ap.add_argument("--c1-requests", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2, help="capture off/on server pairs (ABBA order)")
    ap.add_argument("--answers", type=int, default=100_000)
    ap.add_argument("--resamples", type=int, default=1000, help="drift: windows without shift")
    ap.add_argument("--shifted-resamples", type=int, default=200, help="drift: windows per new-hub share")
    ap.add_argument("--shares", default="0.05,0.1,0.2,0.5", help="drift: new-hub shares of a window")
    ap.add_argument("--usual", type=int, default=3500, help="drift: generated usual-hub records to draw both from")
    ap.add_argument("--shifted", type=int, default=600, help="drift: generated new-hub records")
    ap.add_argument("--cache", type=Path, default=None,
                    help="drift: embedding cache to reuse (default: a fresh one, so embedding is timed too)")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/monitor.json"))
    ap.add_argument("--parts", default="window,drift,capture",
                    help="which parts to run; the others' figures are kept from --out if it exists")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    parts = set(args.parts.split(","))
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() and parts != set(PARTS) else {}
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        work = Path(tmp)
        runs = {"window": lambda: window_100k(work / "window", params, args.answers),
                "drift": lambda: drift_rates(work / "drift", params, args.resamples, args.shifted_resamples,
                                             tuple(float(x) for x in args.shares.split(",")), args.usual,
                                             args.shifted, args.cache or work / "drift-cache"),
                "capture": lambda: capture_overhead(work / "serve", params, args.seconds, args.c1_requests, args.rounds)}
        for part in PARTS:
            if part in parts:
                result.update(runs[part]())
                result.setdefault("measured_at", {})[part] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["goals"] = {k: {"op": op, "limit": lim, "met": (result[k] <= lim if op == "<=" else result[k] >= lim)}
                       for k, (op, lim) in GOALS.items() if k in result}
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"monitor bench -> {args.out}")
    for key, goal in result["goals"].items():
        print(f"  {key:<24}{result[key]:>10}  goal {goal['op']} {goal['limit']}: {'met' if goal['met'] else 'NOT met'}")
    if "read_only_seconds" in result:
        print(f"  {'read_only_seconds':<24}{result['read_only_seconds']:>10}")
    return 0

