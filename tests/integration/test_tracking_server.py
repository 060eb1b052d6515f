"""A real tracking server: `mlflow server` on loopback (SQLite backend in WAL mode, local artifact
root). The train, evaluate and gate stages run against it as dvc.yaml runs them; the server goes
down before the gate, which retries, fails with a message saying what to do and leaves the
aliases alone; back up, the same gate promotes. The champion then serves through
`mlflow models predict`, offline."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from mmcore import registry
from mmcore.config import CLASSES
from tests.integration.test_gate_models import TINY, Data, data, write_params  # noqa: F401  (session fixture)

BIN = Path(sys.executable).parent
NAME = "parcel-condition"
pytestmark = pytest.mark.slow
# The first model is judged on the floors alone: any trained model passes them here, so the
# gate's outcome depends on the server only.
SERVER_PARAMS = {**TINY, "train": {**TINY["train"], "epochs": 3},
                 "gate": {**TINY["gate"], "min_macro_f1": 0.0, "min_accuracy": 0.0}}
# Small retry settings keep the down-server case short (MLflow's defaults wait about 4 minutes).
RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    root: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def start(self) -> None:
        registry.enable_wal(f"sqlite:///{self.db}")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.db}",
                 "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mlflow server exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"mlflow server not up in 180 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)          # the server and its uvicorn worker
        try:
            self.proc.wait(timeout=5)                      # a graceful stop waits on idle keep-alive clients
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("mlflow-server"), free_port())
    start = time.monotonic()
    srv.start()
    print(f"mlflow server up: {time.monotonic() - start:.1f} s")
    try:
        yield srv
    finally:
        srv.stop()


def stage(ws: Path, env: dict[str, str], module: str, *args: str | Path) -> subprocess.CompletedProcess:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, "--params", "params.yaml", *map(str, args)], cwd=ws,
                          env=env, capture_output=True, text=True, timeout=600)
    print(f"{module}: {time.monotonic() - start:.1f} s")
    return proc


@pytest.fixture(scope="module")
def pipeline(data: Data, server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    """train and evaluate against the server; the server down for a first gate, up for a second."""
    ws = tmp_path_factory.mktemp("server-ws")
    write_params(ws, SERVER_PARAMS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=server.url, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **RETRIES)
    common = ["--raw", data.raw, "--splits", data.splits, "--cache", data.cache]
    out: dict[str, Any] = {"ws": ws, "env": env}
    train = stage(ws, env, "mmcore.stages.train", *common, "--out", "model", "--unimodal", "unimodal",
                  "--report", "train.json")
    assert train.returncode == 0, train.stderr[-4000:]
    evaluate = stage(ws, env, "mmcore.stages.evaluate", *common, "--model", "model", "--unimodal", "unimodal",
                     "--train-report", "train.json", "--out", "metrics.json", "--plots", "plots")
    assert evaluate.returncode == 0, evaluate.stderr[-4000:]

    server.stop()
    start = time.monotonic()
    out["down"] = stage(ws, env, "mmcore.stages.gate", "--metrics", "metrics.json", "--out", "gate.json")
    out["down_seconds"] = time.monotonic() - start
    from mlflow import MlflowClient

    backend = MlflowClient(tracking_uri=f"sqlite:///{server.db}")   # the server's own store, read directly
    out["aliases_while_down"] = {k: str(v) for k, v in backend.get_registered_model(NAME).aliases.items()}

    server.start()
    out["up"] = stage(ws, env, "mmcore.stages.gate", "--metrics", "metrics.json", "--out", "gate.json")
    out["train"] = json.loads((ws / "train.json").read_text())
    return out


def test_stages_run_against_the_server(pipeline: dict[str, Any], server: Server) -> None:
    assert pipeline["up"].returncode == 0, pipeline["up"].stderr[-3000:]
    gate = json.loads((pipeline["ws"] / "gate.json").read_text())
    assert gate["promoted"] and gate["challenger_version"] == 1 and gate["champion_version"] == 1
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=server.url)
    mv = c.get_model_version_by_alias(NAME, "champion")
    assert mv.version == "1" and mv.tags["gate"] == "promoted" and mv.tags["gate_failed"] == "none"
    assert {"data_version", "params_hash", "git_commit"} <= set(mv.tags)
    run = c.get_run(pipeline["train"]["run_id"])
    assert {"test_macro_f1", "test_ece", "fused_val_macro_f1"} <= set(run.data.metrics)
    assert len(c.get_metric_history(run.info.run_id, "fused_val_macro_f1")) == 3          # one per epoch
    assert (server.root / "artifacts").is_dir() and any((server.root / "artifacts").rglob("config.json"))
    # SQLite in WAL mode; metrics reached the server in batches, never one request per value
    with sqlite3.connect(server.db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    log = server.log.read_text()
    assert "/runs/log-batch" in log and "/runs/log-metric" not in log


def test_server_down_retries_then_fails_clearly_without_touching_aliases(pipeline: dict[str, Any],
                                                                          server: Server) -> None:
    down = pipeline["down"]
    assert down.returncode == 3, down.stderr[-3000:]
    msg = down.stderr
    assert f"tracking server at {server.url} is unreachable" in msg and "after 2 retries" in msg
    assert "MLFLOW_TRACKING_URI" in msg and "mlflow server" in msg and "alias was not changed" in msg
    assert "Traceback" not in msg
    assert pipeline["down_seconds"] >= 2.0            # urllib3 backoff: 0 s, then 2 x factor 1 s
    assert pipeline["aliases_while_down"] == {"challenger": "1"}        # no champion was set


def test_champion_predicts_with_mlflow_cli_offline(pipeline: dict[str, Any], server: Server,
                                                   tmp_path: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(server.url)                  # `models:/` resolves through the global registry URI
    try:
        model = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path)))
    finally:
        mlflow.set_tracking_uri(None)
    assert (model / "serving_input_example.json").is_file() and (model / "input_example.json").is_file()
    assert not [p for p in model.rglob("*") if p.suffix in (".pkl", ".pickle")]
    assert "signature" in (model / "MLmodel").read_text()
    out = tmp_path / "predictions.json"
    proc = subprocess.run([str(BIN / "mlflow"), "models", "predict", "-m", f"models:/{NAME}@champion",
                           "-i", str(model / "serving_input_example.json"), "-t", "json", "-o", str(out),
                           "--env-manager", "local"], env=pipeline["env"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["predictions"]
    assert len(rows) == 2
    for row in rows:
        assert row["label"] in CLASSES and abs(sum(row[c] for c in CLASSES) - 1) < 1e-4


def test_train_with_the_server_down_fails_fast_and_clearly(tmp_path: Path) -> None:
    """No server answers: train stops before training (exit 3) with the URI and what to do, no traceback."""
    write_params(tmp_path, SERVER_PARAMS)
    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=url, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **RETRIES)
    proc = stage(tmp_path, env, "mmcore.stages.train", "--raw", "raw", "--splits", "splits.parquet",
                 "--cache", "cache", "--out", "model", "--unimodal", "unimodal", "--report", "train.json")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert f"tracking server at {url} is unreachable" in proc.stderr and "Nothing was logged" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "model").exists()
