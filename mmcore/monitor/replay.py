"""A landing batch (DESIGN §2) sent to the service as `/predict` requests (DESIGN §5): how a team
measures a new hub's traffic before it goes live, and how the scenario test and the monitor
benchmark make served traffic from labelled batches. Returns each answer with the record's label,
so a label batch for the answers' prediction_ids can be written afterwards (`label_batch`).

    PARCEL_API_KEY=<the service's key> python -m mmcore.monitor.replay --batch data/landing/B \\
        --url http://127.0.0.1:3000 [--per-request 8] [--labels data/labels/B-labels --source inspection]
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from mmcore.schema import SENSOR_HEADER


def api_record(rec: dict[str, Any], batch: Path) -> dict[str, Any]:
    """One landing record as an API record: image as base64, sensor CSV as channel lists."""
    out: dict[str, Any] = {"record_id": rec["record_id"], "shipment_id": rec.get("shipment_id"),
                           "hub": rec.get("hub"), "captured_at": rec.get("captured_at"), "note": rec.get("note")}
    if rec.get("image"):
        out["image"] = base64.b64encode((batch / rec["image"]).read_bytes()).decode()
    if rec.get("sensor"):
        with (batch / rec["sensor"]).open(newline="") as f:
            rows = list(csv.DictReader(f))
        out["sensor"] = {ch: [float(r[ch]) for r in rows] for ch in SENSOR_HEADER}
    return out


def batch_records(batch: Path) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(API record, label) per line of the batch's records.jsonl, in order; a record with no modality
    is left out (the service refuses it with 400 by contract, and it would fail its whole request)."""
    for line in (batch / "records.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("image") or (rec.get("note") or "").strip() or rec.get("sensor"):
            yield api_record(rec, batch), rec.get("label")


def replay(url: str, batch: Path, per_request: int = 8, timeout: float = 120,
           key: str | None = None) -> list[dict[str, Any]]:
    """Every record of `batch` through `url`/predict with the service's key (`key`, else PARCEL_API_KEY);
    returns the answers, each with `true_label`."""
    import httpx

    pairs = list(batch_records(batch))
    answers: list[dict[str, Any]] = []
    key = key or os.environ.get("PARCEL_API_KEY")
    with httpx.Client(base_url=url, timeout=timeout, headers={"x-api-key": key} if key else None) as client:
        for i in range(0, len(pairs), per_request):
            chunk = pairs[i:i + per_request]
            resp = client.post("/predict", json={"records": [r for r, _ in chunk]})
            if resp.status_code != 200:
                raise RuntimeError(f"/predict answered {resp.status_code}: {resp.text[:500]}")
            for answer, (_, label) in zip(resp.json(), chunk):
                answers.append({**answer, "true_label": label})
    return answers


def label_batch(folder: Path, answers: list[dict[str, Any]], source: str = "inspection",
                labelled_at: datetime | None = None) -> int:
    """A label batch (DESIGN §2b) naming the answers by prediction_id; `_SUCCESS` written last."""
    at = (labelled_at or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    lines = [json.dumps({"prediction_id": a["prediction_id"], "label": a["true_label"], "labelled_at": at,
                         "source": source}) for a in answers if a.get("true_label")]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    (folder / "_SUCCESS").write_text("", encoding="utf-8")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Send a landing batch to the service as /predict requests.")
    ap.add_argument("--batch", type=Path, required=True, help="a landing batch folder (records.jsonl)")
    ap.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:3000")
    ap.add_argument("--per-request", type=int, default=8)
    ap.add_argument("--labels", type=Path, help="write a label batch for the answers here (labels/<batch>)")
    ap.add_argument("--source", default="inspection", choices=("inspection", "claim", "review"))
    args = ap.parse_args(argv)
    answers = replay(args.url, args.batch, args.per_request)
    hits = sum(a["label"] == a["true_label"] for a in answers if a["true_label"])
    labelled = sum(1 for a in answers if a["true_label"])
    print(f"{len(answers)} answers; {hits}/{labelled} labelled records answered correctly")
    if args.labels:
        print(f"{label_batch(args.labels, answers, args.source)} labels -> {args.labels}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
