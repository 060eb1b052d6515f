"""What the package stage ships: the ONNX export, checked against torch, and int8 only where it keeps quality.

fp32 ONNX must answer like the torch model (probabilities within PARITY_TOLERANCE on the smoke
records) or the bento serves torch. int8 is tried on top (`mmcore.serving.export.quantise_encoders`,
activation ranges from training-split images) and kept only if, on the gate set, its macro-F1 is
at most `serve.max_quantised_drop` below fp32's and at least `serve.min_quantised_agreement` of its
labels equal fp32's. Each decision and its numbers go into `runtime.json` and reports/package.json.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mmcore.config import CLASSES, ServeConfig
from mmcore.evaluate import macro_f1
from mmcore.serving.export import INT8_DIR, ONNX_DIR, export_model, quantise_encoders, write_runtime
from mmcore.serving.runtime import OnnxPredictor, exported

PARITY_TOLERANCE = 1e-4
SMOKE_RECORDS = [{"note": "corner crushed, box dented", "image": None, "sensor": None},
                 {"note": "left at the door in the rain", "image": None,
                  "sensor": {"temperature_c": [4.0, 4.5, 5.0], "humidity_pct": [60.0, 85.0, 92.0],
                             "shock_g": [0.1, 2.5, 0.2], "light_lux": [0.0, 0.0, 10.0]}}]


def fp32_parity(model_dir: Path, records: list[dict[str, Any]]) -> float:
    """Largest probability difference between torch and ONNX fp32 on `records`."""
    from mmcore.predict import load_model

    torch_p = load_model(model_dir).probabilities(records)
    return float(np.abs(torch_p - OnnxPredictor(model_dir, "onnx_fp32").probabilities(records)).max())


def int8_decision(model_dir: Path, cfg: ServeConfig, calibration: list[bytes],
                  gate: tuple[list[dict[str, Any]], np.ndarray] | None) -> dict[str, Any]:
    """Quantise, then keep or drop int8 on the gate set's quality; the decision with its numbers."""
    if not cfg.quantise:
        return {"kept": False, "reason": "serve.quantise is false"}
    if gate is None or not calibration:
        return {"kept": False, "reason": "no gate set or no training images at hand to check int8 against"}
    files = quantise_encoders(model_dir, calibration)
    runtime = exported(model_dir)
    write_runtime(model_dir, {**runtime, "onnx_int8": files})
    records, y = gate
    fp32 = OnnxPredictor(model_dir, "onnx_fp32").probabilities(records).argmax(1)
    int8 = OnnxPredictor(model_dir, "onnx_int8").probabilities(records).argmax(1)
    f1_fp32, f1_int8 = macro_f1(y, fp32, len(CLASSES)), macro_f1(y, int8, len(CLASSES))
    found = {"gate_records": len(y), "macro_f1_fp32": round(f1_fp32, 4), "macro_f1_int8": round(f1_int8, 4),
             "macro_f1_drop": round(f1_fp32 - f1_int8, 4), "label_agreement": round(float((fp32 == int8).mean()), 4),
             "calibration_images": len(calibration)}
    failed = [f"macro-F1 drop {found['macro_f1_drop']} > serve.max_quantised_drop {cfg.max_quantised_drop}"
              ] if found["macro_f1_drop"] > cfg.max_quantised_drop else []
    if found["label_agreement"] < cfg.min_quantised_agreement:
        failed.append(f"label agreement {found['label_agreement']} < serve.min_quantised_agreement "
                      f"{cfg.min_quantised_agreement}")
    return {"kept": not failed, "reason": "; ".join(failed) or "within both limits on the gate set", **found}


def prepare(model_dir: Path, cfg: ServeConfig, calibration: list[bytes],
            gate: tuple[list[dict[str, Any]], np.ndarray] | None, cache_dir: Path | None = None) -> dict[str, Any]:
    """Export, check, quantise a model directory in place; returns what runtime.json now says.
    `cache_dir`: the training cache, whose encoder export is reused (mmcore.serving.export.encoder_exports)."""
    runtime = export_model(model_dir, cache_dir)
    parity = fp32_parity(model_dir, SMOKE_RECORDS)
    if parity > PARITY_TOLERANCE:
        shutil.rmtree(Path(model_dir) / ONNX_DIR)
        runtime.update(onnx_fp32=None, fp32_parity_max_abs=parity,
                       int8_decision={"kept": False, "reason": f"fp32 export off torch by {parity:.2g}: serving torch"})
        write_runtime(model_dir, runtime)
        return runtime
    decision = int8_decision(model_dir, cfg, calibration, gate)
    runtime = exported(model_dir)
    if not decision["kept"]:
        shutil.rmtree(Path(model_dir) / ONNX_DIR / INT8_DIR, ignore_errors=True)
        runtime["onnx_int8"] = None
    runtime.update(int8_decision=decision, fp32_parity_max_abs=parity)
    write_runtime(model_dir, runtime)
    return runtime
