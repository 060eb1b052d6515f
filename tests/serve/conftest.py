"""A serving workspace without the training pipeline: a seeded random-weight model of the
configured architecture is registered in MLflow, promoted to champion and packaged by the real
`package` stage into bento `parcel-condition:v1`; `bentoml serve` runs it on a loopback port.

The weights do not matter to what these tests check (limits, parity with `mmcore.predict`, load,
fuzz, a version switch); the trained-model path is covered by tests/e2e."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from mmcore.bench.serve import random_bundle, serving
from mmcore.config import load_params

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# every server here runs closed, as in production: the service's key, and a reviewer's it must refuse
API_KEY = "serve-test-key"
REVIEWER_KEY = "serve-test-reviewer-key"
AUTH = {"x-api-key": API_KEY}

REGISTER = """
import sys
from pathlib import Path
import mlflow
from mmcore import registry
registry.setup("parcel-condition")
with mlflow.start_run():
    version = registry.log_model(Path(sys.argv[1]), "parcel-condition")
registry.promote("parcel-condition", version)
print(version)
"""


def env_for(ws: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "BENTOML_", "PREFECT_", "PARCEL_"))}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", BENTOML_HOME=str(ws / ".bentoml"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", BENTOML_DO_NOT_TRACK="True", DO_NOT_TRACK="1", PYTHONPATH=str(ws),
               PARCEL_API_KEY=API_KEY, PARCEL_REVIEWER_KEYS=f"ana:{REVIEWER_KEY}")
    env.update(extra)
    return env


def run(cmd: list, ws: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=ws, env=env_for(ws), text=True, capture_output=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def release(ws: Path, model_dir: Path) -> str:
    """Register `model_dir` as a new version, promote it to champion, run the package stage:
    what the retrain flow's gate and package steps do. Returns the bento tag."""
    version = run([sys.executable, "-c", REGISTER, model_dir], ws).stdout.strip().splitlines()[-1]
    run([sys.executable, "-m", "mmcore.stages.package", "--out", ws / "reports" / "package.json"], ws)
    return f"parcel-condition:v{version}"


@pytest.fixture(scope="session")
def serve_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("serve-ws")
    for name in ("service.py", "bentofile.yaml", "requirements-serve.txt", "params.yaml"):
        shutil.copy(ROOT / name, ws / name)
    shutil.copytree(ROOT / "mmcore", ws / "mmcore", ignore=shutil.ignore_patterns("__pycache__"))
    random_bundle(ws / "models" / "v1", load_params(ROOT / "params.yaml").model, seed=1)
    assert release(ws, ws / "models" / "v1") == "parcel-condition:v1"
    return ws


@pytest.fixture(scope="session")
def server(serve_ws: Path) -> Iterator[str]:
    """Bento v1 on a loopback port, adaptive batching on (the optional path; the default, off, is what the
    e2e and blue/green servers run); its log (stdout and stderr) is `serve_ws/logs/server.log`."""
    with serving("parcel-condition:v1", serve_ws, env_for(serve_ws, PARCEL_BATCHING="1"),
                 serve_ws / "logs" / "server.log") as url:
        yield url
