"""The label feed (DESIGN §2b): labels that arrive after their record, joined onto data/raw.

    labels/<batch_id>/labels.jsonl   {"record_id" | "prediction_id": ..., "label", "labelled_at", "source"?,
                                      "labeller"?}
    labels/<batch_id>/_SUCCESS       written last; a batch without it is not read yet

Inspections, claims and reviews label a parcel days after its record landed, so labelled
data grows without new records. Each label keeps its source, its labeller and the batch that
delivered it (`label_batch`: its join) into data/raw; a line without a source is `unknown`, which the
split treats like `review` (never in the gate set or calib). No wall-clock join time is stored: ingest
rebuilds data/raw from the batches and gives the same bytes for the same batches.

Ingest rebuilds data/raw from every batch on each run and
calls `join_labels` with the accepted rows, so the outcome depends only on the batches (and on
the clock, for a label dated in the future: it joins once its time is near):

- A bad line is quarantined with its reason (line_too_long, too_deep, bad_encoding, bad_json,
  bad_type, missing_field, ambiguous_id, bad_record_id, bad_prediction_id, unknown_label,
  bad_timestamp, timestamp_out_of_range, bad_source, bad_labeller; internal_error if a check
  raised what no rule foresaw). `labelled_at` must lie in ingest's sane window (not before
  `ingest.earliest_timestamp`, not more than `ingest.max_future_skew_hours` ahead): a label
  dated 9999 would otherwise win over every later correction.
- A feed delivers at least once: a line repeating an earlier one exactly (same record, label,
  labelled_at, source and labeller, in this batch or an earlier one) is applied once; the copy
  counts as joined and in `duplicate_lines`, and is neither quarantined nor audited.
- Different labels for one record in one label batch contradict each other: all of those lines
  are quarantined (conflicting_label); no line order decides. Lines that agree on the label but
  not on the time or source are all joined, and the policy below picks one.
- A label whose id names no accepted record is quarantined (unknown_id). It is not lost: the
  next run reads the batch again and joins it once its record has landed.
- Several labels for one record (its landing label, labels from several batches): the latest
  `labelled_at` wins; a landing label counts as labelled at its record's `captured_at`; on a
  tie a label batch beats the landing label and the later batch (by name) beats the earlier.
  Every label that lost goes to the audit table with the label that beat it.

Accounting: labels landed = joined + quarantined, checked before ingest writes anything
(a superseded label was joined, then outvoted: it is counted in `joined` and in the audit;
an exact repeat was joined, then applied once: it is counted in `joined` and `duplicate_lines`).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mmcore.config import IngestConfig
from mmcore.data.checks import (DEFAULT_RULES, LineRules, Rejected, batch_lines, check_id, check_timestamp,
                                normalise_label, parse_line, quarantine_entry)
from mmcore.schema import (AUDIT_COLUMNS, LABEL_FIELDS, LABEL_SOURCES, LABELLER_RE, LANDING_SOURCE, UNKNOWN_SOURCE,
                           Reason)

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
    labeller: str | None = None

    def content(self) -> tuple[str | None, str, str, str, str | None]:
        """What makes two lines the same label: a redelivered line is applied once."""
        return self.record_id, self.label, self.labelled_at, self.source, self.labeller

    def order(self) -> tuple[datetime, int, str, int]:
        """The policy as a sort key: latest labelled_at, then label batch over landing, then batch name."""
        return (datetime.fromisoformat(self.labelled_at), int(self.source != LANDING_SOURCE),
                self.batch_id, self.line or 0)


@dataclass
class LabelJoin:
    """What the label feed did to the raw records: per-record label columns, audit, quarantine, counts."""

    # record_id -> label, label_source, labelled_at, labeller, label_batch
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    batches: dict[str, dict[str, int]] = field(default_factory=dict)
    landed: int = 0
    joined: int = 0
    duplicates: int = 0      # exact repeats of a joined line: counted in `joined`, applied once

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
                "superseded": len(self.audit), "applied": applied, "duplicate_lines": self.duplicates,
                "batches": self.batches}


def check_labeller(value: Any) -> str | None:
    """Who gave the label: optional, bounded, a name or an e-mail (LABELLER_RE), never markup."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Rejected(Reason.BAD_TYPE, "labeller must be a string or null")
    if not LABELLER_RE.fullmatch(value.strip()):
        raise Rejected(Reason.BAD_LABELLER, f"labeller {value[:40]!r}: 1..64 letters, digits, spaces or _.@+-")
    return value.strip()


def check_source(value: Any) -> str:
    """Who chose the record: one of LABEL_SOURCES; absent or null (an older sender) is `unknown`, which
    never enters the gate set or calib (mmcore/data/split.py): no default may claim an unbiased choice."""
    if value is None:
        return UNKNOWN_SOURCE
    if not isinstance(value, str):
        raise Rejected(Reason.BAD_TYPE, "source must be a string or null")
    if (source := value.strip().lower()) not in LABEL_SOURCES:
        raise Rejected(Reason.BAD_SOURCE, f"source {value[:40]!r} is not one of {list(LABEL_SOURCES)}")
    return source


def parse_label(obj: Any, batch_id: str, line_no: int, raw: str, rules: LineRules = DEFAULT_RULES) -> Label:
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
    labelled_at = check_timestamp(obj["labelled_at"], "labelled_at", rules)
    source = check_source(obj.get("source"))
    return Label(batch_id, line_no, key, ident, label, labelled_at, source, raw,
                 labeller=check_labeller(obj.get("labeller")))


def check_label_line(batch_id: str, line_no: int, raw_line: bytes,
                     rules: LineRules = DEFAULT_RULES) -> Label | dict[str, Any]:
    """One label line to a Label or a quarantine entry; never raises, for bad data or a bug
    (the review app reads the feed with this too: one line must not make it answer 500)."""
    line = raw_line.decode("utf-8", errors="replace")
    obj: Any = None
    try:
        obj = parse_line(raw_line, rules)
        return parse_label(obj, batch_id, line_no, line, rules)
    except Exception as exc:  # noqa: BLE001 - Rejected, or the last resort for what no rule foresaw
        reason, detail = ((exc.reason, exc.detail) if isinstance(exc, Rejected)
                          else (Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {str(exc)[:300]}"))
        ids = obj if isinstance(obj, dict) else {}
        return _entry(batch_id, line_no, ids.get("record_id"), ids.get("prediction_id"), reason, detail, line)


def read_label_batch(bdir: Path, rules: LineRules = DEFAULT_RULES) -> list[Label | dict[str, Any]]:
    """One finished label batch as its checked lines, in order (the review app reads one at a time)."""
    lines, unreadable = batch_lines(bdir / LABELS_FILE, bdir.name, rules.max_line_bytes)
    unreadable = [{**q, "prediction_id": None} for q in unreadable]
    return [*unreadable, *(check_label_line(bdir.name, i, ln, rules) for i, ln in enumerate(lines, start=1))]


def read_label_batches(batch_dirs: list[Path],
                       cfg: IngestConfig | None = None) -> list[tuple[str, list[Label | dict[str, Any]]]]:
    """Each finished label batch (ingest lists them with `ready_batches`) as its checked lines, in order."""
    rules = LineRules.of(cfg) if cfg is not None else DEFAULT_RULES
    return [(bdir.name, read_label_batch(bdir, rules)) for bdir in batch_dirs]


def _entry(batch_id: str, line_no: int, record_id: Any, prediction_id: Any, reason: Reason, detail: str,
           raw: str) -> dict[str, Any]:
    """A records-style quarantine entry plus the prediction_id the label named (if any)."""
    entry = quarantine_entry(batch_id, line_no, record_id, reason, detail, raw)
    entry["prediction_id"] = prediction_id if isinstance(prediction_id, str) else None
    return entry


def _quarantine_label(lab: Label, reason: Reason, detail: str) -> dict[str, Any]:
    ids = {"record_id": None, "prediction_id": None, lab.key: lab.id}
    return _entry(lab.batch_id, lab.line or 0, ids["record_id"], ids["prediction_id"], reason, detail, lab.raw)


def first_of_each(labels: list[Label]) -> tuple[list[Label], int]:
    """Labels without exact repeats (the first delivery of each is kept, in order; batches are
    read in name order), and how many repeats were dropped."""
    kept: dict[tuple[Any, ...], Label] = {}
    for lab in labels:
        kept.setdefault(lab.content(), lab)
    return list(kept.values()), len(labels) - len(kept)


@dataclass
class Resolved:
    """One label batch resolved: labels to join, exact repeats applied once, quarantine entries."""

    joined: list[Label] = field(default_factory=list)
    repeats: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)


def resolve_batch(batch_id: str, items: list[Label | dict[str, Any]], by_record: set[str],
                  by_prediction: dict[str, str]) -> Resolved:
    """One label batch: valid lines resolved to record_ids (joined), the rest quarantined in line order."""
    out = Resolved(quarantined=[i for i in items if isinstance(i, dict)])

    def target(lab: Label) -> str | None:
        return (lab.id if lab.id in by_record else None) if lab.key == "record_id" else by_prediction.get(lab.id)

    groups: dict[str, list[Label]] = defaultdict(list)
    for lab in items:   # one group per record; an unresolved id groups by the id it was named by
        if isinstance(lab, Label):
            groups[target(lab) or f"{lab.key}:{lab.id}"].append(replace(lab, record_id=target(lab)))
    for labs in groups.values():
        rid = labs[0].record_id
        what = f"record_id {rid!r}" if rid else f"{labs[0].key} {labs[0].id!r}"
        distinct, repeats = first_of_each(labs)
        if len(given := sorted({lab.label for lab in labs})) > 1:
            detail = (f"{len(labs)} lines give {what} different labels ({', '.join(given)}) in label batch "
                      f"{batch_id}: none is applied")
            out.quarantined += [_quarantine_label(lab, Reason.CONFLICTING_LABEL, detail) for lab in labs]
        elif rid is None:
            out.quarantined += [_quarantine_label(lab, Reason.UNKNOWN_ID, (
                f"no accepted record has {lab.key} {lab.id!r} (yet): a later run joins it once its record lands"))
                for lab in labs]
        else:
            out.joined += distinct
            out.repeats += repeats
    out.quarantined.sort(key=lambda q: q["line"])
    return out


def landing_label(row: dict[str, Any]) -> Label | None:
    """The label a landing record came with, as a candidate labelled at its capture time."""
    if row.get("label") is None:
        return None
    return Label(row["batch_id"], None, "record_id", row["record_id"], row["label"], row["captured_at"],
                 LANDING_SOURCE, record_id=row["record_id"])


def audit_row(lost: Label, winner: Label, prediction_id: str | None) -> dict[str, Any]:
    return {"record_id": lost.record_id, "prediction_id": prediction_id, "label": lost.label,
            "labelled_at": lost.labelled_at, "source": lost.source, "labeller": lost.labeller,
            "batch_id": lost.batch_id, "line": lost.line,
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
        res = resolve_batch(batch_id, items, by_record, by_prediction)
        for lab in res.joined:
            late[lab.record_id].append(lab)
        joined = len(res.joined) + res.repeats
        out.landed += len(items)
        out.joined += joined
        out.duplicates += res.repeats
        out.quarantined += res.quarantined
        out.batches[batch_id] = {"landed": len(items), "joined": joined, "quarantined": len(res.quarantined)}
    for row in rows:
        first = landing_label(row)
        feed_labels, repeats = first_of_each(late.get(row["record_id"], []))
        out.duplicates += repeats
        candidates = sorted(([first] if first else []) + feed_labels, key=Label.order)
        if not candidates:
            out.columns[row["record_id"]] = {"label": None, "label_source": None, "labelled_at": None,
                                             "labeller": None, "label_batch": None}
            continue
        winner = candidates[-1]
        out.columns[row["record_id"]] = {"label": winner.label, "label_source": winner.source,
                                         "labelled_at": winner.labelled_at, "labeller": winner.labeller,
                                         "label_batch": winner.batch_id}
        out.audit += [audit_row(lost, winner, row.get("prediction_id")) for lost in candidates[:-1]]
    out.audit.sort(key=lambda a: (a["record_id"], a["labelled_at"], a["batch_id"], a["line"] or 0))
    return out


def audit_frame(audit: list[dict[str, Any]]) -> pd.DataFrame:
    """The audit rows as data/raw/label_audit.parquet's table: fixed columns and types, even when empty."""
    return pd.DataFrame(audit, columns=list(AUDIT_COLUMNS)).astype(AUDIT_COLUMNS)
