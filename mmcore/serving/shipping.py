"""What the package stage ships: the ONNX export, checked against torch, and int8 only where it keeps quality.

fp32 ONNX must answer like the torch model (probabilities within PARITY_TOLERANCE on the smoke
records) or the bento serves torch. int8 is tried on top (`mmcore.serving.export.quantise_encoders`,
activation ranges from training-split images), per encoder: the fastest set of int8 encoders whose
macro-F1 is at most `serve.max_quantised_drop` below fp32's and whose labels agree with fp32's on at
least `serve.min_quantised_agreement` of the validation split is chosen there, then kept only if the
gate set says the same. Each decision and its numbers go into `runtime.json` and reports/package.json.
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


Labelled = tuple[list[dict[str, Any]], np.ndarray]
CANDIDATES = (("image", "text"), ("text",), ("image",))   # fastest first: which encoders run in int8


def quality(model_dir: Path, encoders: tuple[str, ...], data: Labelled, fp32: np.ndarray,
            cfg: ServeConfig) -> dict[str, Any]:
    """int8 on `encoders` (fp32 elsewhere) against fp32 on labelled records: F1 drop, agreement, verdict."""
    runtime = exported(model_dir)
    write_runtime(model_dir, {**runtime, "onnx_int8": {e: f"{INT8_DIR}/{e}.onnx" for e in encoders}})
    records, y = data
    int8 = OnnxPredictor(model_dir, "onnx_int8").probabilities(records).argmax(1)
    f1_fp32, f1_int8 = macro_f1(y, fp32, len(CLASSES)), macro_f1(y, int8, len(CLASSES))
    found = {"encoders": list(encoders), "records": len(y), "macro_f1_fp32": round(f1_fp32, 4),
             "macro_f1_int8": round(f1_int8, 4), "macro_f1_drop": round(f1_fp32 - f1_int8, 4),
             "label_agreement": round(float((fp32 == int8).mean()), 4)}
    failed = [f"macro-F1 drop {found['macro_f1_drop']} > serve.max_quantised_drop {cfg.max_quantised_drop}"
              ] if found["macro_f1_drop"] > cfg.max_quantised_drop else []
    if found["label_agreement"] < cfg.min_quantised_agreement:
        failed.append(f"label agreement {found['label_agreement']} < serve.min_quantised_agreement "
                      f"{cfg.min_quantised_agreement}")
    return {**found, "passed": not failed, "why": "; ".join(failed)}


def int8_decision(model_dir: Path, cfg: ServeConfig, calibration: list[bytes], val: Labelled | None,
                  gate: Labelled | None) -> dict[str, Any]:
    """Quantise both encoders; choose on the validation split the fastest set of int8 encoders within
    both limits; keep it only if the gate set agrees. The decision with every number it rests on."""
    if not cfg.quantise:
        return {"kept": False, "reason": "serve.quantise is false"}
    if val is None or gate is None or not calibration:
        return {"kept": False, "reason": "no validation split, gate set or training images at hand to check int8 on"}
    quantise_encoders(model_dir, calibration)
    reference = OnnxPredictor(model_dir, "onnx_fp32")
    fp32 = {name: reference.probabilities(d[0]).argmax(1) for name, d in (("val", val), ("gate", gate))}
    tried = []
    for encoders in CANDIDATES:
        tried.append(quality(model_dir, encoders, val, fp32["val"], cfg))
        if tried[-1]["passed"]:
            break
    out = {"calibration_images": len(calibration), "val": tried}
    if not tried[-1]["passed"]:
        return {**out, "kept": False, "encoders": [], "reason": f"no int8 encoder within the limits on val "
                                                                f"({tried[-1]['why']} for {tried[-1]['encoders']})"}
    encoders = tuple(tried[-1]["encoders"])
    gated = quality(model_dir, encoders, gate, fp32["gate"], cfg)
    reason = f"{'+'.join(encoders)} in int8: within both limits on val and the gate set" if gated["passed"] \
        else f"{'+'.join(encoders)} in int8 passed val, not the gate set: {gated['why']}"
    return {**out, "gate": gated, "kept": gated["passed"], "encoders": list(encoders) if gated["passed"] else [],
            "reason": reason}


def prepare(model_dir: Path, cfg: ServeConfig, calibration: list[bytes], val: Labelled | None,
            gate: Labelled | None, cache_dir: Path | None = None) -> dict[str, Any]:
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
    decision = int8_decision(model_dir, cfg, calibration, val, gate)
    runtime = exported(model_dir)
    int8 = Path(model_dir) / ONNX_DIR / INT8_DIR
    if decision["kept"]:
        runtime["onnx_int8"] = {e: f"{INT8_DIR}/{e}.onnx" for e in decision["encoders"]}
        for unused in {"image", "text"} - set(decision["encoders"]):
            (int8 / f"{unused}.onnx").unlink(missing_ok=True)
    else:
        shutil.rmtree(int8, ignore_errors=True)
        runtime["onnx_int8"] = None
    runtime.update(int8_decision=decision, fp32_parity_max_abs=parity)
    write_runtime(model_dir, runtime)
    return runtime
