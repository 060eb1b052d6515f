"""One monitoring window: the captured answers of some periods, landed as batches (DESIGN §2b), against
the records the model was trained on and the gate set it was judged on.

    python -m mmcore.monitor.window --batch capture-20261201T100000Z-20261201T110000Z [--batch ...] \\
        [--capture DIR ...] [--raw data/raw --splits data/split/splits.parquet --cache data/cache] \\
        --out reports/monitor/W.json

From the landed records (data/raw): volume, missing-modality shares next to the reference's, the
tabular drift the validate stage uses (mmcore.drift, PSI per column) and drift in each frozen
encoder's embedding space (mmcore.monitor.embedding_drift) on a sample of the window. From the
capture log (the answers): the predicted class mix against the gate set's, the confidence
histogram, estimated quality per model version, and over `monitor.lookback_days` the live quality
of each version whose answers have labels joined (mmcore.monitor.quality), next to the version's
gate-set figure from MLflow. The drift reference is a sample of the champion's training rows (its
run's reference/profile.parquet; the train split when there is no champion) drawn anew for each
window (seeded by the window's batch ids) in the window's hub mix: its embeddings come from the
shared cache, so it costs nothing after training. An encoder's drift counts (`drift`) only when its
held-out AUC reaches `monitor.min_drift_auc`; smaller findings are listed in `drift_below_effect`.
Exit code 0 whether or not anything moved: drift is a finding, not an error.
"""
from __future__ import annotations

import argparse
import json
import sys
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmcore.config import CLASSES, Params, load_params
from mmcore.data.raw import load_profile, load_records
from mmcore.drift import compute_drift
from mmcore.expectations import MODALITIES   # profile columns has_<m>, as validation reads them
from mmcore.features import Featurizer
from mmcore.monitor import quality
from mmcore.monitor.capture_batches import PREFIX, Period, read_log
from mmcore.monitor.embedding_drift import embedding_drift
from mmcore.monitor.triggers import joined_labels
from mmcore.schema import GATE_SOURCES

ENCODERS = {"image": 0, "text": 1}   # column of Featurizer.embed's presence array
ALPHA = 0.05 / len(ENCODERS)          # a window alarms if any encoder does: the family-wise rate stays 5%
MIN_EMBEDDINGS = 20                   # fewer in the window or the reference and an encoder is not tested


UNKNOWN_HUB = "unknown"   # a record whose hub nobody gave (captured traffic without context): not a stratum


def training_rows(p: Params) -> tuple[pd.DataFrame | None, str]:
    """The champion's training rows, from its run (mmcore.registry.champion_reference), or None and why.
    The champion is the model answering; the last retrain's train split may belong to a rejected one."""
    from mmcore import registry

    try:
        registry.setup(p.registry.experiment)
        frame = registry.champion_reference(p.registry.model_name)
    except Exception as exc:  # the reference falls back to the train split; the report says so
        return None, f"the champion's training rows could not be read from MLflow ({type(exc).__name__}: {exc})"
    return (frame, "") if frame is not None else (None, "no champion, or its run logged no training rows")


def reference_pool(profile: pd.DataFrame, splits: pd.DataFrame,
                   champion: tuple[pd.DataFrame | None, str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The records the reference is drawn from (record_id, hub, shipment_id, as landed): the champion's
    training rows still in data/raw, else the train split (and the report says why)."""
    rows, why = champion
    if rows is not None:
        ids, source = set(rows["record_id"].astype(str)), {"from": "champion", **rows.attrs.get("source", {})}
    else:
        ids = set(splits.loc[splits["split"] == "train", "record_id"].astype(str))
        source = {"from": "train split", "why": why}
    pool = profile.loc[profile["record_id"].astype(str).isin(ids), ["record_id", "hub", "shipment_id"]]
    return pool, {**source, "rows": len(ids), "in_raw": int(len(pool))}


def reference_sample(pool: pd.DataFrame, window_hubs: pd.Series, n: int, seed: int) -> list[str]:
    """`n` record ids of `pool` in the window's hub mix, drawn anew per window (`seed`): a window from
    two hubs is compared with those hubs' training records, so a change of mix alone is no drift.
    Shares of hubs the pool lacks (a new hub) and of hub `unknown` are drawn from the whole pool."""
    rng = np.random.default_rng(seed)
    order = pool.iloc[rng.permutation(len(pool))]
    n, hubs = min(n, len(order)), order["hub"].astype(str).to_numpy()
    picked = [order["record_id"].to_numpy()[hubs == hub][:int(share * n)]
              for hub, share in window_hubs.astype(str).value_counts(normalize=True).items() if hub != UNKNOWN_HUB]
    chosen = np.concatenate(picked) if picked else np.array([], dtype=object)
    rest = order.loc[~order["record_id"].isin(chosen), "record_id"].to_numpy()[:n - len(chosen)]
    return [str(r) for r in np.concatenate([chosen, rest])]


def modality_shares(profile: pd.DataFrame) -> dict[str, float]:
    return {m: round(float(1 - profile[f"has_{m}"].fillna(False).astype(bool).mean()), 6) for m in MODALITIES}


def encoder_drift(feat: Featurizer, ref: list[dict[str, Any]], cur: list[dict[str, Any]], seed: int,
                  shipments: tuple[np.ndarray, np.ndarray] | None = None, *, min_auc: float) -> dict[str, Any]:
    """Per encoder: the two-sample test on the embeddings of the records that have its modality."""
    (ref_img, ref_txt, ref_has), (cur_img, cur_txt, cur_has) = feat.embed(ref), feat.embed(cur)
    return encoder_tests({"image": ref_img, "text": ref_txt}, ref_has, {"image": cur_img, "text": cur_txt}, cur_has,
                         seed, shipments, min_auc)


def encoder_tests(ref: dict[str, np.ndarray], ref_has: np.ndarray, cur: dict[str, np.ndarray], cur_has: np.ndarray,
                  seed: int, shipments: tuple[np.ndarray, np.ndarray] | None, min_auc: float) -> dict[str, Any]:
    """The test per encoder on embeddings already computed (the bench resamples cached ones);
    `shipments` (of ref, of cur) make a shipment one unit of the test. `effect_ok`: the held-out
    AUC reaches `min_auc`, so the finding is large enough to count toward a retrain."""
    out: dict[str, Any] = {}
    for name, col in ENCODERS.items():
        keep_r, keep_c = ref_has[:, col] > 0, cur_has[:, col] > 0
        r, c = ref[name][keep_r], cur[name][keep_c]
        groups = None if shipments is None else (shipments[0][keep_r], shipments[1][keep_c])
        if min(len(r), len(c)) < MIN_EMBEDDINGS:
            out[name] = {"drift": None, "effect_ok": None, "n_reference": len(r), "n_current": len(c),
                         "note": f"not tested: fewer than {MIN_EMBEDDINGS} embeddings on a side"}
            continue
        try:
            res = embedding_drift(r, c, alpha=ALPHA, seed=seed, groups=groups).as_dict()
        except ValueError as exc:   # too few shipments to split: not tested, and the report says why
            out[name] = {"drift": None, "effect_ok": None, "n_reference": len(r), "n_current": len(c),
                         "note": f"not tested: {exc}"}
            continue
        out[name] = {**res, "effect_ok": bool(res["auc"] >= min_auc), "min_auc": min_auc}
    return out


def counted_drift(embeddings: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(encoders whose drift counts toward a retrain: drift and effect_ok; those that drifted below
    `monitor.min_drift_auc`, reported only)."""
    moved = {k: v for k, v in embeddings.items() if v.get("drift")}
    return sorted(k for k, v in moved.items() if v.get("effect_ok")), sorted(k for k, v in moved.items()
                                                                            if not v.get("effect_ok"))


def shipment_units(profile: pd.DataFrame) -> np.ndarray:
    """The drift test's unit of each record: its shipment; a record without one is its own unit
    (nothing ties it to another record, and a guessed shipment would merge strangers)."""
    return profile["shipment_id"].astype("string").fillna("record:" + profile["record_id"].astype("string")) \
        .to_numpy(str)


def drift_section(raw: Path, pool: pd.DataFrame, source: dict[str, Any], window: pd.DataFrame, p: Params,
                  cache: Path | None, seed: int) -> dict[str, Any]:
    """Missing modalities, tabular drift and embedding drift of the window's landed records."""
    if pool.empty:
        raise ValueError("no training records to compare with; run the pipeline (dvc repro) first")
    sample = window.sample(min(len(window), p.monitor.drift_records), random_state=seed)
    ids = reference_sample(pool, sample["hub"], p.monitor.reference_records, seed)
    ref_profile, ref_records = load_records(raw, ids)
    cur_profile, cur_records = load_records(raw, sample["record_id"].astype(str).tolist())
    feat = Featurizer(p.model, cache_dir=cache, batch_size=p.train.embed_batch_size, progress=True,
                     backend=p.train.embed_backend)
    shipments = (shipment_units(ref_profile), shipment_units(cur_profile))
    embeddings = encoder_drift(feat, ref_records, cur_records, seed, shipments, min_auc=p.monitor.min_drift_auc)
    counted, below = counted_drift(embeddings)
    return {"reference": {**source, "records": len(ids), "stratified_by": "hub"}, "drift_sample": len(sample),
            "missing_share": {"window": modality_shares(window), "reference": modality_shares(ref_profile)},
            "embedding_drift": embeddings,
            "tabular_drift": compute_drift(ref_profile, window.drop(columns="label"),  # no label yet
                                           p.validate.drift_psi_warn, p.validate.drift_psi_fail),
            "drift": counted, "drift_below_effect": below}


def answers_section(preds: pd.DataFrame, gate_y: np.ndarray, gate: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the service answered in the window: class mix, confidence, estimated quality per version."""
    classes = list(CLASSES)
    per_version = {}
    for version, rows in preds.groupby("model_version"):
        est = quality.estimated_quality(quality.probs_of(rows, classes), classes)
        figures = gate.get(str(version)) or {}
        est["gate_set_macro_f1"] = figures.get("macro_f1")                 # observed: context only
        like = est["gate_set_cbpe_macro_f1"] = figures.get("cbpe_macro_f1")  # the same estimate on the gate set
        # estimate against estimate: calibration error on the gate set cancels (a version evaluated before
        # the gate-set estimate was logged has none, and no drop rather than a mixed one)
        est["drop"] = None if like is None or est["macro_f1"] is None else round(like - est["macro_f1"], 4)
        per_version[str(version)] = est
    return {"answers": int(len(preds)),
            "class_mix": quality.class_mix(preds["predicted"].to_numpy(int), gate_y, classes),
            "confidence": quality.confidence_histogram(preds["confidence"].to_numpy(float)),
            "estimated": per_version}


def quality_section(profile: pd.DataFrame, preds: pd.DataFrame, gate: dict[str, dict[str, Any]],
                    p: Params, seed: int) -> dict[str, Any]:
    """Live quality per model version (and per hub, and per label source) over the labelled answers of
    the lookback. `live` and `hubs` use only labels the model did not choose (GATE_SOURCES): review
    labels exist for the answers the champion was unsure of, so they would pull the figure below what
    served traffic gets, and the live_drop trigger compares it with the gate set's."""
    classes, cfg = list(CLASSES), p.monitor
    joined = quality.labelled_answers(profile, preds, classes)
    fed = profile[profile["prediction_id"].notna()].drop_duplicates("prediction_id").set_index("prediction_id")
    joined["label_source"] = joined["prediction_id"].map(fed["label_source"])
    # labelled_answers: over the lookback (live quality's input); labels_joined: cumulative, the triggers' counter
    out: dict[str, Any] = {"labelled_answers": int(len(joined)), "labels_joined": joined_labels(profile),
                           "versions": {}}
    args = (classes, cfg.n_boot, seed, p.evaluate.ci)

    def live(r: pd.DataFrame) -> dict[str, Any]:
        return quality.live_quality(r["y"], r["predicted"], r["shipment_id"], *args)

    for version, rows in joined.groupby("model_version"):
        unbiased = rows[rows["label_source"].isin(GATE_SOURCES)]
        entry: dict[str, Any] = {"n": int(len(rows)), "gate_set": gate.get(str(version)),
                                 "sources": {str(src): live(r) if len(r) >= cfg.min_live_labels else {"n": int(len(r))}
                                             for src, r in rows.groupby("label_source")}}
        if len(unbiased) >= cfg.min_live_labels:
            entry["live"] = live(unbiased)
            # the estimate on the same labelled answers: how far calibration has drifted from the truth
            est = quality.estimated_quality(quality.probs_of(unbiased, classes), classes)["macro_f1"]
            entry["estimated_macro_f1"] = est
            entry["estimate_gap"] = round(est - entry["live"]["macro_f1"]["observed"], 4)
            entry["hubs"] = {str(h): live(r) for h, r in unbiased.groupby("hub") if len(r) >= cfg.min_live_labels}
        else:
            entry["note"] = (f"fewer than monitor.min_live_labels={cfg.min_live_labels} inspection or claim labels: "
                             "see estimated")
        out["versions"][str(version)] = entry
    return out


def capture_lines(roots: list[Path], periods: list[Period]) -> list[dict[str, Any]]:
    return [ln for root in roots for period in periods for ln in read_log(root, period).lines]


def gate_set_figures(model_name: str, versions: set[str]) -> dict[str, dict[str, Any]]:
    """Each version's gate-set macro-F1 and accuracy, as its evaluate run logged them in MLflow.
    A version MLflow does not know (or an unreachable server) has none: the page says n/a."""
    from mmcore import registry

    out: dict[str, dict[str, Any]] = {}
    for v in sorted(versions):
        try:
            metrics = registry.client().get_run(registry.run_of(model_name, v)).data.metrics
        except Exception:  # the figure is context for the page, not a reason to lose the window
            continue
        if "test_macro_f1" in metrics:
            out[v] = {"macro_f1": metrics["test_macro_f1"], "accuracy": metrics.get("test_accuracy"),
                      "cbpe_macro_f1": metrics.get("test_cbpe_macro_f1")}
    return out


def window_seed(batches: list[str]) -> int:
    """Each window draws its own reference sample: against one fixed sample the drift test's false
    alarms follow that sample's own error, window after window (mmcore.monitor.embedding_drift), and
    `monitor.drift_windows` in a row would then be no rarer than one."""
    return zlib.crc32(",".join(sorted(batches)).encode())


def window_report(raw: Path, splits: Path, batches: list[str], p: Params, cache: Path | None,
                  roots: list[Path] | tuple[Path, ...] = (), seed: int | None = None,
                  champion: tuple[pd.DataFrame | None, str] = (None, "not looked up")) -> dict[str, Any]:
    """The window's JSON: volume, drift, answers and live quality (see the module docstring). A
    capture batch that did not land is a quiet period (no answers); any other batch must be ingested.
    `seed` (default: from the batch ids) draws the drift reference and seeds the bootstraps;
    `champion` (training_rows: the champion's training rows, or None and why) is the drift
    reference's pool, the train split of `splits` when there is none."""
    seed = window_seed(batches) if seed is None else seed
    profile, split_df = load_profile(raw), pd.read_parquet(splits)
    missing = sorted(set(b for b in batches if not b.startswith(PREFIX)) - set(profile["batch_id"]))
    if missing:
        known = ", ".join(sorted(profile["batch_id"].unique())[-5:])
        raise ValueError(f"no ingested records in batches {missing}; run ingest first (latest batches: {known})")
    periods = [Period.from_batch_id(b) for b in batches if b.startswith(PREFIX)]
    preds = quality.predictions(capture_lines(list(roots), lookback(periods, p.monitor.lookback_days)), list(CLASSES))
    answered = pd.to_datetime(preds["answered_at"], utc=True)
    in_window = np.zeros(len(preds), bool)
    for pr in periods:
        in_window |= ((answered >= pr.since) & (answered < pr.until)).to_numpy(bool)
    gate = gate_set_figures(p.registry.model_name, set(preds["model_version"]))
    test_ids = set(split_df.loc[split_df["split"] == "test", "record_id"].astype(str))
    gate_y = profile.loc[profile["record_id"].isin(test_ids), "label"].map(
        {c: i for i, c in enumerate(CLASSES)}).dropna().to_numpy(int)
    window = profile[profile["batch_id"].isin(batches)]
    report: dict[str, Any] = {"batches": batches, "volume": int(len(window)),
                              "since": min(pr.since for pr in periods).isoformat() if periods else None,
                              "until": max(pr.until for pr in periods).isoformat() if periods else None,
                              **answers_section(preds[in_window], gate_y, gate),
                              "quality": quality_section(profile, preds, gate, p, seed),
                              "drift": [], "drift_below_effect": [], "embedding_drift": {}}
    if len(window):
        pool, source = reference_pool(profile, split_df, champion)
        report.update(drift_section(raw, pool, source, window, p, cache, seed))
    return report


def lookback(periods: list[Period], days: float) -> list[Period]:
    """Live quality's span: `days` back from the window's end (none without a capture period)."""
    if not periods:
        return []
    until = max(pr.until for pr in periods)
    return [Period(until - timedelta(days=days), until)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Monitor one window of landed (captured) batches.")
    ap.add_argument("--batch", action="append", required=True, help="a capture batch id; repeat for several")
    ap.add_argument("--capture", type=Path, action="append", default=[], help="a capture folder (PARCEL_CAPTURE_DIR)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--splits", type=Path, default=Path("data/split/splits.parquet"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reference", choices=("champion", "split"), default="champion",
                    help="drift reference pool: the champion's training rows (MLflow), or the train split")
    args = ap.parse_args(argv)
    try:
        p = load_params(args.params)
        champion = training_rows(p) if args.reference == "champion" else (None, "--reference split")
        report = window_report(args.raw, args.splits, args.batch, p, args.cache, args.capture, champion=champion)
    except (ValueError, FileNotFoundError) as exc:
        print(f"monitor window: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=_json))
    print(f"{report['volume']} records, {report['answers']} answers; embedding drift: "
          f"{', '.join(report['drift']) or 'none'} -> {args.out}")
    return 0


def _json(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
