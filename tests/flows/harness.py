"""Flow-test harness: a tiny project workspace, a Prefect server and a process worker
on loopback, a webhook receiver, and the REST calls that trigger and watch deployment runs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.test_pipeline import BIN, ROOT, env_for, free_port
from tests.settings import PROFILE_TIMINGS

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def make_workspace(ws: Path, overrides: dict[str, dict[str, Any]]) -> None:
    """A copy of the project (code, dvc.yaml, prefect.yaml) with params.yaml overridden."""
    for name in ("dvc.yaml", "service.py", "bentofile.yaml", "requirements-serve.txt", "prefect.yaml", ".env.example",
                 "Makefile"):
        shutil.copy(ROOT / name, ws / name)
    for pkg in ("mmcore", "flows", "profile"):
        shutil.copytree(ROOT / pkg, ws / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([BIN / "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)


def wait_until(check, timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


class PrefectServer:
    """`prefect server start` on loopback with its own PREFECT_HOME; env() points clients at it."""

    auth: httpx.BasicAuth | None = None      # the profile's server requires its credentials

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.procs: list[subprocess.Popen] = []

    def env(self, ws: Path) -> dict[str, str]:
        return {**env_for(ws), "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api, "PWD": str(ws),
                "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2"}

    def spawn(self, cmd: list, ws: Path, log: str) -> subprocess.Popen:
        out = open(self.home / log, "ab")
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ws, env=self.env(ws), stdout=out,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start(self, ws: Path) -> None:
        env = {**self.env(ws)}
        env.pop("PREFECT_API_URL")
        out = open(self.home / "server.log", "ab")
        self.procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                            "--port", str(self.port)], cwd=ws, env=env, stdout=out,
                                           stderr=subprocess.STDOUT))

        def healthy() -> bool:
            assert self.procs[0].poll() is None, (self.home / "server.log").read_text()[-3000:]
            try:
                return httpx.get(f"{self.api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(healthy, 240, "the Prefect server")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    def cli(self, args: list[str], ws: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / "prefect"), *args], cwd=ws, env=self.env(ws), text=True,
                              capture_output=True, timeout=timeout)
        assert proc.returncode == 0, f"prefect {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def python(self, code: str, ws: Path, timeout: int = 120) -> str:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ws, env=self.env(ws), text=True,
                              capture_output=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    # ---- REST API
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call, retried on 503/429 as Prefect's own client does: the server answers 503
        for errors it rolled back and calls retryable (SQLite busy under load), and a day's
        trigger once failed on one."""
        for attempt in range(6):
            resp = httpx.request(method, f"{self.api}{path}", timeout=30, auth=self.auth, **kwargs)
            if resp.status_code not in (429, 503):
                break
            time.sleep(2 ** attempt)
        resp.raise_for_status()
        return resp

    def get(self, path: str) -> Any:
        return self.request("GET", path).json()

    def post(self, path: str, body: dict) -> Any:
        resp = self.request("POST", path, json=body)
        return resp.json() if resp.content else None

    def trigger(self, deployment: str, parameters: dict[str, Any], flow: str = "retrain") -> str:
        """A run of `<flow>/<deployment>` with these parameters; returns the flow run id."""
        dep = self.get(f"/deployments/name/{flow}/{deployment}")
        return self.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})["id"]

    def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        def done() -> dict | None:
            run = self.get(f"/flow_runs/{run_id}")
            return run if run["state"]["type"] in TERMINAL else None
        return wait_until(done, timeout, f"flow run {run_id}", every=1.0)

    def artifacts(self, run_id: str) -> dict[str, dict]:
        found = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        return {a["key"]: a for a in found if a.get("key")}

    def logs(self, run_id: str) -> str:
        found = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        return "\n".join(entry["message"] for entry in found)


class Receiver:
    """An HTTP endpoint on loopback that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append(json.loads(body or b"null"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ProfileServer(PrefectServer):
    """The production profile (`python -m mmcore.profile up`: PostgreSQL, the S3 stand-in, MLflow, Prefect,
    the worker, nginx) in a workspace, on free ports, with the short waits of tests/settings.py; its Prefect API
    takes the same REST calls as above.

    Its state lives outside pytest's private tmp folders, which the `postgres` account cannot enter."""

    def __init__(self, ws: Path, extra: dict[str, str] | None = None) -> None:
        from mmcore.profile.settings import Profile

        self.base = Path(tempfile.mkdtemp(prefix="parcel-profile-"))
        self.base.chmod(0o755)
        self.vars = {"PROFILE_DIR": str(self.base / "state"), "PROFILE_S3_DIR": str(self.base / "s3"),
                     "PROFILE_BACKUP_DIR": str(self.base / "backups"),
                     **{f"PROFILE_{n}_PORT": str(free_port()) for n in ("PG", "S3", "MLFLOW", "PREFECT", "PROXY")},
                     "PROFILE_BENTO_PORTS": f"{free_port()},{free_port()}", **PROFILE_TIMINGS, **(extra or {})}
        self.ws = ws
        self.profile = Profile.load(ws, create_env=True, overrides=self.vars)
        self.home, self.port = self.profile.dir / "prefect", self.profile.port("prefect")
        self.api, self.mlflow_uri = self.profile.prefect_api, self.profile.mlflow_uri
        self.auth = httpx.BasicAuth(*self.profile.prefect_auth.split(":", 1))
        self.key = {"x-api-key": self.profile.env["PARCEL_API_KEY"]}     # what the bentos behind nginx require
        # the tests' own MlflowClient(tracking_uri=...) read MLflow's credentials from the environment
        os.environ.update({k: v for k, v in self.profile.client_env().items()
                           if k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
        self.procs = []

    def env(self, ws: Path) -> dict[str, str]:
        return {**env_for(ws), **self.vars, **self.profile.client_env(), "PWD": str(ws),
                "PREFECT_HOME": str(self.home), "PREFECT_WORKER_QUERY_SECONDS": "2",
                "PREFECT_WORKER_PREFETCH_SECONDS": "2"}

    def run(self, cmd: list[str], timeout: int, check: bool) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=self.ws, env=self.env(self.ws), text=True, capture_output=True, timeout=timeout)
        assert not check or proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def profile_cli(self, *args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-m", "mmcore.profile", *args], timeout, check)

    def make(self, target: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
        """`make up` / `make down` as a user types them (the install step is this venv's, already done)."""
        return self.run(["make", "-o", "install", f"PY={sys.executable}", target], timeout, check)

    def start(self, ws: Path) -> None:
        self.make("up")

    def stop(self) -> None:
        try:
            self.make("down", timeout=300, check=False)
        finally:
            super().stop()
            shutil.rmtree(self.base, ignore_errors=True)

    def ctl(self, *args: str) -> str:
        from mmcore.profile import services

        return services.ctl(self.profile, *args, check=False).stdout
