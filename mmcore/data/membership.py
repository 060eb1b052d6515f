"""Stored split membership: once a record is in a split (the gate set above all), it stays there.

Recomputing splits from capture order let data rewrite the gate set: a back-dated copy of a gate-set
photo under a shipment that hashes to train became the content's "first occurrence", and the original
followed it out of the gate set. So the split stage keeps what it gave: `data/split/membership.parquet`
holds every labelled record's split (records that left data/raw included, should they come back), the
label it had and its content keys, and the next run starts from it. dvc.yaml declares `data/split`
with `persist: true`: DVC neither deletes it before the stage runs nor restores an older one from its
run cache, so the file the stage reads is the one it wrote last (`dvc checkout` of an older commit
brings that commit's membership, which is that data version's).

The membership is valid for the split settings it was made with (salt and fractions, kept in the
file's metadata): a change of those reshuffles on purpose, and the gate then refuses models whose
fitted records moved into the gate set (mmcore/leak.py).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmcore.config import SplitConfig

MEMBERSHIP_FILE = "membership.parquet"
COLUMNS: dict[str, str] = {"record_id": "string", "split": "string", "label": "string",
                           "content_sha256": "string", "image_sha256": "string"}
META_KEY = b"mmcore.split"
GATE = "test"
# content registered first for the split it protects most: a clash between stored records keeps the gate set's
PRIORITY = {"test": 0, "val": 1, "calib": 2, "train": 3}


def settings(cfg: SplitConfig) -> dict[str, Any]:
    return asdict(cfg)


@dataclass
class Stored:
    """What the last split run kept; `status` says whether it is used: new (none yet), kept, reset."""

    table: pd.DataFrame
    status: str


def empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def load(path: Path, cfg: SplitConfig) -> Stored:
    """The stored membership, or an empty one when there is none or it was made with other settings."""
    if not path.is_file():
        return Stored(empty(), "new")
    table = pq.read_table(path)
    made_with = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    if made_with != settings(cfg):
        return Stored(empty(), "reset")
    return Stored(table.to_pandas().astype(COLUMNS)[list(COLUMNS)], "kept")


def save(path: Path, table: pd.DataFrame, cfg: SplitConfig) -> None:
    """Sorted by record_id, settings in the metadata: the same membership gives the same bytes."""
    frame = table.astype(COLUMNS)[list(COLUMNS)].sort_values("record_id").reset_index(drop=True)
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                          META_KEY: json.dumps(settings(cfg), sort_keys=True).encode()})
    pq.write_table(arrow, path)


def merged(stored: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """This run's labelled records over the stored ones: a record keeps its row until it is seen again."""
    rest = stored[~stored["record_id"].isin(current["record_id"])]
    now = current.reindex(columns=list(COLUMNS))        # a profile without a content key leaves it null
    return pd.concat([rest.astype(COLUMNS), now.astype(COLUMNS)], ignore_index=True)


def audited(audit: pd.DataFrame | None, record_id: str, old: Any, new: Any) -> dict[str, Any] | None:
    """The audit row that shows `old` losing to `new` for this record (mmcore/monitor/labels.py), if any."""
    if audit is None or audit.empty or pd.isna(old) or pd.isna(new):
        return None
    hit = audit[(audit["record_id"] == record_id) & (audit["label"] == old) & (audit["superseded_by_label"] == new)]
    return None if hit.empty else hit.iloc[-1].to_dict()


def gate_label_changes(stored: pd.DataFrame, out: pd.DataFrame, profile: pd.DataFrame,
                       audit: pd.DataFrame | None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Gate-set records whose label differs from the one they had at the last split run.

    A change shown by an audit entry (the old label superseded by the new one) is applied and listed;
    one without (a label batch removed, a record's label gone) is held: the record keeps its stored
    label in the gate set, and the change is listed as held."""
    gate = stored[stored["split"] == GATE].set_index("record_id")
    now = out.set_index("record_id")
    rows = profile.set_index("record_id")
    changes, held = [], []
    for rid, old in gate["label"].items():
        if rid not in rows.index:
            continue        # left data/raw: counted as missing by the caller
        new = now["label"].get(rid) if rid in now.index else None
        if new is not None and new == old:
            continue
        entry = audited(audit, rid, old, new)
        by = {c: _text(rows, rid, c) if entry is not None else None
              for c in ("label_source", "labelled_at", "labeller")}
        changes.append({"record_id": rid, "from": old, "to": new, "applied": entry is not None, **by,
                        "audit_batch": entry["batch_id"] if entry is not None else None})
        if entry is None:
            held.append({"record_id": rid, "shipment_id": rows.at[rid, "shipment_id"], "label": old, "split": GATE})
    kept = out[~out["record_id"].isin([h["record_id"] for h in held])]
    return pd.concat([kept, pd.DataFrame(held, columns=out.columns)], ignore_index=True), changes


def _text(rows: pd.DataFrame, rid: str, col: str) -> str | None:
    if col not in rows.columns or pd.isna(rows.at[rid, col]):
        return None
    return str(rows.at[rid, col])
