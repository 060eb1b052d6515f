"""capture: the traffic the service captured in a period becomes an ordinary landing batch (DESIGN §2, §2b),
so served records pass through the same ingest, quarantine and validation as every other batch.

    python -m mmcore.monitor.capture_batches --capture DIR [DIR ...] --landing data/landing \\
        --since 2026-12-01T10:00:00Z --until 2026-12-01T11:00:00Z [--wait 30] [--report out.json]

A record answered in [since, until) lands as `cap-<prediction_id>` with its prediction_id, the
client's shipment_id, hub and captured_at (sent with /predict, checked there as ingest checks them),
its image and sensor (t_s kept, or made at SENSOR_PERIOD_S when the client sent none) as files, and
label null. What a client did not send is not guessed: the record lands with the contract's
placeholders (shipment `req-<request id>`: the records of one request stay on one side of the split;
hub `unknown`; captured_at = the answer time) and is counted in `without_context`, per field.

Accounting, checked before anything is written: for the period, the service's counts say every
answered record was written, sampled out or dropped (queue_full, store_full, write_error, shutdown);
the log holds as many lines as were written; and captured (answered - sampled_out) = landed +
service drops + drops here (blob_missing, blob_corrupt, duplicate_prediction_id, bad_record).
A period whose counts do not settle yet (records still queued, or `until` not passed) is refused,
so a batch is never written from half a period; `--wait` retries. Idempotent: the batch id is the
period (`capture-<since>-<until>`), the bytes depend only on what was captured, and a batch with
`_SUCCESS` is never rewritten. Crash-safe: built in a dot folder, renamed, `_SUCCESS` written last.

Once a period has landed (written, empty, or there already) each capture folder's `landed.json` says
so (mmcore.serving.capture_aging): the service's writers delete landed answers only, after
PARCEL_CAPTURE_RETENTION_DAYS or at PARCEL_CAPTURE_MAX_BYTES. The accounting's service drops
(store_full among them) are the answers capture lost before they could land.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from mmcore.schema import RECORD_FIELDS, RECORD_ID_RE, SENSOR_HEADER
from mmcore.serving.capture import MONITOR_NAME
from mmcore.serving.capture_aging import mark_landed
from mmcore.serving.capture_store import DROP_REASONS, BlobStore, read_counts

SENSOR_PERIOD_S = 60.0  # t_s step when a client sent channels only (the synthetic feed's fixed period)
PNG_MAGIC = b"\x89PNG"   # anything else the service accepted is a JPEG (ingest decodes by content anyway)
CAPTURE_DROPS: tuple[str, ...] = ("blob_missing", "blob_corrupt", "duplicate_prediction_id", "bad_record")
CONTEXT: tuple[str, ...] = ("shipment_id", "hub", "captured_at")   # what /predict may send of the landing contract
PREFIX = "capture-"      # a capture batch's id: capture-<since>-<until>, UTC, %Y%m%dT%H%M%SZ
ID_TIME = "%Y%m%dT%H%M%SZ"


class NotSettled(RuntimeError):
    """The period cannot be landed yet (or, with records lost in a crash, without --accept-loss)."""


@dataclass(frozen=True)
class Period:
    since: datetime
    until: datetime

    @property
    def batch_id(self) -> str:
        return f"{PREFIX}{self.since:{ID_TIME}}-{self.until:{ID_TIME}}"

    @classmethod
    def from_batch_id(cls, batch_id: str) -> "Period":
        """The period a capture batch's id names (the inverse of `batch_id`)."""
        parts = batch_id.removeprefix(PREFIX).split("-")
        try:
            if not batch_id.startswith(PREFIX) or len(parts) != 2:
                raise ValueError
            since, until = (datetime.strptime(v, ID_TIME).replace(tzinfo=timezone.utc) for v in parts)
        except ValueError:
            raise ValueError(f"{batch_id!r} is not a capture batch ({PREFIX}<since>-<until>)") from None
        return make_period(since, until)

    def __contains__(self, ts: datetime) -> bool:
        return self.since <= ts < self.until


def parse_time(value: str) -> datetime:
    """ISO 8601 with a timezone and whole seconds (the counts are per second), as UTC."""
    ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"{value!r} has no timezone")
    if ts.microsecond:
        raise ValueError(f"{value!r} is not a whole second")
    return ts.astimezone(timezone.utc)


def make_period(since: datetime, until: datetime) -> Period:
    if until <= since:
        raise ValueError(f"until {until.isoformat()} is not after since {since.isoformat()}")
    return Period(since.astimezone(timezone.utc), until.astimezone(timezone.utc))


@dataclass
class Logged:
    """The log lines of one capture folder answered in the period; `unreadable` counts lines that
    are not JSON or carry no answer time (they belong to no period)."""

    root: Path
    lines: list[dict[str, Any]]
    unreadable: int = 0


def read_log(root: Path, period: Period, monitor: str = MONITOR_NAME) -> Logged:
    out = Logged(root, [])
    for path in sorted((root / "log" / monitor / "data").glob("data.*.log*")):
        try:
            if datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) < period.since:
                continue  # last written before the period began: none of its lines can be in it
            data = path.read_bytes()
        except FileNotFoundError:  # aged out (capture_aging) between the listing and the read
            continue
        for raw in data.splitlines():
            try:
                line = json.loads(raw)
                ts = datetime.fromisoformat(line["answered_at"])
            except (ValueError, KeyError, TypeError):
                out.unreadable += 1
                continue
            if ts in period:
                out.lines.append(line)
    return out


def _blob(blobs: BlobStore, digest: Any) -> bytes | str:
    """The blob's bytes, or why it cannot land (a digest that is not one is a bad record, not a path)."""
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return "bad_record"
    if not blobs.path(digest).is_file():
        return "blob_missing"
    data = blobs.get(digest)
    return data if data is not None else "blob_corrupt"


def sensor_csv(sensor: dict[str, Any]) -> str:
    """The channels as received, as a DESIGN §2 sensor file; t_s made at SENSOR_PERIOD_S if absent."""
    rows = len(sensor["temperature_c"])
    t_s = sensor.get("t_s") or [i * SENSOR_PERIOD_S for i in range(rows)]
    cols = [t_s, *(sensor[c] for c in SENSOR_HEADER[1:])]
    if any(len(c) != rows for c in cols):
        raise ValueError("sensor channels of unequal length")
    lines = [",".join(SENSOR_HEADER), *(",".join(repr(float(c[i])) for c in cols) for i in range(rows))]
    return "\n".join(lines) + "\n"


def landing_record(line: dict[str, Any], blobs: BlobStore) -> tuple[dict[str, Any], dict[str, bytes]] | str:
    """One captured line as a landing record and its files, or the reason it cannot land."""
    pid, req = line.get("prediction_id"), line.get("x_request_id")
    if not all(isinstance(v, str) and RECORD_ID_RE.match(v) and len(v) <= 60 for v in (pid, req)):
        return "bad_record"
    rid = f"cap-{pid}"
    files: dict[str, bytes] = {}
    answered = datetime.fromisoformat(line["answered_at"]).astimezone(timezone.utc).isoformat()
    rec = {"record_id": rid, "shipment_id": line.get("shipment_id") or f"req-{req}",
           "captured_at": line.get("captured_at") or answered,
           "hub": line.get("hub") or "unknown", "image": None, "note": line.get("note"), "sensor": None,
           "label": None, "prediction_id": pid}
    if line.get("image") is not None:
        data = _blob(blobs, line["image"])
        if isinstance(data, str):
            return data
        rec["image"] = f"images/{rid}.{'png' if data.startswith(PNG_MAGIC) else 'jpg'}"
        files[rec["image"]] = data
    if line.get("sensor") is not None:
        data = _blob(blobs, line["sensor"])
        if isinstance(data, str):
            return data
        try:
            csv = sensor_csv(json.loads(data))
        except (ValueError, KeyError, TypeError):
            return "bad_record"
        rec["sensor"] = f"sensors/{rid}.csv"
        files[rec["sensor"]] = csv.encode()
    return {k: rec[k] for k in (*RECORD_FIELDS, "prediction_id")}, files


def without_context(logs: list[Logged], landed: list[tuple[dict[str, Any], dict[str, bytes]]]) -> dict[str, int]:
    """Landed records whose client sent no shipment_id, hub or captured_at (each), and no context at all."""
    pids = {rec["prediction_id"] for rec, _ in landed}
    lines = {ln.get("prediction_id"): ln for log in logs for ln in log.lines if ln.get("prediction_id") in pids}
    out = {f: sum(not lines[p].get(f) for p in pids) for f in CONTEXT}
    out["none"] = sum(not any(lines[p].get(f) for f in CONTEXT) for p in pids)
    return out


def collect(logs: list[Logged]) -> tuple[list[tuple[dict[str, Any], dict[str, bytes]]], Counter[str]]:
    """Landing records in answer order (then prediction id: the batch's bytes never depend on the
    order of files or folders), and what could not land, by reason."""
    lines = sorted(((datetime.fromisoformat(ln["answered_at"]), str(ln.get("prediction_id")), i, j)
                    for i, log in enumerate(logs) for j, ln in enumerate(log.lines)))
    records, drops, seen = [], Counter[str](), set()
    for _, pid, i, j in lines:
        if pid in seen:
            drops["duplicate_prediction_id"] += 1
            continue
        seen.add(pid)
        out = landing_record(logs[i].lines[j], BlobStore(logs[i].root))
        if isinstance(out, str):
            drops[out] += 1
        else:
            records.append(out)
    return records, drops


def account(counts: Counter[str], logged: int, landed: int, drops: Counter[str], accept_loss: bool) -> dict[str, Any]:
    """captured = landed + service drops + capture drops, or NotSettled saying what does not add up."""
    service = {r: counts.get(r, 0) for r in DROP_REASONS}
    captured = counts.get("answered", 0) - counts.get("sampled_out", 0)
    in_flight = captured - counts.get("written", 0) - sum(service.values())
    problems = []
    if in_flight:
        problems.append(f"{in_flight} answered record(s) neither written, sampled out nor counted as dropped "
                        "(still queued, or lost in a crash)")
    if logged != counts.get("written", 0):
        problems.append(f"the log holds {logged} line(s) of the period, the counts say {counts.get('written', 0)}")
    unaccounted = captured - landed - sum(service.values()) - sum(drops.values())
    if problems and not accept_loss:
        raise NotSettled("; ".join(problems))
    if unaccounted and not accept_loss:
        raise RuntimeError(f"accounting broken: captured {captured} != landed {landed} + dropped "
                           f"{service} + {dict(drops)}; nothing was written")
    return {"answered": counts.get("answered", 0), "sampled_out": counts.get("sampled_out", 0),
            "captured": captured, "written": counts.get("written", 0), "logged": logged, "landed": landed,
            "dropped": {"service": service, "capture": {r: drops.get(r, 0) for r in CAPTURE_DROPS}},
            "unaccounted": unaccounted, "problems": problems}


def write_batch(landing: Path, batch_id: str, records: list[tuple[dict[str, Any], dict[str, bytes]]]) -> Path:
    """Build in `.<batch>.tmp-<pid>`, rename, then `_SUCCESS` (ingest reads only folders that have it)."""
    final = landing / batch_id
    landing.mkdir(parents=True, exist_ok=True)
    for stale in landing.glob(f".{batch_id}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():  # an earlier run renamed it and stopped before _SUCCESS: build it again
        shutil.rmtree(final)
    tmp = landing / f".{batch_id}.tmp-{os.getpid()}"
    for sub in ("images", "sensors"):
        (tmp / sub).mkdir(parents=True)
    for _, files in records:
        for rel, content in files.items():
            (tmp / rel).write_bytes(content)
    lines = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec, _ in records)
    (tmp / "records.jsonl").write_text(lines, encoding="utf-8")
    os.replace(tmp, final)
    (final / "_SUCCESS").write_text("", encoding="utf-8")
    return final


def capture_batch(roots: Iterable[Path], landing: Path, period: Period, monitor: str = MONITOR_NAME,
                  now: datetime | None = None, accept_loss: bool = False) -> dict[str, Any]:
    """Land the period's captured records of the capture folders `roots`; returns the accounting."""
    roots = list(roots)
    summary: dict[str, Any] = {"batch_id": period.batch_id, "since": period.since.isoformat(),
                               "until": period.until.isoformat()}
    if (landing / period.batch_id / "_SUCCESS").is_file():
        return {**summary, "status": "exists", **mark(roots, period)}
    if period.until > (now or datetime.now(timezone.utc)):
        raise NotSettled(f"the period ends at {period.until.isoformat()}, not passed yet")
    logs = [read_log(root, period, monitor) for root in roots]
    records, drops = collect(logs)
    counts = read_counts(roots, period.since, period.until)
    summary.update(account(counts, sum(len(log.lines) for log in logs), len(records), drops, accept_loss))
    summary["unreadable_lines"] = sum(log.unreadable for log in logs)
    summary["without_context"] = without_context(logs, records)
    if not records:
        return {**summary, "status": "empty", **mark(roots, period)}
    write_batch(landing, period.batch_id, records)
    return {**summary, "status": "written", **mark(roots, period)}


def mark(roots: list[Path], period: Period) -> dict[str, Any]:
    """Tell each capture folder's writers that the period has landed (capture_aging's marker), so they
    may delete its answers once old, or at their byte cap. A marker that cannot be written loses
    nothing (no answer is deleted unmarked); it is reported, and the next landing tries again."""
    through: dict[str, str | None] = {}
    problems = []
    for root in roots:
        try:
            ts = mark_landed(root, (period.since, period.until))
            through[str(root)] = ts.isoformat() if ts else None
        except (OSError, RuntimeError) as exc:
            problems.append(f"{root}: landed marker not written: {type(exc).__name__}: {exc}")
    return {"landed_through": through, "marker_problems": problems}


def capture_batch_waiting(roots: list[Path], landing: Path, period: Period, wait_s: float,
                          **kwargs: Any) -> dict[str, Any]:
    """`capture_batch`, retried every half second while the period has not settled, up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return capture_batch(roots, landing, period, **kwargs)
        except NotSettled:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Land a period of captured traffic as a landing batch.")
    ap.add_argument("--capture", type=Path, nargs="+", required=True, help="capture folder(s) (PARCEL_CAPTURE_DIR)")
    ap.add_argument("--landing", type=Path, required=True)
    ap.add_argument("--since", type=parse_time, required=True, help="ISO 8601 with timezone, whole seconds")
    ap.add_argument("--until", type=parse_time, required=True, help="exclusive; must have passed")
    ap.add_argument("--monitor", default=MONITOR_NAME, help="BentoML monitor name (the log's folder)")
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to retry while the period settles")
    ap.add_argument("--accept-loss", action="store_true",
                    help="land what is there even if counts and log disagree (after a crash); reported")
    ap.add_argument("--report", type=Path, help="write the accounting as JSON here")
    args = ap.parse_args(argv)
    try:
        summary = capture_batch_waiting(args.capture, args.landing, make_period(args.since, args.until), args.wait,
                                        monitor=args.monitor, accept_loss=args.accept_loss)
    except NotSettled as exc:
        print(f"capture: not landed: {exc}")
        return 3
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if summary["status"] == "exists":
        print(f"capture: {summary['batch_id']} exists, not rewritten")
    else:
        print(f"capture: {summary['batch_id']} {summary['status']}: captured {summary['captured']} = landed "
              f"{summary['landed']} + dropped {summary['dropped']} (sampled out {summary['sampled_out']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
