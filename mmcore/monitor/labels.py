"""The label feed (DESIGN §2b): labels that arrive after their record, joined onto data/raw.

    labels/<batch_id>/labels.jsonl   {"record_id" | "prediction_id": ..., "label", "labelled_at", "source"}
    labels/<batch_id>/_SUCCESS       written last; a batch without it is not read yet

Inspections, claims and reviews label a parcel days after its record landed, so labelled
data grows without new records. Ingest rebuilds data/raw from every batch on each run and
calls `join_labels` with the accepted rows, so the outcome depends only on the batches:

- A bad line is quarantined with its reason (bad_encoding, bad_json, bad_type, missing_field,
  ambiguous_id, bad_record_id, bad_prediction_id, unknown_label, bad_timestamp, bad_source).
- Two or more valid labels for one record in one label batch contradict each other or repeat
  a producer's retry: all of them are quarantined (duplicate_label); no line order decides.
- A label whose id names no accepted record is quarantined (unknown_id). It is not lost: the
  next run reads the batch again and joins it once its record has landed.
- Several labels for one record (its landing label, labels from several batches): the latest
  `labelled_at` wins; a landing label counts as labelled at its record's `captured_at`; on a
  tie a label batch beats the landing label and the later batch (by name) beats the earlier.
  Every label that lost goes to the audit table with the label that beat it.

Accounting: labels landed = joined + quarantined, checked before ingest writes anything
(a superseded label was joined, then outvoted: it is counted in `joined` and in the audit).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mmcore.data.checks import (Rejected, check_id, check_timestamp, normalise_label, quarantine_entry,
                                read_lines)
from mmcore.schema import AUDIT_COLUMNS, LABEL_FIELDS, LABEL_SOURCES, LANDING_SOURCE, Reason

LABELS_FILE = "labels.jsonl"


@dataclass(frozen=True)
class Label:
    """One label for one record: a valid label line, or the label a landing record came with.

    `key` is the id the line named it by (record_id or prediction_id); `record_id` is filled in
    once the label is joined. `labelled_at` is UTC ISO 8601 (check_timestamp)."""

    batch_id: str
    line: int | None
    key: str
    id: str
    label: str
    labelled_at: str
    source: str
    raw: str = ""
    record_id: str | None = None

    def order(self) -> tuple[datetime, int, str, int]:
        """The policy as a sort key: latest labelled_at, then label batch over landing, then batch name."""
        return (datetime.fromisoformat(self.labelled_at), int(self.source != LANDING_SOURCE),
                self.batch_id, self.line or 0)


@dataclass
class LabelJoin:
    """What the label feed did to the raw records: per-record label columns, audit, quarantine, counts."""

    columns: dict[str, dict[str, Any]] = field(default_factory=dict)   # record_id -> label, label_source, labelled_at
    audit: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    batches: dict[str, dict[str, int]] = field(default_factory=dict)
    landed: int = 0
    joined: int = 0

    def accounting_error(self) -> str | None:
        """Every label line is joined or quarantined, never dropped; a message when one was."""
        if self.landed == self.joined + len(self.quarantined):
            return None
        return (f"label accounting broken: landed {self.landed} != joined {self.joined} "
                f"+ quarantined {len(self.quarantined)}")

    def summary(self) -> dict[str, Any]:
        """The `labels` block of reports/ingest.json."""
        applied = sum(c["label_source"] not in (None, LANDING_SOURCE) for c in self.columns.values())
        return {"landed": self.landed, "joined": self.joined, "quarantined": len(self.quarantined),
                "by_reason": dict(sorted(Counter(q["reason"] for q in self.quarantined).items())),
                "superseded": len(self.audit), "applied": applied, "batches": self.batches}


def parse_label(obj: Any, batch_id: str, line_no: int, raw: str) -> Label:
    """All rules for one label line; raises Rejected with the first rule it breaks."""
    if not isinstance(obj, dict):
        raise Rejected(Reason.BAD_TYPE, f"a label must be a JSON object, got {type(obj).__name__}")
    named = [k for k in ("record_id", "prediction_id") if obj.get(k) is not None]
    if len(named) == 2:
        raise Rejected(Reason.AMBIGUOUS_ID, "a label names its record by record_id or by prediction_id, not both")
    missing = ([] if named else ["record_id or prediction_id"]) + [f for f in LABEL_FIELDS if f not in obj]
    if missing:
        raise Rejected(Reason.MISSING_FIELD, f"missing field(s) {missing}")
    key = named[0]
    ident = check_id(obj[key], key, Reason.BAD_RECORD_ID if key == "record_id" else Reason.BAD_PREDICTION_ID)
    for name in LABEL_FIELDS:
        if not isinstance(obj[name], str):
            raise Rejected(Reason.BAD_TYPE, f"{name} must be a string")
    label = normalise_label(obj["label"])
    labelled_at = check_timestamp(obj["labelled_at"], "labelled_at")
    source = obj["source"].strip().lower()
    if source not in LABEL_SOURCES:
        raise Rejected(Reason.BAD_SOURCE, f"source {obj['source'][:40]!r} is not one of {list(LABEL_SOURCES)}")
    return Label(batch_id, line_no, key, ident, label, labelled_at, source, raw)


def check_label_line(batch_id: str, line_no: int, raw_line: bytes) -> Label | dict[str, Any]:
    """One label line to a Label or a quarantine entry; never raises for bad data."""
    line = raw_line.decode("utf-8", errors="replace")
    obj: Any = None
    try:
        raw_line.decode("utf-8")
        obj = json.loads(line)
        return parse_label(obj, batch_id, line_no, line)
    except UnicodeDecodeError as exc:
        return quarantine_entry(batch_id, line_no, None, Reason.BAD_ENCODING, f"line is not UTF-8: {exc}", line)
    except json.JSONDecodeError as exc:
        return quarantine_entry(batch_id, line_no, None, Reason.BAD_JSON, str(exc), line)
    except Rejected as rej:
        ids = obj if isinstance(obj, dict) else {}
        return _entry(batch_id, line_no, ids.get("record_id"), ids.get("prediction_id"), rej.reason, rej.detail, line)


def read_label_batches(batch_dirs: list[Path]) -> list[tuple[str, list[Label | dict[str, Any]]]]:
    """Each finished label batch (ingest lists them with `ready_batches`) as its checked lines, in order."""
    out = []
    for bdir in batch_dirs:
        path = bdir / LABELS_FILE
        lines = read_lines(path) if path.is_file() else []
        out.append((bdir.name, [check_label_line(bdir.name, i, ln) for i, ln in enumerate(lines, start=1)]))
    return out


def _entry(batch_id: str, line_no: int, record_id: Any, prediction_id: Any, reason: Reason, detail: str,
           raw: str) -> dict[str, Any]:
    """A records-style quarantine entry plus the prediction_id the label named (if any)."""
    entry = quarantine_entry(batch_id, line_no, record_id, reason, detail, raw)
    entry["prediction_id"] = prediction_id if isinstance(prediction_id, str) else None
    return entry


def _quarantine_label(lab: Label, reason: Reason, detail: str) -> dict[str, Any]:
    ids = {"record_id": None, "prediction_id": None, lab.key: lab.id}
    return _entry(lab.batch_id, lab.line or 0, ids["record_id"], ids["prediction_id"], reason, detail, lab.raw)


def resolve_batch(batch_id: str, items: list[Label | dict[str, Any]], by_record: set[str],
                  by_prediction: dict[str, str]) -> tuple[list[Label], list[dict[str, Any]]]:
    """One label batch: valid lines resolved to record_ids (joined), the rest quarantined in line order."""
    quarantined = [i for i in items if isinstance(i, dict)]
    valid = [i for i in items if isinstance(i, Label)]

    def target(lab: Label) -> str | None:
        return (lab.id if lab.id in by_record else None) if lab.key == "record_id" else by_prediction.get(lab.id)

    groups: dict[str, list[Label]] = defaultdict(list)
    for lab in valid:   # one group per record; an unresolved id groups by the id it was named by
        groups[target(lab) or f"{lab.key}:{lab.id}"].append(lab)
    joined = []
    for labs in groups.values():
        rid = target(labs[0])
        if len(labs) > 1:
            what = f"record_id {rid!r}" if rid else f"{labs[0].key} {labs[0].id!r}"
            detail = f"{len(labs)} labels for {what} in label batch {batch_id}: none is applied"
            quarantined += [_quarantine_label(lab, Reason.DUPLICATE_LABEL, detail) for lab in labs]
        elif rid is None:
            lab = labs[0]
            quarantined.append(_quarantine_label(lab, Reason.UNKNOWN_ID, (
                f"no accepted record has {lab.key} {lab.id!r} (yet): a later run joins it once its record lands")))
        else:
            joined.append(replace(labs[0], record_id=rid))
    return joined, sorted(quarantined, key=lambda q: q["line"])


def landing_label(row: dict[str, Any]) -> Label | None:
    """The label a landing record came with, as a candidate labelled at its capture time."""
    if row.get("label") is None:
        return None
    return Label(row["batch_id"], None, "record_id", row["record_id"], row["label"], row["captured_at"],
                 LANDING_SOURCE, record_id=row["record_id"])


def audit_row(lost: Label, winner: Label, prediction_id: str | None) -> dict[str, Any]:
    return {"record_id": lost.record_id, "prediction_id": prediction_id, "label": lost.label,
            "labelled_at": lost.labelled_at, "source": lost.source, "batch_id": lost.batch_id, "line": lost.line,
            "superseded_by_label": winner.label, "superseded_by_labelled_at": winner.labelled_at,
            "superseded_by_source": winner.source, "superseded_by_batch": winner.batch_id}


def join_labels(rows: list[dict[str, Any]], feed: list[tuple[str, list[Label | dict[str, Any]]]]) -> LabelJoin:
    """Apply the policy to the accepted rows (record_id, prediction_id, label, captured_at, batch_id).

    No I/O and no mutation: the caller updates its rows from `columns`, so a failed accounting
    check leaves nothing half-applied."""
    out = LabelJoin()
    by_record = {r["record_id"] for r in rows}
    by_prediction = {r["prediction_id"]: r["record_id"] for r in rows if r.get("prediction_id") is not None}
    late: dict[str, list[Label]] = defaultdict(list)
    for batch_id, items in feed:
        joined, quarantined = resolve_batch(batch_id, items, by_record, by_prediction)
        for lab in joined:
            late[lab.record_id].append(lab)
        out.landed += len(items)
        out.joined += len(joined)
        out.quarantined += quarantined
        out.batches[batch_id] = {"landed": len(items), "joined": len(joined), "quarantined": len(quarantined)}
    for row in rows:
        first = landing_label(row)
        candidates = sorted(([first] if first else []) + late.get(row["record_id"], []), key=Label.order)
        if not candidates:
            out.columns[row["record_id"]] = {"label": None, "label_source": None, "labelled_at": None}
            continue
        winner = candidates[-1]
        out.columns[row["record_id"]] = {"label": winner.label, "label_source": winner.source,
                                         "labelled_at": winner.labelled_at}
        out.audit += [audit_row(lost, winner, row.get("prediction_id")) for lost in candidates[:-1]]
    out.audit.sort(key=lambda a: (a["record_id"], a["labelled_at"], a["batch_id"], a["line"] or 0))
    return out


def audit_frame(audit: list[dict[str, Any]]) -> pd.DataFrame:
    """The audit rows as data/raw/label_audit.parquet's table: fixed columns and types, even when empty."""
    return pd.DataFrame(audit, columns=list(AUDIT_COLUMNS)).astype(AUDIT_COLUMNS)
