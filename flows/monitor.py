"""The `monitor` flow, deployed hourly: one window of captured traffic, from the service to a finding.

1. capture: the window's answers, from the serving replicas' capture folders, land as an ordinary
   batch (mmcore.monitor.capture_batches; captured = landed + counted drops, checked by code);
2. `dvc repro ingest`: the batch and any label batches go through the one ingest (quarantine, the
   label join), so the window is a DVC data version like any other;
3. the window report (mmcore.monitor.window): answers, live and estimated quality, drift;
4. triggers (mmcore.monitor.triggers): each alert and retrain request becomes a Prefect event
   (`parcel.monitor.alert`, `parcel.monitor.retrain`) and a POST to the notification block; the
   `retrain-on-monitor` deployment (prefect.yaml) starts on the retrain event. The state machine's
   cooldown runs on the window's end; a retrain an operator started (flows/retrain.py writes
   OPERATOR_RETRAIN) resets its counters.

Steps 1-2 hold the `retrain` concurrency slot: the monitor and a retrain share one DVC workspace.

    python -m flows.monitor [--since 2026-12-01T10:00:00Z --until 2026-12-01T11:00:00Z] [--capture DIR ...]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency

from flows.publish import post_webhook
from flows.retrain import OPERATOR_RETRAIN, SLOT, ensure_slot, repro
from mmcore.config import Params, load_params
from mmcore.monitor import page, triggers
from mmcore.monitor.capture_batches import Period, capture_batch_waiting, make_period, parse_time
from mmcore.monitor.window import training_rows, window_report
from mmcore.serving.capture import CaptureSettings

OUT = Path("reports/monitor")
STATE = OUT / "state.json"
RESOURCE = "parcel-condition.monitor"   # the events' resource id; prefect.yaml's trigger matches it


def last_window(now: datetime, minutes: int) -> Period:
    """The latest whole window that has ended (aligned to the epoch, so hourly windows are clock hours)."""
    step = minutes * 60
    end = int(now.timestamp()) // step * step
    until = datetime.fromtimestamp(end, timezone.utc)
    return make_period(until - timedelta(minutes=minutes), until)


def capture_roots(p: Params, capture: list[str] | None) -> list[Path]:
    dirs = capture or list(p.monitor.capture_dirs) or [str(CaptureSettings.from_env().dir)]
    return [Path(d) for d in dirs]


@task(name="capture")
def land_capture(roots: list[Path], landing: Path, period: Period, wait_s: float) -> dict[str, Any]:
    summary = capture_batch_waiting(roots, landing, period, wait_s)
    log = get_run_logger()
    log.info(f"capture {summary['batch_id']}: {summary['status']}")
    for line in capture_losses(summary):
        log.warning(f"capture {summary['batch_id']}: {line}")
    return summary


def capture_losses(summary: dict[str, Any]) -> list[str]:
    """What the window lost on its way from the service: answers the service dropped (its counts:
    store_full = a capture folder full of unlanded answers), records the capture step could not land,
    and capture folders whose landed marker was not written (their answers cannot age out)."""
    out = []
    for side, what in (("service", "the service dropped"), ("capture", "the capture step could not land")):
        lost = {r: n for r, n in summary.get("dropped", {}).get(side, {}).items() if n}
        if lost:
            out.append(f"{what} {sum(lost.values())} answer(s): {lost}")
    return out + list(summary.get("marker_problems", []))


@task(name="window")
def report_window(batch: str, p: Params, roots: list[Path]) -> dict[str, Any]:
    splits = Path("data/split/splits.parquet")
    if not splits.is_file():
        raise FileNotFoundError(f"{splits} is missing: no model has been trained here yet, so there is nothing to "
                                "monitor against; run the retrain flow (or `dvc repro`) first")
    return window_report(Path("data/raw"), splits, [batch], p, Path("data/cache"), roots, champion=training_rows(p))


def announce(findings: list[triggers.Finding], report: dict[str, Any], html: Path, notify_block: str | None) -> int:
    """Events for automations, and the notification block for people; returns the webhooks sent."""
    from prefect.events import emit_event

    sent = 0
    for kind in ("retrain", "alert"):
        mine = [asdict(f) for f in findings if f.kind == kind]
        if not mine:
            continue
        payload = {"event": f"monitor.{kind}", "window": report["batches"][0], "findings": mine,
                   "report": str(html.resolve()), "labelled_answers": report["quality"]["labelled_answers"]}
        emit_event(event=f"parcel.monitor.{kind}", resource={"prefect.resource.id": RESOURCE}, payload=payload)
        sent += post_webhook(payload, notify_block)
    return sent


def artifacts(report: dict[str, Any], findings: list[triggers.Finding], html: Path) -> None:
    rows = []
    for v, e in report["quality"]["versions"].items():
        f1 = (e.get("live") or {}).get("macro_f1", {})
        rows.append({"version": v, "labels": e["n"], "gate_set_macro_f1": (e.get("gate_set") or {}).get("macro_f1"),
                     "live_macro_f1": f1.get("observed"), "live_low": f1.get("low"), "live_high": f1.get("high")})
    create_table_artifact(key="monitor-live-quality", table=rows or [{"version": None, "labels": 0}],
                          description="live quality per model version against its gate-set figure")
    md = [f"# Window {report['batches'][0]}", "", f"{report['volume']} landed records, {report['answers']} answers; "
          f"embedding drift: {', '.join(report['drift']) or 'none'}", ""]
    md += [f"- **{f.kind}** ({f.reason}): {f.detail}" for f in findings] or ["- quiet: no alert"]
    md += [f"- **capture loss**: {line}" for line in capture_losses(report.get("capture", {}))]
    create_markdown_artifact(key="monitor-window", markdown="\n".join(md), description="monitoring window")
    create_link_artifact(key="monitor-report", link=html.resolve().as_uri(), link_text="HTML monitoring page")


@flow(name="monitor")
def monitor(since: str | None = None, until: str | None = None, capture: list[str] | None = None,
            notify_block: str | None = "retrain-alerts", params: str = "params.yaml",
            slot_timeout_s: float = 3600) -> dict[str, Any]:
    """Land, ingest and judge one window of captured traffic (default: the last whole window).

    since/until: ISO 8601 with timezone (a backfill); capture: capture folders (default: params
    `monitor.capture_dirs`, else PARCEL_CAPTURE_DIR's default); notify_block: Webhook block for alerts.
    """
    p = load_params(params)
    period = (make_period(parse_time(since), parse_time(until)) if since and until
              else last_window(datetime.now(timezone.utc), p.monitor.window_minutes))
    roots = capture_roots(p, capture)
    ensure_slot()
    with concurrency(SLOT, occupy=1, timeout_seconds=slot_timeout_s, strict=True):
        landed = land_capture(roots, Path(p.ingest.landing), period, p.monitor.settle_s)
        Path(p.ingest.labels).mkdir(parents=True, exist_ok=True)
        repro("ingest")
        report = report_window(period.batch_id, p, roots)
    report["capture"] = landed
    state = triggers.State.load(STATE)
    findings, state = triggers.decide(report, state, p.monitor, period.batch_id, period.until,
                                      triggers.OperatorRetrain.load(OPERATOR_RETRAIN))
    report["findings"] = [asdict(f) for f in findings]
    out = OUT / f"{period.batch_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    html = page.write(OUT / f"{period.batch_id}.html", report, report["findings"])
    artifacts(report, findings, html)
    report["notified"] = announce(findings, report, html, notify_block)
    state.save(STATE)   # last: a crash before it repeats the window's findings rather than losing them
    get_run_logger().info(f"window {period.batch_id}: {len(findings)} finding(s) -> {html}")
    return {"window": period.batch_id, "report": str(out), "page": str(html), "findings": report["findings"],
            "capture": landed}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Run the monitor flow once.")
    ap.add_argument("--since", help="window start, ISO 8601 with timezone (default: the last whole window)")
    ap.add_argument("--until", help="window end (exclusive)")
    ap.add_argument("--capture", action="append", help="a capture folder; repeat for several replicas")
    args = ap.parse_args()
    print(json.dumps(monitor(since=args.since, until=args.until, capture=args.capture), indent=2, default=str))
