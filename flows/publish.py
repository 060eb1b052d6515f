"""What a retrain run leaves for people: Prefect artifacts, the run folder with its HTML
report, and a notification when the gate rejects or validation fails."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from mmcore import report as html_report

REPORTS = Path("reports")
RUNS = REPORTS / "runs"
# stage -> the report files it writes (copied into the run folder when the stage ran this run)
STAGE_FILES = {"ingest": ["ingest.json"], "validate": ["validation.json", "drift.json", "drift.md"],
               "split": ["split.json"], "train": ["train.json"], "evaluate": ["metrics.json"], "gate": ["gate.json"],
               "package": ["package.json"]}
NOTIFY_ON = {"rejected", "validation_failed", "failed"}


def load(name: str, base: Path = REPORTS) -> dict[str, Any] | None:
    path = base / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def ran(run: dict[str, Any]) -> set[str]:
    return {s["stage"] for s in run["stages"] if s.get("ran")}


def this_runs_reports(run: dict[str, Any]) -> dict[str, Any]:
    """Only reports written by stages that ran in this run: an older gate.json is not today's verdict."""
    done = ran(run) | {s["stage"] for s in run["stages"] if s.get("ok") is False}
    out: dict[str, Any] = {}
    for stage, files in STAGE_FILES.items():
        if stage in done:
            for f in files:
                if f.endswith(".json"):
                    out[f.removesuffix(".json")] = load(f)
    return out


def verdict(run: dict[str, Any], reports: dict[str, Any]) -> dict[str, Any]:
    """One status with its reasons, from what this run's stages wrote."""
    if run.get("error"):
        return {"status": "failed", "summary": run["error"].splitlines()[0][:300], "reasons": [run["error"][-2000:]]}
    if not run["stages"]:
        return {"status": "no_new_data", "summary": f"no new batch in {run['landing']}", "reasons": []}
    validation, gate = reports.get("validation"), reports.get("gate")
    if validation is not None and not validation.get("success"):
        return {"status": "validation_failed", "summary": "validation failed, nothing was trained",
                "reasons": validation.get("hard_failures", [])}
    if gate is not None:
        failed = [line for line, r in zip(gate.get("reasons", []), gate.get("rules", [])) if not r.get("passed")]
        if gate.get("promoted"):
            return {"status": "promoted", "summary": f"version {gate['challenger_version']} is the champion",
                    "reasons": gate.get("reasons", [])}
        return {"status": "rejected", "summary": f"version {gate['challenger_version']} rejected; champion stays "
                f"version {gate.get('champion_version')}", "reasons": failed}
    return {"status": "unchanged", "summary": "every stage was up to date", "reasons": []}


def links(reports: dict[str, Any]) -> dict[str, str]:
    """MLflow (UI when the tracking URI is a server, else the command that opens it) and Data Docs."""
    from mmcore.registry import tracking_uri

    out: dict[str, str] = {}
    uri = tracking_uri()
    train, gate = reports.get("train") or load("train.json") or {}, reports.get("gate") or {}
    if uri.startswith(("http://", "https://")):
        out["MLflow experiments"] = uri.rstrip("/") + "/#/experiments"
        if train.get("run_id"):
            try:
                from mlflow import MlflowClient

                exp = MlflowClient(tracking_uri=uri).get_run(train["run_id"]).info.experiment_id
                out["MLflow training run"] = f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{train['run_id']}"
            except Exception:  # the server is down: the page still renders, without this link
                pass
        if gate.get("challenger_version"):
            out["MLflow model version"] = f"{uri.rstrip('/')}/#/models/parcel-condition/versions/{gate['challenger_version']}"
    else:
        out["MLflow UI (run this)"] = f"mlflow ui --backend-store-uri {uri}"
        if train.get("run_id"):
            out["MLflow training run id"] = train["run_id"]
    docs = (reports.get("validation") or {}).get("data_docs")
    if docs:
        out["Data Docs"] = Path(docs).resolve().as_uri()
    return out


def run_folder(run: dict[str, Any]) -> Path:
    """reports/runs/<start stamp>-<flow run name>/ with this run's stage reports copied in."""
    folder = RUNS / f"{run['stamp']}-{run['name']}"
    folder.mkdir(parents=True, exist_ok=True)
    done = ran(run) | {s["stage"] for s in run["stages"] if s.get("ok") is False}
    for stage, files in STAGE_FILES.items():
        for f in files if stage in done else []:
            if (REPORTS / f).is_file():
                shutil.copy2(REPORTS / f, folder / f)
    return folder


def artifacts(run: dict[str, Any], reports: dict[str, Any], page: Path) -> None:
    """Prefect artifacts on the flow run: accounting, validation + drift, metrics, verdict, report link."""
    ingest, validation, metrics, gate = (reports.get(k) for k in ("ingest", "validation", "metrics", "gate"))
    v = run["verdict"]
    if ingest:
        create_table_artifact(key="data-accounting", description=(
            f"landed {ingest['landed']} = accepted {ingest['accepted']} + quarantined {ingest['quarantined']}; "
            f"by reason {ingest.get('by_reason', {})}"),
            table=[{"batch": b, **s, "new": b in run["new_batches"]} for b, s in ingest.get("batches", {}).items()])
    if validation:
        drift = validation.get("drift") or {}
        md = [f"# Validation: {'passed' if validation.get('success') else 'FAILED'}", "",
              f"{validation.get('successful')}/{validation.get('evaluated')} expectations met on "
              f"{validation.get('rows')} rows. Data Docs: `{validation.get('data_docs')}`", ""]
        md += ["**Hard failures**", ""] + [f"- {x}" for x in validation.get("hard_failures", [])] + [""]
        md += ["**Warnings**", ""] + [f"- {x}" for x in validation.get("warnings", [])] + [""]
        md += [f"**Drift** vs the champion's training data: {drift.get('status')}", "",
               "| column | PSI | KS | status |", "|---|---|---|---|"]
        md += [f"| {c} | {d.get('psi')} | {d.get('ks')} | {d.get('status')} |"
               for c, d in sorted((drift.get("columns") or {}).items())]
        create_markdown_artifact(key="validation-drift", markdown="\n".join(md), description="validation and drift")
    if metrics:
        champ = metrics.get("champion") or {}
        rows = [{"metric": k, "challenger": metrics.get(k), "champion": champ.get(k)}
                for k in ("macro_f1", "accuracy", "ece")]
        rows += [{"metric": f"f1[{c}]", "challenger": m.get("f1"),
                  "champion": (champ.get("per_class") or {}).get(c, {}).get("f1")}
                 for c, m in metrics.get("per_class", {}).items()]
        create_table_artifact(key="metrics", table=rows, description=f"challenger v{metrics.get('model_version')} "
                              f"vs champion v{champ.get('version')} on the gate set; gain CI {metrics.get('comparison')}")
    md = [f"# Verdict: {v['status']}", "", v["summary"], ""] + [f"- {r}" for r in v["reasons"]]
    if gate:
        md += ["", f"challenger v{gate['challenger_version']}, champion v{gate.get('champion_version')}"]
    create_markdown_artifact(key="gate-verdict", markdown="\n".join(md), description=f"verdict: {v['status']}")
    create_link_artifact(key="run-report", link=page.resolve().as_uri(), link_text="HTML run report",
                         description=f"{run['name']}: {v['status']}")


def publish(run: dict[str, Any]) -> Path:
    """Verdict, run folder, HTML page and artifacts; returns the page."""
    reports = this_runs_reports(run)
    run["verdict"] = verdict(run, reports)
    folder = run_folder(run)
    plots = REPORTS / "plots" if "evaluate" in ran(run) else None
    page = html_report.write(folder, run, reports, plots, links(reports))
    shutil.copy2(page, REPORTS / "report.html")
    artifacts(run, reports, page)
    return page


def notify(run: dict[str, Any], page: Path, block: str | None) -> bool:
    """Gate rejection, validation failure or a failed run: a Prefect event (automations can act on
    it) and, when the Webhook block `block` exists, a POST to it. Returns whether the webhook fired."""
    from prefect.events import emit_event

    status = run["verdict"]["status"]
    if status not in NOTIFY_ON:
        return False
    payload = {"event": f"retrain.{status}", "flow_run": run["name"], "flow_run_id": run.get("id"),
               "summary": run["verdict"]["summary"], "reasons": run["verdict"]["reasons"][:20],
               "report": str(page.resolve()), "workspace": os.getcwd()}
    emit_event(event=f"mmcore.retrain.{status}", resource={"prefect.resource.id": f"mmcore.retrain.{run['name']}"},
               payload=payload)
    return post_webhook(payload, block)


def post_webhook(payload: dict[str, Any], block: str | None) -> bool:
    """POST `payload` to the Webhook block `block`; a missing block or a broken receiver is logged,
    never raised (the run it reports on must not fail for it). Returns whether it was delivered."""
    if not block:
        return False
    from prefect.blocks.webhook import Webhook
    from prefect.utilities.asyncutils import run_coro_as_sync

    logger = get_run_logger()
    try:
        hook = Webhook.load(block)
    except ValueError:
        logger.warning(f"no Webhook block named {block!r}: {payload.get('event')} not sent "
                       "(create one: docs/orchestration-and-loop.md, deployments)")
        return False
    try:
        resp = run_coro_as_sync(hook.call(payload))
        resp.raise_for_status()
    except Exception as exc:
        logger.error(f"webhook {block!r} failed: {type(exc).__name__}: {exc}")
        return False
    logger.info(f"notified {block!r}: {payload.get('event')}")
    return True
