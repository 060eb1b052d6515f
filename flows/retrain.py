"""The `retrain` flow: runs the dvc.yaml graph stage by stage as Prefect tasks.

The flow never re-implements a stage: each task is `dvc repro <stage>`, so a
Prefect run and a laptop `dvc repro` leave the same artifacts and dvc.lock.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

# Stages that talk to the tracking server or storage may fail transiently; the others are deterministic.
RETRIED = {"train", "evaluate", "gate", "package"}


def stages(dvc_file: Path = Path("dvc.yaml")) -> list[str]:
    """Stage names in the order dvc.yaml declares them (the graph's topological order here)."""
    return list(yaml.safe_load(dvc_file.read_text())["stages"])


@task(name="seed-landing")
def seed_landing(landing: str, params: str) -> int:
    """First run on an empty landing area: generate the embedded default data."""
    from mmcore.config import load_params
    from mmcore.data.ingest import ready_batches
    from mmcore.data.synth import generate_default

    if ready_batches(Path(landing)):
        return 0
    return len(generate_default(Path(landing), load_params(params).synth))


def run_dvc(stage: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", stage], text=True, capture_output=True)
    logger = get_run_logger()
    logger.info(proc.stdout[-4000:])
    if proc.returncode != 0:
        raise RuntimeError(f"dvc repro {stage} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


repro = task(run_dvc, name="dvc-repro", task_run_name="dvc-repro-{stage}")
repro_retried = task(run_dvc, name="dvc-repro", task_run_name="dvc-repro-{stage}", retries=2,
                     retry_delay_seconds=[5, 30])


@task(name="dvc-push", retries=3, retry_delay_seconds=[5, 30, 120])
def push_data() -> None:
    """The run's data versions to the DVC remote (storage hiccups are retried); a workspace
    without a remote has nothing to push to, and says so."""
    remotes = subprocess.run([sys.executable, "-m", "dvc", "remote", "list"], text=True, capture_output=True)
    if not remotes.stdout.strip():
        get_run_logger().warning("no DVC remote configured: data versions stay in the local cache only")
        return
    proc = subprocess.run([sys.executable, "-m", "dvc", "push"], text=True, capture_output=True)
    get_run_logger().info(proc.stdout[-2000:])
    if proc.returncode != 0:
        raise RuntimeError(f"dvc push failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


@task(name="report")
def report() -> dict:
    """Prefect artifact with the accounting, metrics and gate verdict of this run."""
    def load(name: str) -> dict:
        path = Path("reports") / name
        return json.loads(path.read_text()) if path.is_file() else {}

    ingest, metrics, gate = load("ingest.json"), load("metrics.json"), load("gate.json")
    md = ["# Retrain run", "",
          f"**Data**: landed {ingest.get('landed')} = accepted {ingest.get('accepted')} "
          f"+ quarantined {ingest.get('quarantined')} {ingest.get('by_reason', {})}", "",
          f"**Metrics**: macro-F1 {metrics.get('macro_f1')}, accuracy {metrics.get('accuracy')}, "
          f"unimodal {metrics.get('unimodal_macro_f1')}", "",
          f"**Gate**: {'promoted' if gate.get('promoted') else 'not promoted'}; "
          f"champion version {gate.get('champion_version')}", ""] + [f"- {r}" for r in gate.get("reasons", [])]
    create_markdown_artifact(key="retrain-report", markdown="\n".join(md), description="retrain summary")
    return gate


@flow(name="retrain")
def retrain(landing: str = "data/landing", params: str = "params.yaml", seed_if_empty: bool = True) -> dict:
    logger = get_run_logger()
    if seed_if_empty:
        made = seed_landing(landing, params)
        if made:
            logger.info(f"landing area was empty: generated {made} default batches")
    for stage in stages():
        (repro_retried if stage in RETRIED else repro)(stage)
    push_data()
    return report()


if __name__ == "__main__":
    result = retrain()
    print(json.dumps(result, indent=2))
