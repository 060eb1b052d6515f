"""The production profile under faults, with real processes, and its backup and restore.

One profile (`python -m mmcore.profile up`) in a tiny copy of the project; each test breaks one thing
while a deployment run works, then checks the state is consistent and nothing is lost:

  two runs started at once     one waits for the other (the deployment's and the flow's slot)
  PostgreSQL killed, 20 s      during training: the run completes, or fails saying why; never a half-promotion
  worker killed                during training: the run is marked Crashed (heartbeats stop), the next run
                               resumes from the training checkpoint
  object store unreachable     during `dvc push`: retried, then a clear failure; the next run pushes the rest
  backup and restore           every local state folder deleted, restored from `make backup` and the bucket:
                               registry, aliases, run history, data versions, and the same answers
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from mmcore.config import load_params
from mmcore.profile import objectstore, postgres
from tests.e2e.test_pipeline import BIN
from tests.flows.harness import ProfileServer, make_workspace, wait_until
from tests.settings import FAULTS

pytestmark = [pytest.mark.slow, pytest.mark.profile]

RUN_TIMEOUT = 600


class Faults:
    def __init__(self, ws: Path, srv: ProfileServer) -> None:
        self.ws, self.srv, self.landing = ws, srv, ws / "drop"

    def land(self, name: str, n: int, seed: int) -> None:
        from mmcore.synth.generate import generate_batch

        generate_batch(self.landing, name, n, load_params(self.ws / "params.yaml").synth, seed=seed)

    def trigger(self, deployment: str = "poll-landing") -> str:
        return self.srv.trigger(deployment, {"landing": str(self.landing)})

    def task_runs(self, run_id: str, name: str) -> list[dict]:
        return self.srv.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}},
                                                   "task_runs": {"name": {"any_": [name]}}})

    def wait_task(self, run_id: str, name: str, timeout: float = RUN_TIMEOUT) -> dict:
        return wait_until(lambda: next(iter(self.task_runs(run_id, name)), None), timeout, f"task {name} of {run_id}")

    def registry(self) -> dict[str, Any]:
        from mlflow import MlflowClient

        c = MlflowClient(tracking_uri=self.srv.mlflow_uri)
        versions = {int(v.version): dict(v.tags) for v in c.search_model_versions("name='parcel-condition'")}
        model = c.get_registered_model("parcel-condition")
        exp = c.get_experiment_by_name(load_params(self.ws / "params.yaml").registry.experiment)
        runs = c.search_runs([exp.experiment_id], max_results=1000) if exp else []
        return {"versions": versions, "aliases": dict(model.aliases),
                "runs": sorted((r.info.run_id, r.info.status) for r in runs)}

    def assert_consistent(self) -> dict[str, Any]:
        """One champion, promoted by a gate; every other version judged or never aliased; the proxy serves it."""
        from mmcore.serving.bluegreen import live

        reg = self.registry()
        champion = int(reg["aliases"]["champion"])
        assert reg["versions"][champion].get("gate") == "promoted", reg
        for v, tags in reg["versions"].items():
            assert tags.get("gate") in ("promoted", "rejected", "inconclusive") or v > champion, (v, tags)
        assert live(self.srv.profile)["bento"] == f"parcel-condition:v{champion}"
        def answered() -> httpx.Response | None:
            resp = httpx.post(f"{self.srv.profile.proxy_url}/predict", json={"records": [{"note": "box wet"}]},
                              headers=self.srv.key, timeout=60)
            return resp if resp.status_code == 200 else None

        try:   # the live bento answers through nginx (given a minute, as supervisor restarts a crashed one)
            answer = wait_until(answered, 60, "an answer through the proxy", every=2)
        except BaseException:
            logs = sorted(self.srv.profile.logs.glob("bento-*.log"))
            raise AssertionError(self.srv.ctl("status") + "\n".join(p.read_text()[-2000:] for p in logs)) from None
        assert answer.json()[0]["model_version"] == str(champion), answer.text
        return reg

    def program_pid(self, name: str) -> int:
        return int(self.srv.ctl("pid", name).strip())


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for p, pp in zip(out[::2], out[1::2]):
        children.setdefault(int(pp), []).append(int(p))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    ws = tmp_path_factory.mktemp("faults")
    make_workspace(ws, FAULTS)
    # a killed PostgreSQL stays down until the test brings it back, 20 s later
    srv = ProfileServer(ws, {"PROFILE_PG_AUTORESTART": "0"})
    try:
        srv.start(ws)
        yield Faults(ws, srv)
    finally:
        srv.stop()


def test_two_runs_started_at_once_one_waits(faults: Faults) -> None:
    faults.land("b0", 150, 100)
    first, second = faults.trigger("nightly"), faults.trigger("nightly")
    runs = [faults.srv.wait(r, RUN_TIMEOUT) for r in (first, second)]
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"], [faults.srv.logs(r) for r in (first, second)]
    a, b = sorted(runs, key=lambda r: r["start_time"])
    assert b["start_time"] >= a["end_time"], (a["start_time"], a["end_time"], b["start_time"])
    faults.assert_consistent()


def test_postgres_killed_during_training_ends_consistent(faults: Faults) -> None:
    before = faults.registry()
    faults.land("b1", 150, 200)
    run_id = faults.trigger()
    faults.wait_task(run_id, "train")
    os.kill(faults.program_pid("postgres"), signal.SIGKILL)
    time.sleep(20)
    # back as an operator would bring it: start it again until it answers (backends of the killed server may
    # still hold its shared memory for a moment)
    wait_until(lambda: postgres.ready(faults.srv.profile) or bool(faults.srv.ctl("start", "postgres")) and False,
               90, "PostgreSQL back", every=3)
    run = faults.srv.wait(run_id, RUN_TIMEOUT)
    logs = faults.srv.logs(run_id)
    assert run["state"]["type"] in ("COMPLETED", "FAILED"), logs[-3000:]
    if run["state"]["type"] == "FAILED":
        assert "unreachable" in logs or "failed" in run["state"]["message"], logs[-3000:]
    after = faults.assert_consistent()
    assert set(before["versions"]) <= set(after["versions"])     # nothing lost
    assert set(before["runs"]) <= set(after["runs"])


def test_worker_killed_during_training_crashes_the_run_and_the_next_resumes(faults: Faults) -> None:
    faults.land("b2", 150, 300)
    run_id = faults.trigger()
    faults.wait_task(run_id, "train")
    checkpoints = faults.ws / "data" / "cache" / "checkpoints"
    wait_until(lambda: checkpoints.is_dir() and any(p.is_file() for p in checkpoints.rglob("*")),
               RUN_TIMEOUT, "a training checkpoint", every=0.2)
    worker = faults.program_pid("worker")
    for pid in [worker, *descendants(worker)]:   # the worker's machine goes: the flow run and dvc with it
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    crashed = wait_until(lambda: (r := faults.srv.get(f"/flow_runs/{run_id}"))["state"]["type"] == "CRASHED" and r,
                         300, "the run to be marked crashed", every=2)
    assert "heartbeat" in crashed["state"]["message"]
    wait_until(lambda: "RUNNING" in faults.srv.ctl("status", "worker"), 60, "supervisor to restart the worker")
    again = faults.trigger()
    run = faults.srv.wait(again, RUN_TIMEOUT)
    logs = faults.srv.logs(again)
    assert run["state"]["type"] == "COMPLETED", logs[-3000:]
    assert "resuming from the checkpoint" in logs, logs[-3000:]
    faults.assert_consistent()


def dvc_status_cloud(ws: Path, env: dict[str, str]) -> str:
    return subprocess.run([BIN / "dvc", "status", "--cloud"], cwd=ws, env=env, text=True, capture_output=True).stdout


def test_object_store_unreachable_during_push_fails_clearly_and_the_next_run_pushes(faults: Faults) -> None:
    faults.land("b3", 120, 400)
    run_id = faults.trigger()
    # the push comes right after the package stage: the endpoint goes away then (connections refused)
    wait_until(lambda: any(t["state"]["type"] == "COMPLETED" for t in faults.task_runs(run_id, "package")),
               RUN_TIMEOUT, "the package stage", every=0.2)
    faults.srv.ctl("stop", "s3")                 # connections are refused from here on
    try:
        run = faults.srv.wait(run_id, RUN_TIMEOUT)
    finally:
        faults.srv.ctl("start", "s3")
        wait_until(lambda: objectstore.stand_in_ready(faults.srv.profile), 300, "the S3 stand-in back")
    logs = faults.srv.logs(run_id)
    assert run["state"]["type"] == "FAILED", logs[-3000:]
    assert "dvc push failed" in logs and "Retry 3/3 will start" in logs, logs[-3000:]
    assert "new:" in dvc_status_cloud(faults.ws, faults.srv.env(faults.ws))   # the run's data is not in the remote yet
    again = faults.srv.wait(faults.trigger(), RUN_TIMEOUT)
    assert again["state"]["type"] == "COMPLETED"
    assert "in sync" in dvc_status_cloud(faults.ws, faults.srv.env(faults.ws))
    faults.assert_consistent()


def answers(url: str, key: dict[str, str]) -> list[dict]:
    from mmcore.bench.serve import synthetic_records

    resp = httpx.post(f"{url}/predict", json={"records": synthetic_records(8, seed=5)}, headers=key, timeout=120)
    assert resp.status_code == 200, resp.text
    return [{k: a[k] for k in ("label", "probabilities", "model_version")} for a in resp.json()]


def test_backup_then_restore_on_a_clean_directory_brings_back_the_same_champion(faults: Faults) -> None:
    srv, ws = faults.srv, faults.ws
    before, served = faults.assert_consistent(), answers(srv.profile.proxy_url, srv.key)
    flow_runs = {r["id"]: r["state"]["type"] for r in srv.post("/flow_runs/filter", {"limit": 200})}
    lock = (ws / "dvc.lock").read_text()
    backup = Path(srv.profile_cli("backup").stdout.strip().splitlines()[-1])
    assert {"prefect.dump", "mlflow.dump", "manifest.json", "backup.json"} <= {p.name for p in backup.iterdir()}
    srv.profile_cli("down")
    # every local state folder goes; the bucket (the S3 stand-in's folder plays it) and the backup stay
    for state in (srv.profile.dir, ws / ".bentoml", ws / "data", ws / ".dvc" / "cache", ws / "reports", ws / ".prefect"):
        shutil.rmtree(state, ignore_errors=True)
    (ws / "data" / "labels").mkdir(parents=True)
    srv.profile_cli("up", "--restore", str(backup))
    after = faults.registry()
    assert after == before, (before, after)   # versions and their tags, aliases, every run and its status
    assert answers(srv.profile.proxy_url, srv.key) == served
    assert (ws / "dvc.lock").read_text() == lock
    status = subprocess.run([BIN / "dvc", "status"], cwd=ws, env=srv.env(ws), text=True, capture_output=True)
    # every data version of dvc.lock is back from the remote (reports with `cache: false` are not in it)
    assert (ws / "data" / "raw").is_dir() and "data/" not in status.stdout, status.stdout
    restored = {r["id"]: r["state"]["type"] for r in srv.post("/flow_runs/filter", {"limit": 200})}
    assert flow_runs.items() <= restored.items()   # Prefect's run history
    assert srv.get("/deployments/name/retrain/nightly")["work_pool_name"] == "retrain-pool"
