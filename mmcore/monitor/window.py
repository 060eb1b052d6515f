"""One monitoring window: the records of some landing batches (captured traffic, DESIGN §2b) against
the records the model was trained on.

    python -m mmcore.monitor.window --batch capture-20261201T100000Z-20261201T110000Z [--batch ...] \\
        [--raw data/raw --splits data/split/splits.parquet --cache data/cache] --out reports/monitor/W.json

It reports the window's volume, its missing-modality shares next to the reference's, the tabular
drift the validate stage uses (mmcore.drift, PSI per column) and drift in each frozen encoder's
embedding space (mmcore.monitor.embedding_drift), computed on the records that have that modality.
The reference is a seeded sample of the train split: embeddings come from the shared cache, so the
reference costs nothing after training. Exit code 0 whether or not it drifted: drift is a finding,
not an error (the report's `drift` says which encoders moved).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmcore.config import Params, load_params
from mmcore.data.raw import load_profile, load_records
from mmcore.drift import compute_drift
from mmcore.expectations import MODALITIES   # profile columns has_<m>, as validation reads them
from mmcore.features import Featurizer
from mmcore.monitor.embedding_drift import embedding_drift

ENCODERS = {"image": 0, "text": 1}   # column of Featurizer.embed's presence array
MIN_EMBEDDINGS = 20                   # fewer in the window or the reference and an encoder is not tested


def reference_ids(splits: pd.DataFrame, n: int, seed: int) -> list[str]:
    train = splits.loc[splits["split"] == "train", "record_id"].astype(str)
    return train.sample(min(n, len(train)), random_state=seed).tolist()


def modality_shares(profile: pd.DataFrame) -> dict[str, float]:
    return {m: round(float(1 - profile[f"has_{m}"].fillna(False).astype(bool).mean()), 6) for m in MODALITIES}


def encoder_drift(feat: Featurizer, ref: list[dict[str, Any]], cur: list[dict[str, Any]],
                  seed: int) -> dict[str, Any]:
    """Per encoder: the two-sample test on the embeddings of the records that have its modality."""
    (ref_img, ref_txt, ref_has), (cur_img, cur_txt, cur_has) = feat.embed(ref), feat.embed(cur)
    out: dict[str, Any] = {}
    for name, (r, c) in {"image": (ref_img, cur_img), "text": (ref_txt, cur_txt)}.items():
        col = ENCODERS[name]
        r, c = r[ref_has[:, col] > 0], c[cur_has[:, col] > 0]
        if min(len(r) // 2, len(c)) < MIN_EMBEDDINGS:
            out[name] = {"drift": None, "n_reference": len(r), "n_current": len(c),
                         "note": f"not tested: fewer than {MIN_EMBEDDINGS} embeddings on a side"}
        else:
            out[name] = embedding_drift(r, c, seed=seed).as_dict()
    return out


def window_report(raw: Path, splits: Path, batches: list[str], p: Params, cache: Path | None,
                  reference_n: int = 2000, seed: int = 0) -> dict[str, Any]:
    profile = load_profile(raw)
    window = profile[profile["batch_id"].isin(batches)]
    if window.empty:
        known = ", ".join(sorted(profile["batch_id"].unique())[-5:])
        raise ValueError(f"no ingested records in batches {batches}; run ingest first (latest batches: {known})")
    ids = reference_ids(pd.read_parquet(splits), reference_n, seed)
    if not ids:
        raise ValueError(f"{splits}: no train split to compare with; run the pipeline (dvc repro) first")
    ref_profile, ref_records = load_records(raw, ids)
    _, cur_records = load_records(raw, window["record_id"].astype(str).tolist())
    feat = Featurizer(p.model, cache_dir=cache, batch_size=p.train.embed_batch_size, progress=True)
    embeddings = encoder_drift(feat, ref_records, cur_records, seed)
    tabular = compute_drift(ref_profile, window.drop(columns="label"),   # captured traffic has no label yet
                            p.validate.drift_psi_warn, p.validate.drift_psi_fail)
    return {"batches": batches, "volume": int(len(window)), "reference": {"split": "train", "records": len(ids)},
            "missing_share": {"window": modality_shares(window), "reference": modality_shares(ref_profile)},
            "embedding_drift": embeddings, "tabular_drift": tabular,
            "drift": sorted(k for k, v in embeddings.items() if v.get("drift"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Monitor one window of landed (captured) batches against training.")
    ap.add_argument("--batch", action="append", required=True, help="a landing batch id; repeat for several")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--splits", type=Path, default=Path("data/split/splits.parquet"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache"))
    ap.add_argument("--reference", type=int, default=2000, help="train records sampled as the reference")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        report = window_report(args.raw, args.splits, args.batch, load_params(args.params), args.cache,
                               args.reference)
    except (ValueError, FileNotFoundError) as exc:
        print(f"monitor window: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=_json))
    moved = ", ".join(report["drift"]) or "none"
    print(f"{report['volume']} records in {len(args.batch)} batch(es); embedding drift: {moved}; "
          f"tabular: {report['tabular_drift'].get('status')} -> {args.out}")
    return 0


def _json(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
