"""The `retrain` flow: runs the dvc.yaml graph stage by stage as Prefect tasks.

The flow never re-implements a stage: each task is `dvc repro <stage>`, so a
Prefect run and a laptop `dvc repro` leave the same artifacts and dvc.lock. Flow
parameters are orchestration choices: where the landing area is, whether to run
without new data, and overrides of params.yaml, which are written into params.yaml
(as `dvc exp run -S` does) so dvc.lock and params.yaml keep agreeing.

Runs never overlap: the body holds the one slot of the global concurrency limit
`retrain` (created on first use), since two `dvc repro` in one workspace fail on
DVC's lock. When no new batch has landed since the last run, the flow ends before
any stage runs.

What it prints: each stage's output goes to the run's log line by line while the stage runs
(training and embedding report their progress as they go, mmcore/progress.py); DVC's advice to
`git add dvc.lock` and `dvc push` after every stage is left out and said once, at the end. A bad
`--set` (an unknown key, a value of the wrong type) is refused before anything starts, its
message the last lines printed, exit status 2.

    python -m flows.retrain [--landing DIR] [--force] [--set train.epochs=5 ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment, flow_run
from prefect.tasks import exponential_backoff

from flows.publish import RUNS, notify, publish
from mmcore.config import ParamsError, apply_overrides, check_overrides, load_yaml
from mmcore.monitor.triggers import OperatorRetrain
from mmcore.report import timings

SLOT = "retrain"              # global concurrency limit, 1 slot: one retrain at a time
STATE = RUNS / "last_batches.json"   # batches (and their _SUCCESS times) the last finished run saw
INPUTS = RUNS / "last_inputs.txt"    # fingerprint of params.yaml, dvc.yaml and mmcore at that run
# the last retrain the monitor did not ask for (mmcore.monitor.triggers.OperatorRetrain): it resets the
# monitor's counters and is never held by its cooldown
OPERATOR_RETRAIN = Path("reports/monitor/operator_retrain.json")
MONITOR_DEPLOYMENT = "retrain-on-monitor"   # prefect.yaml: the deployment the monitor's event starts
# Failures worth retrying: the tracking server, object storage, the network, DVC's or SQLite's lock.
# First delay before a transient failure is retried (then 2x, 4x); the profile sets it from .env
# (PARCEL_RETRY_DELAY_S), tests set it small so a fault test waits seconds for the retries it checks.
RETRY_DELAY_S = float(os.environ.get("PARCEL_RETRY_DELAY_S", "10"))
TRANSIENT = re.compile(r"Connection ?(Error|refused|reset|aborted)|Max retries exceeded|timed? ?out|"
                       r"Temporary failure|Service Unavailable|Bad Gateway|Gateway Time-?out|Too Many Requests|"
                       r"(HTTP|status|response)[^\n]{0,12}\b(50[234]|429)\b|"
                       r"Unable to acquire lock|database is locked|RemoteDisconnected|EndpointConnectionError|"
                       r"SlowDown|RequestTimeout|BrokenPipe", re.IGNORECASE)


# What `dvc repro` advises after every stage that changed something (dvc/repo/scm_context.py,
# dvc/commands/repro.py); no option silences it short of `core.autostage` (which stages files in git)
# or `--quiet` (which also drops "Running stage"), so these lines are left out of the log and the run
# says once, at its end, what to commit.
DVC_HINTS = {"To track the changes with git, run:", "To enable auto staging, run:",
             "\tdvc config core.autostage true", "Use `dvc push` to send your updates to remote storage."}
UPSTREAM_SKIPPED = re.compile(r"Stage '[^']+' didn't change, skipping")
TAIL_LINES = 200   # lines of a command's stdout and of its stderr kept for its error message


class StageFailed(RuntimeError):
    """`dvc repro <stage>` exited non-zero; the message carries the stage's output."""


@dataclass
class Streamed:
    """A finished command: its exit status and the last lines of its stdout and of its stderr."""

    returncode: int
    stdout: deque[str] = field(default_factory=deque)
    stderr: deque[str] = field(default_factory=deque)

    def tail(self, name: str = "stderr", chars: int = 4000) -> str:
        return "\n".join(getattr(self, name))[-chars:]


def stream(cmd: list[str], on_line: Callable[[str, str], None], tail: int = TAIL_LINES) -> Streamed:
    """Run `cmd`, handing each line of its stdout and stderr to `on_line(stream_name, line)` as it
    arrives (in this thread, so a Prefect run logger works), and keep the last `tail` lines of each.

    Python children are unbuffered (PYTHONUNBUFFERED, inherited through `dvc repro` by the stage
    commands), so a stage's lines come when printed, not when it ends. Progress bars are for
    terminals: the long steps print plain lines when piped (mmcore/progress.py); Hugging Face's and
    MLflow's bars are turned off (unless the environment says otherwise), and a line that some other
    bar redrew with carriage returns keeps only its last state."""
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           **os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def pump(name: str, pipe: Any) -> None:
        with pipe:
            for raw in iter(pipe.readline, b""):   # returns at each newline, not when a buffer fills
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                lines.put((name, next((part for part in reversed(text.split("\r")) if part.strip()), "")))
        lines.put((name, None))

    for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        threading.Thread(target=pump, args=(name, pipe), daemon=True).start()
    out = Streamed(0, deque(maxlen=tail), deque(maxlen=tail))
    try:
        open_pipes = 2
        while open_pipes:
            name, line = lines.get()
            if line is None:
                open_pipes -= 1
                continue
            getattr(out, name).append(line)
            on_line(name, line)
    finally:
        if proc.poll() is None and open_pipes:   # on_line raised: the command does not outlive us
            proc.kill()
        out.returncode = proc.wait()
    return out


def dvc_hint(line: str) -> list[str] | None:
    """None for a line that is not DVC's advice; for its advice, the paths its `git add` names (often none)."""
    if line.startswith("\tgit add "):
        return shlex.split(line[len("\tgit add "):])
    return [] if line in DVC_HINTS else None


def commit_advice(stage_runs: list[dict[str, Any]], pushed: bool | None) -> str | None:
    """What to commit to keep this run's data version, said once at the end (DVC says it per stage)."""
    paths = sorted({p for s in stage_runs for p in s.get("git_add", [])}, key=lambda p: (p != "dvc.lock", p))
    if not paths:
        return None
    push = ("its data is already in the DVC remote" if pushed else
            "then `dvc push` the data to a DVC remote (none is configured)" if pushed is False else
            "then `dvc push` the data")
    return f"to keep this data version: git add {' '.join(map(shlex.quote, paths))} && git commit; {push}"


def stages(dvc_file: Path = Path("dvc.yaml")) -> list[str]:
    """Stage names in the order dvc.yaml declares them (the graph's topological order here)."""
    return list(yaml.safe_load(dvc_file.read_text())["stages"])


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """retry_condition_fn: retry only failures that look transient; a failed validation or a bug
    fails at once instead of three times."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # the result itself could not be read: treat as transient
        exc = err
    return bool(TRANSIENT.search(str(exc)))


@task(name="dvc-repro", task_run_name="{stage}", retries=3, retry_delay_seconds=exponential_backoff(RETRY_DELAY_S),
      retry_jitter_factor=0.3, retry_condition_fn=transient)
def repro(stage: str) -> dict[str, Any]:
    """One stage of dvc.yaml; reports whether it ran or was up to date, and what DVC would have
    git add-ed. Its output reaches the log line by line while it runs, DVC's advice left out."""
    start = time.monotonic()
    logger = get_run_logger()
    ran, track = False, []

    def show(name: str, line: str) -> None:
        nonlocal ran
        if name == "stdout" and (paths := dvc_hint(line)) is not None:
            track.extend(paths)
            return
        ran = ran or (name == "stdout" and f"Running stage '{stage}'" in line)
        if UPSTREAM_SKIPPED.fullmatch(line) and not line.startswith(f"Stage '{stage}'"):
            logger.debug(line)   # an upstream stage checked again: its own task said how it went
        elif line.strip():
            logger.info(line)

    proc = stream([sys.executable, "-m", "dvc", "repro", stage], show)
    if proc.returncode != 0:
        raise StageFailed(f"dvc repro {stage} failed (exit {proc.returncode}):\n{proc.tail('stderr')}")
    return {"stage": stage, "ran": ran, "ok": True, "seconds": round(time.monotonic() - start, 1),
            "git_add": sorted(set(track))}


@task(name="dvc-push", task_run_name="dvc-push", retries=3, retry_delay_seconds=exponential_backoff(RETRY_DELAY_S), retry_jitter_factor=0.3)
def push_data() -> bool:
    """The run's data versions to the DVC remote (storage hiccups are retried); a workspace
    without a remote has nothing to push to, and says so (False)."""
    remotes = subprocess.run([sys.executable, "-m", "dvc", "remote", "list"], text=True, capture_output=True)
    if not remotes.stdout.strip():
        get_run_logger().warning("no DVC remote configured: data versions stay in the local cache only")
        return False
    logger = get_run_logger()
    proc = stream([sys.executable, "-m", "dvc", "push"], lambda name, line: line.strip() and logger.info(line))
    if proc.returncode != 0:
        raise RuntimeError(f"dvc push failed (exit {proc.returncode}):\n{proc.tail('stderr')}")
    return True


@task(name="deploy-bento", retries=1, retry_delay_seconds=30)
def deploy_bento() -> dict[str, Any] | None:
    """Under the production profile, the champion's bento goes live behind its proxy (blue/green) once it
    was promoted, or on the next run if this deploy failed: the old bento serves until then."""
    from mmcore.profile.settings import Profile
    from mmcore.serving.bluegreen import deploy

    state = deploy(Profile.load())
    get_run_logger().info(f"serving {state['bento']} behind the proxy ({state['colour']})" if state else
                          "no champion to serve")
    return state


@task(name="seed-landing")
def seed_landing(landing: str, params: str) -> int:
    """First run on an empty landing area: generate the embedded default data."""
    from mmcore.config import load_params
    from mmcore.data.ingest import ready_batches
    from mmcore.synth.generate import generate_default

    if ready_batches(Path(landing)):
        return 0
    return len(generate_default(Path(landing), load_params(params).synth))


def landed(landing: Path) -> dict[str, int]:
    """Finished batches in the landing area and when each was finished (its _SUCCESS mtime)."""
    from mmcore.data.ingest import ready_batches

    return {b.name: (b / "_SUCCESS").stat().st_mtime_ns for b in ready_batches(landing)}


def feeds(landing: Path, labels: Path) -> dict[str, int]:
    """Finished landing batches and label batches (as `labels/<batch>`): a label batch alone is new
    data too. Captured traffic (`capture-*`, landed hourly by the monitor flow) is not: it has no
    labels until a label batch names it, and the monitor's triggers decide when that is enough.
    The label folder is made if missing, since dvc.yaml's ingest stage depends on it."""
    labels.mkdir(parents=True, exist_ok=True)
    from mmcore.monitor.capture_batches import PREFIX

    batches = {b: t for b, t in landed(landing).items() if not b.startswith(PREFIX)}
    return {**batches, **{f"labels/{b}": t for b, t in landed(labels).items()}}


def new_batches(now: dict[str, int]) -> list[str]:
    """Batches that are new or replaced since the last finished run."""
    seen = json.loads(STATE.read_text()) if STATE.is_file() else {}
    return [b for b, t in now.items() if seen.get(b) != t]


def inputs_fingerprint(params: Path) -> str:
    """params.yaml, dvc.yaml and the code the stages run: after a change to any of them the
    pipeline runs even when no batch landed (DVC then reruns only the stages it touches)."""
    h = hashlib.sha256()
    for f in [params, Path("dvc.yaml"), *sorted(Path("mmcore").rglob("*.py"))]:
        h.update(f.as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def inputs_changed(fingerprint: str) -> bool:
    return not INPUTS.is_file() or INPUTS.read_text().strip() != fingerprint


def ensure_slot() -> None:
    """The one-slot global concurrency limit, created on first use."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(SLOT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=SLOT, limit=1))
            except ObjectAlreadyExists:
                pass


def validation_failed_since(began: float) -> bool:
    """The validate stage failed because the data did (a fresh report saying so), not because
    it could not run: only then is the verdict `validation_failed` rather than `failed`."""
    report = Path("reports/validation.json")
    return (report.is_file() and report.stat().st_mtime >= began - 1
            and json.loads(report.read_text()).get("success") is False)


def run_stages(run: dict[str, Any]) -> None:
    """dvc.yaml's stages in order; stops at the first failure (a failed validation included)."""
    for stage in stages():
        began = time.time()
        state = repro(stage, return_state=True)
        if state.is_completed():
            run["stages"].append(state.result())
            continue
        run["stages"].append({"stage": stage, "ran": False, "ok": False, "seconds": round(time.time() - began, 1)})
        if not (stage == "validate" and validation_failed_since(began)):
            run["error"] = str(state.result(raise_on_failure=False))
        return
    run["pushed"] = push_data()


@flow(name="retrain")
def retrain(landing: str | None = None, force: bool = False, overrides: dict[str, dict[str, Any]] | None = None,
            seed_if_empty: bool = False, notify_block: str | None = "retrain-alerts",
            slot_timeout_s: float = 6 * 3600, params: str = "params.yaml") -> dict[str, Any]:
    """Ingest whatever landed, validate, train, evaluate, gate and package, once per new data.

    landing: landing area (default: params `ingest.landing`); force: run the stages even with no new
    batch (DVC still skips stages whose inputs did not change); overrides: {section: {key: value}}
    written into params.yaml; seed_if_empty: generate the default data into an empty landing area;
    notify_block: Webhook block told about gate rejections and validation failures.
    """
    logger = get_run_logger()
    wanted = {section: dict(values) for section, values in (overrides or {}).items()}
    if landing:
        wanted.setdefault("ingest", {})["landing"] = landing
    try:
        wanted = check_overrides(params, wanted)   # before the slot: a typo fails at once, params.yaml untouched
    except ParamsError as exc:
        logger.error(f"params.yaml overrides refused, nothing ran:\n{exc}")
        raise ParamsError(f"params.yaml overrides refused, nothing ran:\n{exc}") from None
    ensure_slot()
    logger.info(f"waiting for the {SLOT!r} concurrency slot")
    # the lease is renewed while the run lives; a run whose process died frees the slot within a minute
    with concurrency(SLOT, occupy=1, timeout_seconds=slot_timeout_s, strict=True, lease_duration=60):
        start = datetime.now(timezone.utc)
        changed = apply_overrides(Path(params), wanted)
        if changed:
            logger.info(f"params.yaml overrides: {', '.join(changed)}")
        from mmcore.config import load_params

        feed = load_params(params).ingest
        where, labels = Path(feed.landing), Path(feed.labels)
        if seed_if_empty and (made := seed_landing(str(where), params)):
            logger.info(f"landing area was empty: generated {made} default batches")
        now, fingerprint = feeds(where, labels), inputs_fingerprint(Path(params))
        run: dict[str, Any] = {"id": str(flow_run.id), "name": flow_run.name or "local", "landing": str(where),
                               "started": start.isoformat(timespec="seconds"), "stamp": start.strftime("%Y%m%dT%H%M%SZ"),
                               "new_batches": new_batches(now), "overrides": changed, "force": force, "stages": [],
                               "inputs_changed": inputs_changed(fingerprint)}
        if run["inputs_changed"] and not (run["new_batches"] or force or changed):
            logger.info("params.yaml, dvc.yaml or mmcore changed since the last run: running the stages")
        if run["new_batches"] or force or changed or run["inputs_changed"]:
            run_stages(run)
        else:
            logger.info(f"no new batch in {where} since the last run: nothing to do")
        finished = datetime.now(timezone.utc)
        run["finished"] = finished.isoformat(timespec="seconds")
        run["timings"] = timings(run["stages"], (finished - start).total_seconds())   # run.json keeps them
        page = publish(run)
        if os.environ.get("PARCEL_PROFILE_DIR") and run["verdict"]["status"] != "failed":
            run["deployed"] = deploy_bento()   # a no-op while the champion's bento is the live one
        run["notified"] = notify(run, page, notify_block)
        if run["verdict"]["status"] != "failed":
            STATE.write_text(json.dumps(now))   # this data is dealt with (a validation failure included)
            INPUTS.write_text(fingerprint)
            if run["stages"] and deployment.name != MONITOR_DEPLOYMENT:   # the monitor's own: it knows
                OperatorRetrain.note(OPERATOR_RETRAIN, start, Path("data/raw"))
    logger.info(f"verdict: {run['verdict']['status']}: {run['verdict']['summary']}; report {page}")
    if advice := commit_advice(run["stages"], run.get("pushed")):
        logger.info(advice)   # DVC's per-stage advice, said once
    if run["verdict"]["status"] in ("validation_failed", "failed"):
        raise StageFailed(f"{run['verdict']['summary']}: " + "; ".join(run["verdict"]["reasons"])[:2000])
    return {**run["verdict"], "report": str(page), "stages": run["stages"], "new_batches": run["new_batches"],
            "to_commit": advice}


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """`section.key=value` (value parsed as YAML, as params.yaml is: `1e-4` is a number) into
    {section: {key: value}}; the keys and values are checked against the typed config by `check_overrides`."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, _, value = item.partition("=")
        section, _, key = name.partition(".")
        if not (section and key and _):
            raise SystemExit(f"--set expects section.key=value, got {item!r}")
        out.setdefault(section, {})[key] = load_yaml(value)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m flows.retrain", description="Run the retrain flow once.")
    ap.add_argument("--landing", help="landing area (default: params ingest.landing)")
    ap.add_argument("--force", action="store_true", help="run the stages even when no new batch landed")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override params.yaml")
    ap.add_argument("--no-seed", action="store_true", help="do not generate default data into an empty landing area")
    args = ap.parse_args()
    try:
        overrides = parse_set(args.set)
    except SystemExit as exc:
        ap.error(str(exc))
    wanted = {**overrides, "ingest": {**overrides.get("ingest", {}), "landing": args.landing}} if args.landing \
        else overrides
    try:   # here, before the flow: no Prefect server starts for a typo, and the message ends the output
        check_overrides("params.yaml", wanted)
    except ParamsError as exc:
        print(f"retrain: --set refused, nothing ran and params.yaml is unchanged:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    result = retrain(landing=args.landing, force=args.force, overrides=overrides, seed_if_empty=not args.no_seed)
    print(json.dumps(result, indent=2))
