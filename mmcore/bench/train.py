"""Training and inference benchmark behind `make bench` (reports/bench/train.json).

    python -m mmcore.bench train --out reports/bench/train.json [--records 600 --epochs 10]

Training samples per second through the real data path (records read back from data/raw,
the featurizer with its warm caches, then `fit`) are set against the compute-only limit
measured in the same run: the same model, batch and epochs on tensors already in memory.
The main job's strategy (params.yaml) is measured at `--records`; a fine-tuning strategy
(encoders in the loop, decoded-image cache) at `--finetune-records`. On CUDA, full fine-tuning
(`train.strategy: full`, bf16 autocast) at `--full-records` is judged against 4,000 samples/s; on CPU
it is skipped with its reason. The device, whether bf16 autocast was on and the peak memory (CUDA
allocated, or the process's RSS on CPU) are recorded. Inference runs the whole path a request takes
(decode, encoders, head) at batch 1 and batch 64.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmcore.config import Params, TrainConfig, load_params
from mmcore.encoders import default_device
from mmcore.features import Featurizer, sensor_stats
from mmcore.fit import fit
from mmcore.model import ModelBundle
from mmcore.predict import Predictor
from mmcore.serving.runtime import threads_setting
from mmcore.train import encode_labels, train_bundle

FULL_GOAL = 4000.0   # full fine-tuning samples/s on an H100-class card at the default image size (CUDA only)


def landed_records(n: int, p: Params, work: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Generated landing batches, ingested into a raw dataset and read back as training does."""
    from mmcore.data.ingest import ingest
    from mmcore.data.raw import load_records
    from mmcore.synth.generate import generate_default
    from mmcore.encoders import load_tokenizer

    generate_default(work / "landing", dataclasses.replace(p.synth, batches=1, records_per_batch=n))
    ingest(work / "landing", work / "raw", work / "quarantine", p.ingest, tokenizer=load_tokenizer())
    profile, records = load_records(work / "raw")
    keep = profile["label"].notna().to_numpy()
    return [r for r, k in zip(records, keep) if k], list(profile["label"][keep])


def training(recs: list[dict[str, Any]], labels: list[str], p: Params, tcfg: TrainConfig,
             cache: Path, repeats: int = 3) -> dict[str, Any]:
    """Samples/s of train_bundle from records vs fit on prebuilt tensors; same model, batch, epochs.

    The two alternate `repeats` times and each keeps its fastest run: on a shared machine a
    single pair measures the neighbours as much as the code."""
    cut = int(len(recs) * 0.8)
    (tr, ytr), (va, yva) = (recs[:cut], labels[:cut]), (recs[cut:], labels[cut:])
    warm = Featurizer(p.model, cache_dir=cache, batch_size=p.train.embed_batch_size)
    make = warm.batch if tcfg.strategy == "frozen" else warm.raw_batch
    make(recs, *sensor_stats(*warm.sensors(recs)))
    mean, std = sensor_stats(*warm.sensors(tr))
    train_b, val_b = make(tr, mean, std), make(va, mean, std)
    real_s, limit_s, epoch_s, epochs = float("inf"), float("inf"), float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        feat = Featurizer(p.model, cache_dir=cache, batch_size=p.train.embed_batch_size)
        _, hist = train_bundle(feat, tr, ytr, va, yva, p.model, tcfg)
        real_s = min(real_s, time.perf_counter() - start)
        epoch_s = min(epoch_s, statistics.median(hist.epoch_s[1:] or hist.epoch_s))
        start = time.perf_counter()
        _, hist_limit = fit(train_b, encode_labels(ytr), val_b, encode_labels(yva), p.model, tcfg)
        limit_s = min(limit_s, time.perf_counter() - start)
        epochs = len(hist.epoch)
        if len(hist_limit.epoch) != epochs:
            raise RuntimeError(f"the two paths trained {epochs} and {len(hist_limit.epoch)} epochs: not comparable")
    real, limit = len(tr) * epochs / real_s, len(tr) * epochs / limit_s
    return {"strategy": tcfg.strategy, "train_records": len(tr), "epochs": epochs, "repeats": repeats,
            "samples_per_s": round(real, 1), "compute_limit_samples_per_s": round(limit, 1),
            "ratio": round(real / limit, 3), "steady_samples_per_s": round(len(tr) / epoch_s, 1)}


def inference(bundle: ModelBundle, recs: list[dict[str, Any]], n_single: int = 16) -> dict[str, float]:
    """Records/s through the whole request path (no embedding cache) at batch 1 and batch 64,
    on the service's thread count (PARCEL_THREADS, default 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_setting())
    try:
        return {**_inference(bundle, recs, n_single), "torch_threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(threads)


def _inference(bundle: ModelBundle, recs: list[dict[str, Any]], n_single: int) -> dict[str, float]:
    feat = Featurizer.for_bundle(bundle, cache_dir=None)
    pred = Predictor(bundle, feat)

    def run(batch: list[dict[str, Any]]) -> None:
        feat.image_cache.mem.clear()
        feat.text_cache.mem.clear()
        pred.predict(batch)

    run(recs[:2])                                               # warm-up: encoders loaded
    start = time.perf_counter()
    for r in recs[:n_single]:
        run([r])
    b1 = n_single / (time.perf_counter() - start)
    big = (recs * (64 // max(1, len(recs)) + 1))[:64]
    start = time.perf_counter()
    run(big)
    return {"records_per_s_b1": round(b1, 1), "records_per_s_b64": round(64 / (time.perf_counter() - start), 1)}


def peak_mem_mb(device: str) -> float:
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)   # process peak RSS (KiB)


def full_finetune(recs: list[dict[str, Any]], labels: list[str], p: Params, tcfg: TrainConfig, cache: Path,
                  device: str) -> dict[str, Any]:
    """Full fine-tuning (both encoders train, bf16 autocast) at the default image size, judged against
    FULL_GOAL on CUDA only. Steady pace: training records over the median epoch after the first (cuDNN's
    and the allocator's warm-up), validation included; `samples_per_s` and the ratio span whole runs.

    On CPU it is skipped: both encoders in the loop run a few samples a second there, and the goal is an
    H100-class card's."""
    head = {"strategy": "full", "image_size": p.model.image_size, "goal_samples_per_s": FULL_GOAL}
    if device != "cuda":
        return {**head, "judged": False, "skipped": "no CUDA device: full fine-tuning is measured and judged on a GPU"}
    figures = training(recs, labels, p, tcfg, cache, repeats=2)
    return {**head, **figures, "judged": True, "goal_met": figures["steady_samples_per_s"] >= FULL_GOAL,
            "peak_mem_mb": peak_mem_mb(device), "peak_mem_kind": "cuda allocated, since the bench began"}


def bench(records: int, epochs: int, ft_records: int, ft_strategy: str, params: Path, work: Path,
          full_records: int = 2000, full_epochs: int = 6) -> dict[str, Any]:
    p = load_params(params)
    device = default_device()
    recs, labels = landed_records(max(records, full_records) if device == "cuda" else records, p, work)
    tcfg = dataclasses.replace(p.train, epochs=epochs, patience=epochs, nproc=1)
    main = training(recs[:records], labels[:records], p, tcfg, work / "cache")
    ft_cfg = dataclasses.replace(tcfg, strategy=ft_strategy, epochs=1, patience=1)
    finetune = training(recs[:ft_records], labels[:ft_records], p, ft_cfg, work / "cache")
    full = full_finetune(recs[:full_records], labels[:full_records], p,
                         dataclasses.replace(tcfg, strategy="full", epochs=full_epochs, patience=full_epochs),
                         work / "cache", device)
    k = min(64, len(recs) * 2 // 3)                 # a one-epoch model: inference cost does not depend on weights
    bundle, _ = train_bundle(Featurizer(p.model, cache_dir=work / "cache"), recs[:k], labels[:k],
                             recs[k:k + 32], labels[k:k + 32], p.model, dataclasses.replace(tcfg, epochs=1))
    return {**main, "finetune": finetune, "full_finetune": full, "inference": inference(bundle, recs[:64]),
            "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "bf16_autocast": torch.device(device).type == "cuda",      # mmcore.encoders.autocast: CUDA only
            "peak_mem_mb": peak_mem_mb(device), "peak_mem_kind": "cuda allocated" if device == "cuda" else "process RSS",
            "goal_ratio": 0.85, "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmcore.bench train",
                                 description="Training and inference benchmark (reports/bench/train.json).")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--finetune-records", type=int, default=48)
    ap.add_argument("--finetune-strategy", default="top_k", choices=["top_k", "full", "lora"])
    ap.add_argument("--full-records", type=int, default=2000, help="full fine-tuning's records (CUDA only)")
    ap.add_argument("--full-epochs", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/train.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        r = bench(args.records, args.epochs, args.finetune_records, args.finetune_strategy, args.params, Path(tmp),
                  args.full_records, args.full_epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2))
    ft, inf = r["finetune"], r["inference"]
    print(f"train bench on {r['device']} -> {args.out}")
    print(f"  {r['strategy']:<8} {r['samples_per_s']:>9} samples/s  limit {r['compute_limit_samples_per_s']:>9}"
          f"  ratio {r['ratio']} (goal >= {r['goal_ratio']})")
    print(f"  {ft['strategy']:<8} {ft['samples_per_s']:>9} samples/s  limit {ft['compute_limit_samples_per_s']:>9}"
          f"  ratio {ft['ratio']}")
    full = r["full_finetune"]
    print(f"  full     {full['skipped']}" if "skipped" in full else
          f"  full     {full['steady_samples_per_s']:>9} samples/s steady (goal >= {full['goal_samples_per_s']:.0f},"
          f" {'met' if full['goal_met'] else 'NOT met'}), {full['peak_mem_mb']} MB")
    print(f"  inference {inf['records_per_s_b1']} rec/s at batch 1, {inf['records_per_s_b64']} at batch 64;"
          f" peak memory {r['peak_mem_mb']} MB ({r['peak_mem_kind']})")
    return 0

