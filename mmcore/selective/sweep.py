"""Abstention's choices, made on the validation split (never the gate set) and kept as a report.

    python -m mmcore.selective.sweep [--model artifacts/model] [--out reports/selective_sweep.json]

Needs the data and model of a `make run`. For each modality-disagreement detector: AUROC on synthetic
contradictions (a note or a trace swapped in from a record of another class) and the shares flagged at
the threshold calibrated on the calib split (`selective.detector` takes the best AUROC). For several
precision targets: the threshold Learn then Test certifies on the calib split, and the automation and
per-class precision it gives on val (what `selective.min_auto_precision` and `delta` trade), and each
class's precision among its most confident val predictions (the most any threshold could reach). Val is
what is scored here, so the temperature is fitted on half of the calib shipments (`scaling_split: calib`),
not on val as the train stage does by default.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmcore.config import CLASSES, load_params
from mmcore.evaluate import model_probs
from mmcore.features import Featurizer
from mmcore.model import ModelBundle
from mmcore.selective.calibrate import calibrate, scale
from mmcore.selective.decide import DETECTORS
from mmcore.selective.evaluate import contradiction_metrics, routing_metrics
from mmcore.selective.router import Router
from mmcore.stages.common import split_records, write_json

TARGETS = (0.90, 0.94, 0.97)


def _split(raw: Path, splits: Path, name: str, feat: Featurizer, fused: ModelBundle) -> tuple[Any, np.ndarray]:
    recs, labels = split_records(raw, splits, name)
    return feat.batch(recs, fused.sensor_mean, fused.sensor_std), np.array([CLASSES.index(x) for x in labels])


def precision_ceiling(probs: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float | int | None]]:
    """Per class, the precision on val of its most confident predictions (top 25 %, 50 %, all): what any
    threshold could reach. Labels that are wrong (synth.label_noise on the default data) cap it."""
    pred, top = probs.argmax(1), probs.max(1)
    out = {}
    for i, c in enumerate(CLASSES):
        conf = np.sort(top[pred == i])[::-1]
        right = (y[pred == i][np.argsort(-top[pred == i], kind="stable")] == i)
        out[c] = {"n": int(conf.size), **{f"top_{q}": float(right[:max(1, int(conf.size * q / 100))].mean())
                                          if conf.size else None for q in (25, 50, 100)}}
    return out


def sweep(params: Path, model: Path, raw: Path, splits: Path, cache: Path) -> dict[str, Any]:
    p = load_params(params)
    fused = ModelBundle.load(model)
    router = Router.load(model, fused)
    feat = Featurizer.for_bundle(fused, cache_dir=cache, batch_size=p.train.embed_batch_size, progress=True,
                                 backend=p.train.embed_backend)    # an int8 model's own graphs

    calib, yc = _split(raw, splits, "calib", feat, fused)
    val, yv = _split(raw, splits, "val", feat, fused)
    multimodal = (calib.mask.numpy() > 0).sum(1) >= 2
    pc, pv = model_probs(fused.model, calib), model_probs(fused.model, val)
    table = pd.read_parquet(splits)
    shipments = table.loc[table["split"] == "calib", "shipment_id"].astype(str).to_numpy()
    detectors = {}
    for det in DETECTORS:
        cal = calibrate(pc, yc, router.disagreement(calib, det), multimodal,
                        dataclasses.replace(p.selective, detector=det), shipments=shipments)
        detectors[det] = contradiction_metrics(router, val, yv, p.selective.contradiction_seed, det,
                                               cal.disagreement_threshold)
    targets = {}
    for target in TARGETS:
        cfg = dataclasses.replace(p.selective, min_auto_precision=target)
        cal = calibrate(pc, yc, np.zeros(len(yc)), multimodal, cfg, shipments=shipments)
        m = routing_metrics(scale(pv, cal), yv, np.zeros(len(yv)), cal, list(CLASSES))
        targets[str(target)] = {"confidence_thresholds": cal.confidence_thresholds, "mode": cal.info["mode"],
                                "why_uncertified": cal.info["why_uncertified"], "temperature": cal.temperature,
                                "val_automation_rate": m["automation_rate"],
                                "val_auto_precision_pooled": m["auto_precision_pooled"],
                                "val_auto_precision": m["auto_precision"]}
    ceiling = precision_ceiling(pv, yv)      # the top class and its ranking: the temperature changes neither
    best = max(detectors, key=lambda d: detectors[d].get("auroc") or 0.0)
    return {"split": "val", "calibrated_on": "calib", "calib_records": int(len(yc)), "val_records": int(len(yv)),
            "detectors": detectors, "best_detector": best, "configured_detector": p.selective.detector,
            "precision_targets": targets, "delta": p.selective.delta, "val_precision_of_most_confident": ceiling}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Abstention's settings on the validation split.")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--model", type=Path, default=Path("artifacts/model"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--splits", type=Path, default=Path("data/split/splits.parquet"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache"))
    ap.add_argument("--out", type=Path, default=Path("reports/selective_sweep.json"))
    args = ap.parse_args(argv)
    report = sweep(args.params, args.model, args.raw, args.splits, args.cache)
    write_json(args.out, report)
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for det, m in report["detectors"].items():
        print(f"detector {det:<14} AUROC {f(m.get('auroc'))}  flagged clean {f(m.get('clean_flag_rate'))}  "
              f"detected text {f((m.get('text') or {}).get('detected'))} "
              f"sensor {f((m.get('sensor') or {}).get('detected'))}")
    for target, t in report["precision_targets"].items():
        print(f"precision {target}: {t['mode']} thresholds {t['confidence_thresholds']} (uncertified: "
              f"{t['why_uncertified'] or 'none'}), val automation {f(t['val_automation_rate'])}, pooled precision "
              f"{f(t['val_auto_precision_pooled']['precision'])}")
    for c, v in report["val_precision_of_most_confident"].items():
        print(f"val precision of {c}'s most confident quarter {f(v['top_25'])}, half {f(v['top_50'])}, "
              f"all {f(v['top_100'])} (n={v['n']})")
    print(f"best detector on val: {report['best_detector']} "
          f"(configured: {report['configured_detector']}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
