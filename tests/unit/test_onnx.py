"""The ONNX export and runtime: same answers as torch, same tokens as transformers, int8 kept only
within its limits, clear errors for a backend a model directory does not have."""
from __future__ import annotations

import base64
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmcore.bench.serve import random_bundle, synthetic_records
from mmcore.config import ServeConfig, load_params
from mmcore.evaluate import model_probs
from mmcore.selective.scaling import apply_temperature
from mmcore.serving import runtime
from mmcore.serving.export import export_model
from mmcore.serving.runtime import OnnxPredictor, load_predictor, resolve_backend
from mmcore.serving.shipping import int8_decision, prepare

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


def test_int8_kept_only_within_limits(exported_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "model"
    shutil.copytree(exported_dir, d)
    recs, gate_recs = records(16, seed=2), records(12, seed=9)
    images = [r["image"] for r in records(8, seed=3) if r["image"] is not None]
    val = (recs, OnnxPredictor(d).probabilities(recs).argmax(1))          # fp32 is right on every record
    gate = (gate_recs, OnnxPredictor(d).probabilities(gate_recs).argmax(1))
    lax = ServeConfig(max_quantised_drop=1.0, min_quantised_agreement=0.0)
    kept = prepare(d, lax, images, val, gate)["int8_decision"]
    assert kept["kept"] and kept["encoders"] == ["image", "text"] and len(kept["val"]) == 1
    assert kept["gate"]["records"] == 12 and kept["gate"]["passed"]
    assert np.allclose(probs(load_predictor(d, "onnx_int8").predict(recs)).sum(1), 1, atol=1e-5)
    assert resolve_backend(d, "auto") == "onnx_int8"

    strict = ServeConfig(max_quantised_drop=-1.0)                  # no int8 can pass: fp32 is shipped
    meta = prepare(d, strict, images, val, gate)
    decision = meta["int8_decision"]
    assert meta["onnx_int8"] is None and not decision["kept"] and "gate" not in decision
    assert [t["encoders"] for t in decision["val"]] == [["image", "text"], ["text"], ["image"]]
    assert "max_quantised_drop" in decision["reason"]
    assert not (d / "onnx" / "int8").exists() and resolve_backend(d, "auto") == "onnx_fp32"
    assert meta["fp32_parity_max_abs"] < 1e-4

    off = prepare(d, dataclasses.replace(strict, quantise=False), images, val, gate)
    assert off["int8_decision"] == {"kept": False, "reason": "serve.quantise is false"}
    assert prepare(d, ServeConfig(), [], None, None)["int8_decision"]["kept"] is False


def test_int8_chosen_on_val_and_refused_by_the_gate_set(exported_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate set only checks the choice made on val: its refusal ships fp32 and says why."""
    from mmcore.serving import shipping

    d = tmp_path / "model"
    shutil.copytree(exported_dir, d)
    recs = records(8, seed=2)
    val, gate = (recs, np.zeros(8, int)), (recs[:4], np.zeros(4, int))
    seen = []

    def fake_quality(model_dir: Path, encoders: tuple, data: tuple, fp32: np.ndarray, cfg: ServeConfig) -> dict:
        seen.append((encoders, len(data[1])))
        passed = encoders == ("text",) and len(data[1]) == 8           # only text, only on val
        return {"encoders": list(encoders), "records": len(data[1]), "passed": passed, "why": "" if passed else "no"}

    monkeypatch.setattr(shipping, "quality", fake_quality)
    images = [r["image"] for r in recs if r["image"] is not None]
    decision = int8_decision(d, ServeConfig(), images, val, gate)
    assert seen == [(("image", "text"), 8), (("text",), 8), (("text",), 4)]
    assert not decision["kept"] and decision["encoders"] == [] and "not the gate set" in decision["reason"]


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
