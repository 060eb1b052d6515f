"""Parity: what the service answers equals the same backend in process on the same records (1e-5), for
every backend the bento can serve (ONNX Runtime as shipped, torch), also when adaptive batching merges
concurrent requests into one model call; so do the routing fields (prediction
set, decision, review reasons) wherever a 1e-5 wobble cannot move a value across a calibrated threshold."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mmcore.bench.serve import RANDOM_CALIBRATION, serving, synthetic_records, to_mmcore
from mmcore.config import CLASSES
from tests.serve.conftest import AUTH, env_for

ROUTING = ("prediction_set", "decision", "review_reason")


def clear_of_thresholds(answer: dict, margin: float = 1e-4) -> bool:
    """No probability near the set boundary or the confidence threshold, no disagreement near its threshold."""
    cal = RANDOM_CALIBRATION
    edges = [(p, 1 - cal["set_quantile"]) for p in answer["probabilities"].values()]
    edges += [(max(answer["probabilities"].values()), cal["confidence_thresholds"][answer["label"]]),
              (answer["disagreement"], cal["disagreement_threshold"])]
    return all(abs(v - t) > margin for v, t in edges)

pytestmark = pytest.mark.slow


def merged_batches(url: str) -> tuple[float, float]:
    """(model calls, of which with more than one request merged) from BentoML's batch-size histogram."""
    calls = single = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if 'method_name="predict"' not in line:
            continue
        if line.startswith("bentoml_service_adaptive_batch_size_count{"):
            calls += float(line.rsplit(" ", 1)[1])
        elif line.startswith("bentoml_service_adaptive_batch_size_bucket{") and 'le="1.0"' in line:
            single += float(line.rsplit(" ", 1)[1])
    return calls, calls - single


def check_parity_under_batching(server: str, model_dir: Path, backend: str) -> None:
    """The served answers equal `backend`'s in-process predictor on the same model directory."""
    from mmcore.serving.runtime import load_predictor

    records = synthetic_records(24, seed=3)
    for i, rec in enumerate(records):  # every pattern of missing modalities
        if i % 4 == 1:
            rec.pop("image")
        elif i % 4 == 2:
            rec["note"] = None
        elif i % 4 == 3:
            rec.pop("sensor")
    local = load_predictor(model_dir, backend).predict([to_mmcore(r) for r in records])
    routed = [clear_of_thresholds(a) for a in local]
    assert sum(routed) >= 12 and len({(a["decision"], len(a["prediction_set"])) for a in local}) >= 2
    bodies = [{"records": [r]} for r in records] + [{"records": records[:5]}]

    def post(body: dict) -> list[dict]:
        resp = httpx.post(f"{server}/predict", json=body, headers=AUTH, timeout=120)
        assert resp.status_code == 200, resp.text
        return resp.json()

    before = merged_batches(server)
    for _ in range(10):  # bounded: until the dispatcher has merged requests (its first ~30 calls train it)
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, bodies))
        served = [a[0] for a in answers[:-1]] + answers[-1]
        expected = local + local[:5]
        for got, want, clear in zip(served, expected, routed + routed[:5], strict=True):
            assert got["label"] == want["label"] and got["modalities"] == want["modalities"]
            assert got["decision"] in ("auto", "review") and set(got["prediction_set"]) <= set(CLASSES)
            if clear:
                assert {k: got[k] for k in ROUTING} == {k: want[k] for k in ROUTING}, (got, want)
            for c in CLASSES:
                assert abs(got["probabilities"][c] - want["probabilities"][c]) < 1e-5, (c, got, want)
        if merged_batches(server)[1] > before[1]:
            break
    assert merged_batches(server)[1] > before[1], "no model call merged two requests"


def test_served_onnx_equals_in_process_onnx_and_torch(serve_ws: Path, server: str) -> None:
    """The bento serves what the package stage shipped (ONNX fp32 here: the model was trained on fp32 graphs),
    answering as ONNX Runtime in process, which answers as torch within 1e-4."""
    from mmcore.predict import load_model
    from mmcore.serving.runtime import load_predictor

    package = json.loads((serve_ws / "reports" / "package.json").read_text())
    assert package["backend"] == "onnx_fp32" and package["runtime"]["onnx_int8"] is None
    assert package["runtime"]["parity"]["backend"] == "onnx_fp32" and package["runtime"]["parity"]["max_abs"] < 1e-4
    model_dir = serve_ws / ".bentoml" / "models" / "parcel-condition" / "v1"
    check_parity_under_batching(server, model_dir, "onnx_fp32")
    records = [to_mmcore(r) for r in synthetic_records(16, seed=8)]
    onnx_p = load_predictor(model_dir, "onnx_fp32").probabilities(records)
    assert abs(onnx_p - load_model(model_dir).probabilities(records)).max() < 1e-4


def test_served_torch_equals_mmcore_predict(serve_ws: Path) -> None:
    """The torch backend stays servable (PARCEL_BACKEND=torch, where torch is installed)."""
    model_dir = serve_ws / ".bentoml" / "models" / "parcel-condition" / "v1"
    env = env_for(serve_ws, PARCEL_BACKEND="torch", PARCEL_BATCHING="1")
    with serving("parcel-condition:v1", serve_ws, env, serve_ws / "logs" / "server-torch.log") as url:
        check_parity_under_batching(url, model_dir, "torch")
