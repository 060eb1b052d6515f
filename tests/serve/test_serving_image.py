"""The serving image works without torch: the bento's recorded requirements (requirements-serve.txt)
installed by pip into a fresh virtualenv lack torch and transformers, yet `bentoml serve` from that
venv answers /predict; and that install is smaller than today's environment (the training env,
torch included, which the bento installed while it required requirements.lock).

Needs PyPI (or the configured pip indexes) for the install; pip's download cache makes reruns fast."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.conftest import env_for

pytestmark = pytest.mark.slow


def test_bento_serves_from_a_fresh_venv_without_torch(serve_ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "serving_image.json"
    proc = subprocess.run([sys.executable, "-m", "mmcore.serving.image_check", "--bento", "parcel-condition:v1",
                           "--out", str(out)], cwd=serve_ws, env=env_for(serve_ws), text=True,
                          capture_output=True, timeout=1500)
    assert out.is_file(), f"no report (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(out.read_text())

    # the point: serving needs neither torch nor transformers, and nothing pulled them in
    assert report["imports"]["torch"] is False, report["import_errors"]
    assert report["imports"]["transformers"] is False, report["import_errors"]
    assert "No module named 'torch'" in report["import_errors"]["torch"]
    assert all(report["imports"][m] for m in ("bentoml", "onnxruntime", "tokenizers")), report["import_errors"]
    assert report["install"]["pip_check_ok"], report["install"]["pip_check"]
    assert report["serving"]["unpinned_installed"] == [], "the serving pins are incomplete"

    # the bento, served from that venv, answers
    served = report["served"]
    assert served["status"] == 200, served
    assert served["label"], served
    assert served["model_version"] == "1"

    # and the install is smaller than today's
    assert report["serving"]["site_packages_mb"] < report["today"]["site_packages_mb"]
    assert report["serving"]["packages"] < report["today"]["packages"]
    assert report["ratio_serving_to_today"] < 1
    assert report["ok"] and proc.returncode == 0, proc.stderr[-3000:]
