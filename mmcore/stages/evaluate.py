"""evaluate stage: challenger, unimodal baselines and the current champion on the same gate set.

Both fused models get the same numbers, on the probabilities each serves (its calibration's temperature
applied): macro-F1, accuracy, per-class, confusion, ECE, class-wise ECE (overall and per modality pattern),
per-modality ablation, slices, behavioural suites on the same perturbed records (mmcore.behaviour),
CPU latency at batch 1); the paired bootstrap of their macro-F1 difference is computed here, so the
gate only reads reports/metrics.json.
Plots go to `--plots` (DVC plot data + PNGs) and, as PNGs, to the training run in MLflow.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmcore import behaviour, plots
from mmcore.config import CLASSES, EvaluateConfig, load_params
from mmcore.data.raw import load_profile, load_records
from mmcore.bootstrap import ece_classwise_interval, paired_bootstrap
from mmcore.evaluate import (ablation, ablation_report, ece_classwise, macro_f1, model_probs, percentiles_ms,
                             reliability, score, slice_scores)
from mmcore.features import INT8_KEY, Featurizer
from mmcore.leak import fit_rows, leak_message, overlap
from mmcore.model import MODALITIES, Batch, ModelBundle
from mmcore.predict import Predictor
from mmcore.selective.evaluate import goals as selective_goals
from mmcore.monitor.quality import estimated_quality
from mmcore.selective.calibrate import scale
from mmcore.selective.evaluate import selective_section
from mmcore.selective.router import Router
from mmcore.stages import int8_choice
from mmcore.stages.common import read_json, write_json

CURVE_SUFFIXES = ("_train_loss", "_val_macro_f1")


@dataclass
class GateSet:
    """The test split: records in the split table's order, class indices, shipments, profile and slices."""

    records: list[dict[str, Any]]
    y: np.ndarray
    shipments: np.ndarray
    profile: pd.DataFrame
    groups: dict[str, np.ndarray]       # hub and note-language slices (missing-modality ones come from the batch)


def gate_set(raw: Path, splits: Path) -> GateSet:
    """The one reader of the gate set (DESIGN §3: only evaluate reads it)."""
    table = pd.read_parquet(splits)
    part = table[table["split"] == "test"]
    profile, records = load_records(raw, list(part["record_id"]))
    y = np.array([CLASSES.index(lbl) for lbl in part["label"]], dtype=np.int64)
    groups = {}
    for col in ("hub", "note_lang"):
        values = profile[col].astype("string").fillna("unknown").to_numpy()
        groups |= {f"{col}={v}": values == v for v in sorted(set(values))}
    return GateSet(records, y, part["shipment_id"].astype(str).to_numpy(), profile, groups)


def gate_fingerprint(gate: GateSet) -> dict[str, Any]:
    """Which gate set this is: the best-seen score (slow-decline guard) is only compared on the same one."""
    ids = sorted(str(r["record_id"]) for r in gate.records)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return {"fingerprint": digest, "records": len(ids), "shipments": int(len(np.unique(gate.shipments)))}


def missing_groups(batch: Batch) -> dict[str, np.ndarray]:
    """Records where a modality is absent, as the model sees it (an empty note counts as missing text)."""
    mask = batch.mask.numpy()
    return {f"missing={m}": mask[:, i] == 0 for i, m in enumerate(MODALITIES)}


def modality_patterns(batch: Batch) -> dict[str, np.ndarray]:
    """Records by which modalities they had, as the model sees them ("image+text+sensor", "sensor", ...)."""
    mask = batch.mask.numpy() > 0
    names = np.array(["+".join(m for m, has in zip(MODALITIES, row) if has) or "none" for row in mask])
    return {name: names == name for name in sorted(set(names))}


def featurizer_for(bundle: ModelBundle, shared: Featurizer) -> Featurizer:
    """The shared featurizer when its input settings match the bundle's, a fresh one on the same cache otherwise."""
    keys = ("image_size", "text_max_tokens", "sensor_length", "text_ngram_buckets")
    same_inputs = all(getattr(shared.cfg, k) == getattr(bundle.model.cfg, k) for k in keys)
    same_graphs = shared.int8 == (bundle.extra.get(INT8_KEY) or {})
    if same_inputs and same_graphs and shared.versions() == bundle.encoders:
        return shared
    return Featurizer.for_bundle(bundle, cache_dir=shared.cache_dir, device=shared.device,
                                 batch_size=shared.batch_size, progress=shared.progress, backend=shared.backend,
                                 onnx_cache=shared.onnx_cache)


def evaluate_bundle(bundle: ModelBundle, feat: Featurizer, gate: GateSet, cfg: EvaluateConfig,
                    cases: behaviour.Cases, router: Router, seed: int = 0
                    ) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """All gate-set numbers of one fused model except latency, its probabilities and the slices it was scored on.

    `cases` are the behavioural suites' records, built once per run so both models meet the same ones;
    `router` is the model's own calibration and unimodal opinions (its abstention is scored too)."""
    if list(bundle.labels) != list(CLASSES):
        raise ValueError(f"model labels {bundle.labels} differ from {list(CLASSES)}")
    feat = featurizer_for(bundle, feat)
    if feat.versions() != bundle.encoders:
        raise ValueError(f"model was trained with encoders {bundle.encoders}, featurizer gives {feat.versions()}")
    batch = feat.batch(gate.records, bundle.sensor_mean, bundle.sensor_std)
    probs = scale(model_probs(bundle.model, batch), router.calibration)      # what this version serves
    n, slices = len(CLASSES), {**gate.groups, **missing_groups(batch)}
    metrics = score(gate.y, probs, bundle.labels, cfg.ece_bins)
    metrics["ece_classwise"] = ece_classwise(probs, gate.y, cfg.ece_bins)
    metrics["ece_classwise_ci"] = {**ece_classwise_interval(gate.y, probs, gate.shipments, cfg.n_boot, cfg.seed, cfg.ci,
                                                            cfg.ece_bins), "ci": cfg.ci}
    metrics["ece_classwise_by_modalities"] = {
        name: {"ece_classwise": ece_classwise(probs[sel], gate.y[sel], cfg.ece_bins), "n": int(sel.sum())}
        for name, sel in modality_patterns(batch).items()}
    metrics["ablation"] = ablation(bundle.model, batch, gate.y, n)
    metrics["slices"] = slice_scores(gate.y, probs.argmax(1), slices, n)
    metrics["behaviour"] = behaviour.score_cases(lambda recs: scale(
        model_probs(bundle.model, feat.batch(recs, bundle.sensor_mean, bundle.sensor_std)), router.calibration), cases)
    metrics["selective"] = selective_section(router, probs, batch, gate.y, list(CLASSES), seed, gate.shipments)
    # the monitor's estimate on this version's served probabilities, labels unread: what a window's estimate
    # is compared with (an estimate against an observed figure mixes calibration error into the drop)
    metrics["cbpe"] = estimated_quality(probs, list(CLASSES))
    return metrics, probs, slices


def unimodal_macro_f1(model_dir: Path, feat: Featurizer, records: list[dict[str, Any]], y: np.ndarray) -> float:
    bundle = ModelBundle.load(model_dir)
    batch = featurizer_for(bundle, feat).batch(records, bundle.sensor_mean, bundle.sensor_std)
    return macro_f1(y, model_probs(bundle.model, batch).argmax(1), len(CLASSES))


def latency(bundle: ModelBundle, records: list[dict[str, Any]], cfg: EvaluateConfig,
            feat: Featurizer | None = None, router: Router | None = None) -> dict[str, float]:
    """p50/p95 ms of `Predictor.predict([record])` on CPU: decode, encoders, sensor path, head.

    The featurizer has no disk cache and its in-memory cache is emptied before every call,
    so each timed call embeds its image and note as serving does. Each record counts with the
    best of `latency_repeats` calls: p50/p95 then spread over records, not over a neighbour's load."""
    feat = feat or Featurizer.for_bundle(bundle, cache_dir=None, device="cpu")
    pred = Predictor(bundle, feat, router)
    sample = records[:cfg.latency_records]

    def once(rec: dict[str, Any]) -> float:
        feat.image_cache.mem.clear()
        feat.text_cache.mem.clear()
        start = time.perf_counter()
        pred.predict([rec])
        return time.perf_counter() - start

    for rec in sample[:cfg.latency_warmup]:
        once(rec)
    return {**percentiles_ms([min(once(rec) for _ in range(cfg.latency_repeats)) for rec in sample]),
            "repeats": cfg.latency_repeats, "threads": torch.get_num_threads()}


def champion_bundle(model_name: str, challenger: str) -> tuple[str, ModelBundle, Router] | None:
    """The production model and its routing; None before the first promotion (or when the challenger is it)."""
    from mmcore import registry

    version = registry.alias_version(model_name, registry.CHAMPION)
    if version is None or version == str(challenger):
        return None
    path = registry.download_model_dir(model_name, version)
    bundle = ModelBundle.load(path)
    return version, bundle, Router.load(path, bundle)


def training_history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch curves the train stage logged (`<model>_train_loss`, `<model>_val_macro_f1`)."""
    from mmcore import registry

    c = registry.client()
    keys = sorted(k for k in c.get_run(run_id).data.metrics if k.endswith(CURVE_SUFFIXES))
    return {k: [(int(m.step), float(m.value)) for m in c.get_metric_history(run_id, k)] for k in keys}


def write_plots(out: Path, y: np.ndarray, probs: dict[str, np.ndarray], metrics: dict[str, dict[str, Any]],
                history: dict[str, list[tuple[int, float]]], bins: int) -> list[Path]:
    """DVC plot data and PNGs for the models scored (challenger, and champion when there is one); returns the PNGs."""
    labels = list(CLASSES)
    rel = {name: reliability(p, y, bins) for name, p in probs.items()}
    f1 = {name: {c: v["f1"] for c, v in m["per_class"].items()} for name, m in metrics.items()}
    plots.confusion_rows(out / "confusion.csv", labels, y, probs["challenger"].argmax(1))
    plots.reliability_rows(out / "reliability.json", rel)
    plots.per_class_rows(out / "per_class_f1.json", f1)
    plots.training_rows(out / "training.json", history)
    return [plots.confusion_png(out / "confusion.png", labels, {k: m["confusion_matrix"] for k, m in metrics.items()}),
            plots.reliability_png(out / "reliability.png", rel, {k: m["ece"] for k, m in metrics.items()}),
            plots.per_class_png(out / "per_class_f1.png", f1),
            plots.training_png(out / "training_curves.png", history)]


def log_to_run(run_id: str, metrics: dict[str, Any], report: Path, pngs: list[Path]) -> None:
    """Test-set numbers onto the training run in one batch, the report and the PNGs as artifacts."""
    from mlflow.entities import Metric

    from mmcore import registry

    now = int(time.time() * 1000)
    values = {"test_macro_f1": metrics["macro_f1"], "test_accuracy": metrics["accuracy"], "test_ece": metrics["ece"],
              "test_cbpe_macro_f1": metrics["cbpe"]["macro_f1"],
              "test_latency_p50_ms": metrics["latency_ms"]["p50"], "test_latency_p95_ms": metrics["latency_ms"]["p95"],
              **{f"test_macro_f1_{m}_only": v for m, v in metrics["unimodal_macro_f1"].items()},
              **{f"test_macro_f1_{k}": v for k, v in metrics["ablation"].items()},
              **{f"test_behaviour_{k}_failure_rate": v["failure_rate"] for k, v in metrics["behaviour"].items()}}
    if metrics.get("comparison"):
        values |= {f"test_macro_f1_delta_{k}": metrics["comparison"][k] for k in ("low", "mean", "high")}
    c = registry.client()
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    c.log_artifact(run_id, str(report))
    for png in pngs:
        c.log_artifact(run_id, str(png), artifact_path="plots")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score challenger, baselines and champion on the gate set.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--unimodal", type=Path, required=True)
    ap.add_argument("--fallback", type=Path, default=Path("artifacts/model-fp32"),
                    help="the fp32 pipeline's model, evaluated instead when the gate set vetoes int8")
    ap.add_argument("--train-report", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plots", type=Path, default=Path("reports/plots"))
    ap.add_argument("--ablation", type=Path, default=Path("reports/ablation.json"))
    ap.add_argument("--selective", type=Path, default=Path("reports/selective.json"))
    args = ap.parse_args(argv)
    from mmcore import registry

    try:
        with registry.reachable("Nothing was promoted; run evaluate again once the server answers"):
            return run(args)
    except registry.TrackingUnavailable as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 3


def leak_checks(model_name: str, champion: str | None, raw: Path, splits: Path, gate: GateSet) -> dict[str, Any]:
    """Gate-set records the challenger (this split) or the champion (its logged keys) was fitted on."""
    from mmcore import registry

    out = {"challenger": overlap(fit_rows(load_profile(raw), pd.read_parquet(splits)), gate.profile, str(splits))}
    if champion is not None:
        fitted, source = registry.fitted_records(model_name, champion)
        out["champion"] = overlap(fitted, gate.profile, source)
    for who, info in out.items():
        if info["records"]:
            print(f"evaluate: WARNING {leak_message(who, info)}", file=sys.stderr)
    return out


def write_selective(path: Path, metrics: dict[str, Any]) -> None:
    """reports/selective.json: each model's abstention on the gate set and the goals, challenger first."""
    chal = metrics["selective"]
    champ = (metrics.get("champion") or {}).get("selective")
    write_json(path, {"model_version": metrics["model_version"], "challenger": chal, "champion": champ,
                      "champion_version": (metrics.get("champion") or {}).get("version"),
                      "goals": {"challenger": selective_goals(chal), "champion": selective_goals(champ)}})
    nan = float("nan")
    print("evaluate: abstention " + "; ".join(
        f"{who} automation {s['automation_rate']:.3f}, pooled automatic precision "
        f"{(s.get('auto_precision_pooled') or {}).get('precision') or nan:.3f} (lower bound "
        f"{(s.get('auto_precision_pooled') or {}).get('lower_bound') or nan:.3f}), coverage "
        f"{s['coverage']['overall']:.3f}, mean set size {s['mean_set_size']:.2f}, empty sets "
        f"{s.get('empty_set_rate') or 0:.3f}, contradiction AUROC {(s['contradictions'].get('auroc') or nan):.3f}"
        for who, s in (("challenger", chal), ("champion", champ)) if s))
    for name, why in ((chal.get("certified_on_calib") or {}).get("why_uncertified") or {}).items():
        print(f"evaluate: WARNING the challenger automates nothing ({name}): {why}", file=sys.stderr)


def served_probs(model_dir: Path, feat: Featurizer, gate: GateSet) -> np.ndarray:
    """A model directory's served (temperature-scaled) probabilities on the gate set, through its own graphs."""
    bundle = ModelBundle.load(model_dir)
    batch = featurizer_for(bundle, feat).batch(gate.records, bundle.sensor_mean, bundle.sensor_std)
    return scale(model_probs(bundle.model, batch), Router.load(model_dir, bundle).calibration)


def confirm_int8(args: argparse.Namespace, trained: dict[str, Any], feat: Featurizer, gate: GateSet,
                 p: Any) -> tuple[Path, int, dict[str, Any]]:
    """The challenger to evaluate: the train stage's model, or, when the gate set's interval vetoes its
    int8 choice (mmcore.stages.int8_choice.gate_check), the fp32 pipeline's model the train stage kept,
    registered now in the same training run (it becomes the challenger). Returns (directory, version, record)."""
    choice = trained.get("int8") or {}
    version = int(trained["model_version"])
    if not choice.get("chosen"):
        return args.model, version, {"chosen_on_val": False, "reason": choice.get("reason", "not recorded"),
                                     "served": "fp32"}
    cfg = p.evaluate
    check = int8_choice.gate_check(gate.y, served_probs(args.model, feat, gate), served_probs(args.fallback, feat, gate),
                                   gate.shipments, p.serve.max_quantised_drop, cfg.n_boot, cfg.seed, cfg.ci)
    out = {"chosen_on_val": True, "encoders": choice["encoders"], "sha256": choice["sha256"], "gate_check": check,
           "int8_version": version}
    print(f"evaluate: {check['reason']}")
    if not check["vetoed"]:
        return args.model, version, {**out, "served": "int8"}
    fallback = register_fallback(args.fallback, trained["run_id"], p.registry.model_name, str(version))
    return args.fallback, fallback, {**out, "served": "fp32", "fp32_version": fallback}


def register_fallback(model_dir: Path, run_id: str, model_name: str, int8_version: str) -> int:
    """The fp32 pipeline's model as a version of its own, logged to the training run with the int8
    version's lineage tags; log_model makes it the challenger."""
    import mlflow

    from mmcore import registry

    tags = registry.client().get_model_version(model_name, int8_version).tags
    with mlflow.start_run(run_id=run_id):
        version = registry.log_model(model_dir, model_name, "model-fp32")
    for key in ("data_version", "params_hash"):
        if key in tags:
            registry.client().set_model_version_tag(model_name, version, key, tags[key])
    return int(version)


def run(args: argparse.Namespace) -> int:
    p = load_params(args.params)
    cfg = p.evaluate
    from mmcore import registry

    registry.setup(p.registry.experiment)
    trained = read_json(args.train_report)
    feat = Featurizer(p.model, cache_dir=args.cache, batch_size=p.train.embed_batch_size, progress=True,
                      backend=p.train.embed_backend)
    gate = gate_set(args.raw, args.splits)

    model_dir, version, int8 = confirm_int8(args, trained, feat, gate, p)
    challenger = ModelBundle.load(model_dir)
    chal_router = Router.load(model_dir, challenger)
    cases = behaviour.build_cases(gate.records, gate.y, cfg.behaviour_records, cfg.seed)
    seed = p.selective.contradiction_seed
    metrics, chal_probs, slices = evaluate_bundle(challenger, feat, gate, cfg, cases, chal_router, seed)
    lat_feat = Featurizer.for_bundle(challenger, cache_dir=None, device="cpu", onnx_cache=args.cache)
    metrics["latency_ms"] = latency(challenger, gate.records, cfg, lat_feat, chal_router)
    metrics["unimodal_macro_f1"] = {m: unimodal_macro_f1(args.unimodal / m, feat, gate.records, gate.y)
                                    for m in MODALITIES}
    metrics["model_version"], metrics["int8"] = version, int8

    probs, scored = {"challenger": chal_probs}, {"challenger": metrics}
    metrics["champion"], metrics["comparison"] = None, None
    champ = champion_bundle(p.registry.model_name, str(version))
    if champ is not None:
        version, bundle, champ_router = champ
        champ_metrics, probs["champion"], _ = evaluate_bundle(bundle, feat, gate, cfg, cases, champ_router, seed)
        champ_metrics["latency_ms"] = latency(bundle, gate.records, cfg, featurizer_for(bundle, lat_feat),
                                              champ_router)
        metrics["champion"] = scored["champion"] = {"version": int(version), **champ_metrics}
        metrics["comparison"] = paired_bootstrap(gate.y, chal_probs.argmax(1), probs["champion"].argmax(1),
                                                 gate.shipments, list(CLASSES), slices, cfg.n_boot, cfg.seed, cfg.ci,
                                                 probs=(chal_probs, probs["champion"]),
                                                 family_min_shipments=p.gate.min_slice_shipments)
    metrics["gate_set"] = gate_fingerprint(gate)
    metrics["best_seen"] = registry.best_seen(p.registry.model_name, metrics["gate_set"]["fingerprint"])
    metrics["leak"] = leak_checks(p.registry.model_name, champ[0] if champ else None, args.raw, args.splits, gate)
    write_json(args.out, metrics)
    abl = ablation_report(metrics, cfg)
    write_json(args.ablation, {"model_version": metrics["model_version"], "strategy": p.train.strategy,
                               "fusion": p.model.fusion, **abl})
    write_selective(args.selective, metrics)
    pngs = write_plots(args.plots, gate.y, probs, scored, training_history(trained["run_id"]), cfg.ece_bins)
    log_to_run(trained["run_id"], metrics, args.out, pngs)
    comp = metrics["comparison"]
    print("evaluate: quality targets " + ", ".join(f"{k} {t['value']:.3f} {t['op']} {t['target']} "
                                                   f"{'met' if t['met'] else 'NOT met'}"
                                                   for k, t in abl["targets"].items()))
    print(f"evaluate: fused macro-F1 {metrics['macro_f1']:.3f}, accuracy {metrics['accuracy']:.3f}, "
          f"ECE {metrics['ece']:.3f}, class-wise ECE {metrics['ece_classwise']:.3f}, latency p50/p95 {metrics['latency_ms']['p50']:.0f}/"
          f"{metrics['latency_ms']['p95']:.0f} ms, ablation {metrics['ablation']}, unimodal "
          f"{metrics['unimodal_macro_f1']}, champion {metrics['champion']['macro_f1'] if champ else None}"
          + (f", delta {comp['observed']:+.3f} [{comp['low']:+.3f}, {comp['high']:+.3f}]" if comp else ""))
    print("evaluate: behaviour failure rates " + "; ".join(
        f"{who} " + ", ".join(f"{k} {v['failure_rate']:.3f} (n={v['n']})" for k, v in m["behaviour"].items())
        for who, m in scored.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
