"""split: deterministic assignment by shipment, so no shipment is in two splits.

By the shipment's hash: test (the gate set), val (every choice), calib (abstention's calibration,
mmcore.selective), train. Each split's range is fixed by its fraction alone, so adding calib took
records from train only: the gate set and val kept every record they had.

A shipment's split depends only on its id and the salt, never on what else is in
the data: the test split (the gate set) only grows as data arrives, so champion
and challenger are always scored on the same records. Content seen before keeps
the split of its first occurrence (in capture order): the same parcel landed again
under a new record or shipment id cannot move a training record into the gate set.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmcore.config import SplitConfig, load_params
from mmcore.data.ingest import write_atomic
from mmcore.data.raw import load_profile
from mmcore.leak import CONTENT_KEYS, identity


def assign(shipment_id: str, cfg: SplitConfig) -> str:
    h = int(hashlib.sha256(f"{cfg.salt}:{shipment_id}".encode()).hexdigest()[:12], 16) / 16**12
    bounds = np.cumsum([cfg.test_fraction, cfg.val_fraction, cfg.calib_fraction])
    return ("test", "val", "calib", "train")[int(np.searchsorted(bounds, h, side="right"))]


def split(profile: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """record_id -> split, labelled records only (unlabelled ones are kept in raw, not trained on).

    First occurrences are looked up over every record, labelled or not, in capture order."""
    ids = identity(profile)
    keys = [k for k in CONTENT_KEYS if k in ids.columns]
    when = pd.to_datetime(profile["captured_at"], utc=True, format="ISO8601")
    order = ids.assign(shipment_id=profile["shipment_id"].values, _when=when.values)
    order = order.sort_values(["_when", "record_id"], kind="stable")
    first: dict[tuple[str, str], str] = {}
    assigned: dict[str, str] = {}
    for row in order[["record_id", "shipment_id", *keys]].itertuples(index=False):
        content = [(k, str(v)) for k, v in zip(keys, row[2:]) if not pd.isna(v)]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Split data/raw by shipment.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    table = split(load_profile(args.raw), load_params(args.params).split)
    write_atomic(args.out, lambda p: table.to_parquet(p, index=False))
    counts = table.groupby(["split", "label"]).size().unstack(fill_value=0)
    print(f"split: {json.dumps(table['split'].value_counts().to_dict())}\n{counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
