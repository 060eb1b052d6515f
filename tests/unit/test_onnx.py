"""The ONNX export and runtime: same answers as torch, same tokens as transformers, clear errors for a
backend a model directory does not have. The int8 graphs: tests/unit/test_int8.py."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from mmcore.bench.serve import random_bundle, synthetic_records
from mmcore.config import load_params
from mmcore.evaluate import model_probs
from mmcore.selective.scaling import apply_temperature
from mmcore.serving import runtime
from mmcore.serving.export import export_model
from mmcore.serving.runtime import OnnxPredictor, load_predictor, resolve_backend

ROOT = Path(__file__).resolve().parents[2]


def records(n: int, seed: int) -> list[dict]:
    out = []
    for i, r in enumerate(synthetic_records(n, seed=seed, rows=50, image_side=64)):
        rec = {"image": base64.b64decode(r["image"]), "note": r["note"], "sensor": r["sensor"]}
        if missing := ("image", "note", "sensor", None)[i % 4]:    # every pattern of a missing modality
            rec[missing] = None
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = random_bundle(tmp_path_factory.mktemp("onnx") / "model", load_params(ROOT / "params.yaml").model, seed=4)
    export_model(d)
    return d


def probs(answers: list[dict]) -> np.ndarray:
    return np.array([list(a["probabilities"].values()) for a in answers])


def test_fp32_onnx_answers_as_torch(exported_dir: Path) -> None:
    recs = records(12, seed=1)
    recs[5]["note"] = "écrasé " * 80 + "数据"          # truncated at text_max_tokens, non-Latin script
    torch_p, onnx_p = load_predictor(exported_dir, "torch"), load_predictor(exported_dir, "onnx_fp32")
    for got, want in zip(onnx_p.embed(recs), torch_p.featurizer.embed(recs)):    # a random head hides little
        assert np.abs(got - want).max() < 1e-4
    torch_ans, onnx_ans = torch_p.predict(recs), onnx_p.predict(recs)
    assert np.abs(probs(torch_ans) - probs(onnx_ans)).max() < 1e-4
    raw = model_probs(torch_p.bundle.model, torch_p.featurizer.batch(recs, torch_p.bundle.sensor_mean,
                                                                      torch_p.bundle.sensor_std))
    assert onnx_p.calibration.temperature == 0.5          # both serve the version's scaled probabilities
    assert np.abs(probs(onnx_ans) - apply_temperature(raw, 0.5)).max() < 1e-4 < np.abs(raw - probs(onnx_ans)).max()
    assert max(abs(a["disagreement"] - b["disagreement"]) for a, b in zip(torch_ans, onnx_ans)) < 1e-4
    for a, b in zip(torch_ans, onnx_ans):
        assert (a["label"], a["modalities"], a["prediction_set"]) == (b["label"], b["modalities"], b["prediction_set"])
    # batch of one and an empty batch take the same path
    one = load_predictor(exported_dir, "onnx_fp32").predict(recs[:1])
    assert np.abs(probs(one) - probs(torch_ans[:1])).max() < 1e-4
    assert load_predictor(exported_dir, "onnx_fp32").predict([]) == []


def test_tokenizer_json_gives_the_transformers_ids(exported_dir: Path) -> None:
    from mmcore.encoders import TextEncoder

    notes = ["box dented", "  wet  corner, water-stained label ", "écrasé " * 80, "数据 损坏"]
    ids, attention = TextEncoder(max_tokens=48).tokenize(notes)
    enc = OnnxPredictor(exported_dir).tokenizer.encode_batch(notes)
    assert [e.ids for e in enc] == ids.tolist()
    assert [e.attention_mask for e in enc] == attention.tolist()


def test_runtime_file_and_backend_choice(exported_dir: Path) -> None:
    meta = json.loads((exported_dir / "runtime.json").read_text())
    assert meta["opinions"] == ["image", "text", "sensor"] and meta["onnx_fp32"]["head"] == "head.onnx"
    assert meta["onnx_int8"] is None
    assert resolve_backend(exported_dir, "auto") == "onnx_fp32"
    with pytest.raises(ValueError, match="no such export"):
        resolve_backend(exported_dir, "onnx_int8")
    plain = exported_dir.parent / "plain"
    random_bundle(plain, load_params(ROOT / "params.yaml").model, seed=5, routing=False)
    assert resolve_backend(plain, "auto") == "torch"      # a directory never packaged still serves


def test_onnx_runtime_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys\nfor m in ('torch', 'transformers'): sys.modules[m] = None\n"
            "import mmcore.serving.runtime, mmcore.preprocess, mmcore.selective.decide, mmcore.data.checks")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_threads_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARCEL_THREADS", raising=False)
    monkeypatch.setenv("PARCEL_TORCH_THREADS", "3")
    assert runtime.threads_setting() == 3
    monkeypatch.setenv("PARCEL_THREADS", "2")
    assert runtime.threads_setting() == 2


def test_featurizer_embeds_through_onnx_as_torch(tmp_path: Path) -> None:
    from mmcore.features import Featurizer

    cfg = load_params(ROOT / "params.yaml").model
    recs = records(8, seed=6)
    onnx_feat = Featurizer(cfg, cache_dir=tmp_path, backend="onnx")
    torch_feat = Featurizer(cfg, backend="torch")
    assert onnx_feat.cache_keys["image"] != torch_feat.cache_keys["image"]      # never mixed in one cache
    got, want = onnx_feat.embed(recs), torch_feat.embed(recs)
    for a, b in zip(got, want):
        assert np.abs(a - b).max() < 1e-4
    exported = list((tmp_path / "onnx-encoders").iterdir())
    Featurizer(cfg, cache_dir=tmp_path, backend="onnx").embed(records(4, seed=7))   # reuses the export
    assert list((tmp_path / "onnx-encoders").iterdir()) == exported and len(exported) == 1
    tuned = Featurizer(cfg, backend="onnx", encoder_state={})                      # fine-tuned: torch
    assert tuned.backend == "torch"
