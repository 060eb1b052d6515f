"""split: deterministic assignment by shipment, so no shipment is in two splits.

By the shipment's hash: test (the gate set), val (every choice), calib (abstention's calibration,
mmcore.selective), train. Each split's range is fixed by its fraction alone, so adding calib took
records from train only: the gate set and val kept every record they had.

A shipment's split depends only on its id and the salt, never on what else is in
the data. Content seen before keeps the split of its first occurrence (in capture order):
the same parcel landed again under a new record or shipment id cannot move a training
record into the gate set. And what a split run gave is kept (mmcore/data/membership.py):
a record stays in the split it was first given, and its content with it, so no later data,
a back-dated copy included, can move a record out of the gate set; the test split only grows,
and champion and challenger are always scored on the same records. A gate-set record's label
changes only with its audit entry, and every change is in reports/split.json (the run report
shows it). Labels the model chose (source review, or unknown) train but never enter the gate set or
calib (`route_by_source`); the report gives each split's composition by label source.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmcore.config import SplitConfig, load_params
from mmcore.data import membership
from mmcore.data.ingest import write_atomic
from mmcore.data.raw import load_profile
from mmcore.leak import CONTENT_KEYS, identity
from mmcore.schema import GATE_SOURCES

GATE = membership.GATE


def assign(shipment_id: str, cfg: SplitConfig) -> str:
    h = int(hashlib.sha256(f"{cfg.salt}:{shipment_id}".encode()).hexdigest()[:12], 16) / 16**12
    bounds = np.cumsum([cfg.test_fraction, cfg.val_fraction, cfg.calib_fraction])
    return ("test", "val", "calib", "train")[int(np.searchsorted(bounds, h, side="right"))]


def split(profile: pd.DataFrame, cfg: SplitConfig, stored: pd.DataFrame | None = None) -> pd.DataFrame:
    """record_id -> split, labelled records only (unlabelled ones are kept in raw, not trained on).

    Records in `stored` (the membership a previous run kept) keep their split, and so does their
    content; first occurrences of the rest are looked up over every record, labelled or not, in
    capture order."""
    ids = identity(profile)
    keys = [k for k in CONTENT_KEYS if k in ids.columns]
    first: dict[tuple[str, str], str] = {}
    assigned: dict[str, str] = {}
    if stored is not None and len(stored):
        rank = stored["split"].map(membership.PRIORITY).fillna(len(membership.PRIORITY))
        for row in stored.assign(_rank=rank).sort_values(["_rank", "record_id"]).itertuples(index=False):
            assigned[row.record_id] = row.split
            for k in keys:
                if not pd.isna(getattr(row, k)):
                    first.setdefault((k, str(getattr(row, k))), row.split)
    when = pd.to_datetime(profile["captured_at"], utc=True, format="ISO8601")
    order = ids.assign(shipment_id=profile["shipment_id"].values, _when=when.values)
    order = order.sort_values(["_when", "record_id"], kind="stable")
    for row in order[["record_id", "shipment_id", *keys]].itertuples(index=False):
        content = [(k, str(v)) for k, v in zip(keys, row[2:]) if not pd.isna(v)]
        if row.record_id not in assigned:
            seen = next((first[c] for c in content if c in first), None)
            assigned[row.record_id] = seen or assign(row.shipment_id, cfg)
        for c in content:
            first.setdefault(c, assigned[row.record_id])
    labelled = profile[profile["label"].notna()]
    out = pd.DataFrame({"record_id": labelled["record_id"].values,
                        "shipment_id": labelled["shipment_id"].values,
                        "label": labelled["label"].values})
    out["split"] = [assigned[r] for r in out["record_id"]]
    return out.sort_values("record_id").reset_index(drop=True)


def route_by_source(table: pd.DataFrame, profile: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Labels the model chose (review, and unknown: GATE_SOURCES) train but never gate or calibrate.

    A review label exists only because the champion sent that answer to review: in the gate set it
    leans the set toward the champion's hard cases (favouring any challenger), in calib it breaks the
    conformal and threshold guarantees, which hold for served traffic. So such a record whose shipment
    is in val goes to train, and one whose shipment is in test or calib is withheld from every split:
    training on it would put a gate-set (or calib) parcel among the fitted records."""
    source = table["record_id"].map(profile.set_index("record_id")["label_source"])
    chosen = (source.notna() & ~source.isin(GATE_SOURCES)).to_numpy(bool)
    withheld = chosen & table["split"].isin([GATE, "calib"]).to_numpy(bool)
    moved = chosen & (table["split"] == "val").to_numpy(bool)
    out = table.assign(split=table["split"].mask(moved, "train"))
    kept = out[~withheld].reset_index(drop=True)
    counts = pd.crosstab(kept["split"].to_numpy(), source[~withheld].fillna("none").to_numpy())
    by_source = {str(sp): {str(src): int(n) for src, n in row.items() if n} for sp, row in counts.iterrows()}
    return kept, {"by_source": by_source, "model_chosen": int(chosen.sum()), "to_train_from_val": int(moved.sum()),
                  "withheld": {s: int((withheld & (table["split"] == s).to_numpy(bool)).sum())
                               for s in (GATE, "calib")}}


def read_audit(raw: Path) -> pd.DataFrame | None:
    path = Path(raw) / "label_audit.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def split_run(raw: Path, out: Path, cfg: SplitConfig) -> dict[str, Any]:
    """The stage: splits from data/raw and the stored membership beside `out`; writes both and
    returns the report (counts, and what happened to the gate set)."""
    profile = load_profile(raw)
    path = out.parent / membership.MEMBERSHIP_FILE
    stored = membership.load(path, cfg)
    table, changes = membership.gate_label_changes(stored.table, split(profile, cfg, stored.table), profile,
                                                   read_audit(raw))
    table, sources = route_by_source(table.sort_values("record_id").reset_index(drop=True), profile)
    keys = identity(profile)
    current = table[["record_id", "split", "label"]].merge(keys, on="record_id", how="left")
    write_atomic(path, lambda p: membership.save(p, membership.merged(stored.table, current), cfg))
    write_atomic(out, lambda p: table.to_parquet(p, index=False))
    gate_before = set(stored.table.loc[stored.table["split"] == membership.GATE, "record_id"])
    gate_now = set(table.loc[table["split"] == membership.GATE, "record_id"])
    counts = table["split"].value_counts().sort_index()
    return {"records": int(len(table)), "splits": {k: int(v) for k, v in counts.items()},
            "membership": stored.status, "sources": sources,
            "gate": {"records": len(gate_now), "added": len(gate_now - gate_before),
                     "by_source": sources["by_source"].get(GATE, {}),
                     "missing_from_raw": len(gate_before - set(profile["record_id"])),
                     "label_changes": changes, "label_changes_applied": sum(c["applied"] for c in changes),
                     "label_changes_held": sum(not c["applied"] for c in changes)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Split data/raw by shipment.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="splits.parquet; membership.parquet is kept beside it")
    ap.add_argument("--report", type=Path, help="the JSON report (reports/split.json)")
    args = ap.parse_args(argv)
    report = split_run(args.raw, args.out, load_params(args.params).split)
    if args.report:
        write_atomic(args.report, lambda p: p.write_text(json.dumps(report, indent=2), encoding="utf-8"))
    gate = report["gate"]
    print(f"split: {json.dumps(report['splits'])} (membership {report['membership']}); gate set "
          f"{gate['records']} records, {gate['added']} added, label changes applied {gate['label_changes_applied']}, "
          f"held {gate['label_changes_held']}, missing from data/raw {gate['missing_from_raw']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
