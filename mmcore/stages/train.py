"""train stage: the fused model and its unimodal baselines, same data, same budget; logged to MLflow."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from dataclasses import asdict
from typing import Any

import numpy as np

from mmcore.config import CLASSES, Params, load_params
from mmcore.data.raw import load_profile
from mmcore.features import INT8_KEY, Featurizer
from mmcore.leak import fit_rows
from mmcore.evaluate import model_probs
from mmcore.model import MODALITIES, ModelBundle
from mmcore.selective.calibrate import calibrate
from mmcore.selective.router import Router
from mmcore.serving.int8 import INT8_DIR, calibration_images, carry_graphs
from mmcore.stages import int8_choice
from mmcore.stages.common import data_version, split_records, write_json
from mmcore.fit import History
from mmcore.train import checkpoint_path, train_bundle

MIN_CALIB_RECORDS = 20


def log_run(params_raw: dict, hists: dict[str, History], model_dir: Path, model_name: str,
            experiment: str, data_ver: str, reference: pd.DataFrame | None = None,
            fitted: pd.DataFrame | None = None) -> tuple[str, str]:
    """One MLflow run per training: params, curves, tags; the fused model registered. Returns (run_id, version).

    `reference` (the training split's profile rows) is logged with the run: once this
    version is champion, validate measures drift of new data against it. `fitted` (ids and
    content hashes of the train and val records) lets evaluate prove the gate set held out."""
    import mlflow
    from mlflow.entities import Metric

    from mmcore import registry

    registry.setup(experiment)
    params_hash = hashlib.sha256(json.dumps(params_raw, sort_keys=True).encode()).hexdigest()[:12]
    flat = {f"{sec}.{k}": v for sec in ("model", "train") for k, v in params_raw[sec].items()}
    with mlflow.start_run() as run:
        mlflow.log_params(flat)
        mlflow.set_tags({"data_version": data_ver, "git_commit": registry.git_commit(),
                         "params_hash": params_hash})
        now = int(time.time() * 1000)
        metrics = [Metric(f"{name}_{key}", float(v), now, step)
                   for name, h in hists.items() for key in ("train_loss", "val_macro_f1")
                   for step, v in zip(h.epoch, getattr(h, key))]
        registry.client().log_batch(run.info.run_id, metrics=metrics)
        if reference is not None:
            registry.log_reference(reference)
        if fitted is not None:
            registry.log_reference(fitted, registry.FIT_FILE)
        version = registry.log_model(model_dir, model_name)
        registry.client().set_model_version_tag(model_name, version, "data_version", data_ver)
        registry.client().set_model_version_tag(model_name, version, "params_hash", params_hash)
    return run.info.run_id, version


def calibrate_routing(args: argparse.Namespace, p: Params, feat: Featurizer,
                      bundles: dict[str, ModelBundle], out: Path | None = None) -> dict[str, Any]:
    """The unimodal models into the fused model's directory, and abstention calibrated on the calib split
    (mmcore.selective): both travel with the registered version to the service."""
    fused, out = bundles["fused"], out or args.out
    Router.save_opinions(out, {m: bundles[m] for m in MODALITIES})
    recs, labels = split_records(args.raw, args.splits, "calib")
    if len(recs) < MIN_CALIB_RECORDS:
        print(f"train: WARNING only {len(recs)} calib records (need {MIN_CALIB_RECORDS}): the model is not "
              "calibrated and every answer goes to review; raise split.calib_fraction or add labelled data",
              file=sys.stderr)
        return {"records": len(recs), "calibrated": False}
    router = Router.load(out, fused)
    router.detector = p.selective.detector
    batch = feat.batch(recs, fused.sensor_mean, fused.sensor_std)
    probs = model_probs(fused.model, batch)
    present = router.opinion_probs(batch)[1]
    y = np.array([CLASSES.index(lbl) for lbl in labels])
    table = pd.read_parquet(args.splits)
    shipments = table.loc[table["split"] == "calib", "shipment_id"].astype(str).to_numpy()   # split_records' order
    scaling = None
    if p.selective.scaling_split == "val":
        val_recs, val_labels = split_records(args.raw, args.splits, "val")
        scaling = (model_probs(fused.model, feat.batch(val_recs, fused.sensor_mean, fused.sensor_std)),
                   np.array([CLASSES.index(lbl) for lbl in val_labels]))
    cal = calibrate(probs, y, router.disagreement(batch), present.sum(1) >= 2, p.selective, shipments=shipments,
                    scaling=scaling)
    cal.save(out)
    print(f"train: calibrated on {len(y)} calib records: temperature {cal.temperature} fitted on "
          f"{cal.info['scaling_records']} {cal.info['scaling_split']} records; on {cal.info['threshold_records']} "
          "calib records set quantile "
          f"{cal.set_quantile:.4f}, {cal.info['mode']} confidence thresholds {cal.confidence_thresholds}; "
          f"disagreement threshold {cal.disagreement_threshold}")
    for name, why in cal.info["why_uncertified"].items():
        print(f"train: WARNING no confidence threshold certified ({name}): {why}. Those answers all go to review "
              "until the calib split grows (review labels feed it) or selective.min_auto_precision / delta change",
              file=sys.stderr)
    return {"records": len(y), "calibrated": True, "why_uncertified": cal.info["why_uncertified"],
            "threshold_mode": cal.info["mode"], **{k: v for k, v in asdict(cal).items() if k != "info"}}


def fp32_opinion(modality: str, chosen: ModelBundle, int8: list[str], train: Any) -> ModelBundle:
    """The fp32 pipeline's unimodal model: the chosen pipeline's when its modality's encoder is not int8
    (same embeddings, same seeded training: the same model), else `train(modality)`."""
    if modality in int8:
        return train(modality)
    return dataclasses.replace(chosen, extra={k: v for k, v in chosen.extra.items() if k != INT8_KEY})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the fused model and the unimodal baselines.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="model directory of the fused model")
    ap.add_argument("--unimodal", type=Path, required=True)
    ap.add_argument("--fallback", type=Path, default=Path("artifacts/model-fp32"),
                    help="the fp32 pipeline's model when the model is trained on int8 encoders")
    ap.add_argument("--report", type=Path, required=True)
    args = ap.parse_args(argv)
    from mmcore import registry

    try:
        with registry.reachable(f"Nothing was registered; the checkpoints under {args.cache / 'checkpoints'} "
                                "stay, so train again once the server answers and it resumes from them"):
            return run(args)
    except registry.TrackingUnavailable as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 3


def run(args: argparse.Namespace) -> int:
    p = load_params(args.params)
    from mmcore import registry

    registry.setup(p.registry.experiment)       # an unreachable server fails here, before hours of training
    torch.set_num_threads(max(1, torch.get_num_threads()))
    feat = Featurizer(p.model, cache_dir=args.cache, batch_size=p.train.embed_batch_size, progress=True,
                      backend=p.train.embed_backend)
    train_recs, train_y = split_records(args.raw, args.splits, "train")
    val_recs, val_y = split_records(args.raw, args.splits, "val")
    hists, ckpts, bundles = {}, [], {}

    def fit(name: str, featurizer: Featurizer, mods: tuple[str, ...] = MODALITIES) -> tuple[ModelBundle, History]:
        mcfg = dataclasses.replace(p.model, modalities=tuple(mods))
        ckpt = checkpoint_path(args.cache / "checkpoints", name, mcfg, p.train, [r["record_id"] for r in train_recs])
        if ckpt.is_file():
            print(f"train[{name}]: resuming from the checkpoint {ckpt.name} (a run that stopped mid-way left it)",
                  flush=True)
        bundle, hist = train_bundle(featurizer, train_recs, train_y, val_recs, val_y, mcfg, p.train, ckpt,
                                    progress=True)
        ckpts.append(ckpt)
        if featurizer.int8:     # the graphs its embeddings came from: every later reader embeds through them
            bundle.extra = {**bundle.extra, INT8_KEY: featurizer.int8}
        print(f"train[{name}]: best val macro-F1 {hist.best_val_macro_f1:.3f} at epoch {hist.best_epoch}")
        return bundle, hist

    shutil.rmtree(args.fallback, ignore_errors=True)     # a previous run's fp32 model is not this run's
    fp32 = fit("fused", feat)
    images = calibration_images(train_recs, p.serve.calibration_images)
    decision, chosen_feat, (bundles["fused"], hists["fused"]) = int8_choice.choose(
        p, feat, fp32, (val_recs, val_y), images, fit)
    print(f"train: int8 {'chosen' if decision['chosen'] else 'not chosen'}: {decision['reason']}")
    for m in MODALITIES:
        bundles[m], hists[m] = fit(m, chosen_feat, (m,))
        bundles[m].save(args.unimodal / m)
    bundles["fused"].save(args.out)
    if decision["chosen"]:
        from mmcore.serving.onnx_encoders import encoder_exports

        carry_graphs(decision["sha256"], [encoder_exports(feat, feat.onnx_cache)[0] / INT8_DIR], args.out)
    write_json(args.out / int8_choice.DECISION_FILE, {**decision, "margins": int8_choice.margins(p)})
    calibration = calibrate_routing(args, p, chosen_feat, bundles)
    fallback = None
    if decision["chosen"]:   # the fp32 pipeline's model, kept for the gate set's check (mmcore.stages.evaluate)
        kept = {"fused": fp32[0], **{m: fp32_opinion(m, bundles[m], decision["encoders"], lambda m: fit(
            f"{m}-fp32", feat, (m,))[0]) for m in MODALITIES}}
        fp32[0].save(args.fallback)
        calibrate_routing(args, p, feat, kept, args.fallback)
        fallback = args.fallback
    else:
        args.fallback.mkdir(parents=True, exist_ok=True)
        write_json(args.fallback / "README.json", {"fp32_fallback": None, "reason": "the model is fp32 already"})
    profile = load_profile(args.raw)
    reference = profile[profile["record_id"].isin({r["record_id"] for r in train_recs})]
    fitted = fit_rows(profile, pd.read_parquet(args.splits))
    run_id, version = log_run(p.raw, hists, args.out, p.registry.model_name, p.registry.experiment,
                              data_version(args.raw), reference, fitted)
    write_json(args.report, {"run_id": run_id, "model_version": version, "train_records": len(train_y),
                             "val_records": len(val_y), "embedded_now": feat.embedded,
                             "embedded_now_int8": chosen_feat.embedded if chosen_feat is not feat else None,
                             "calibration": calibration,
                             "best_val_macro_f1": {k: h.best_val_macro_f1 for k, h in hists.items()},
                             "int8": {**decision, "margins": int8_choice.margins(p),
                                      "fp32_fallback": str(fallback) if fallback else None}})
    for ckpt in ckpts:  # the stage is complete: a rerun must train afresh, not resume
        ckpt.unlink(missing_ok=True)
    print(f"train: registered {p.registry.model_name} version {version} (run {run_id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
