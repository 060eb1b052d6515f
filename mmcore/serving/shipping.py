"""What the package stage ships: the ONNX export of the model as it was trained, gated and calibrated.

The int8 choice is not made here: the train stage chose on validation which encoders the model embeds
through (mmcore.stages.int8_choice) and the evaluate stage confirmed it on the gate set. Packaging
ships exactly those int8 graphs (copied from the training cache and checked against the sha256 the
model directory records; re-quantised deterministically when the cache is gone, and refused on a
digest mismatch) with the fp32 head, then checks the served path (ONNX Runtime, the shipped backend)
against the in-process one (the training featurizer and the torch head on the same graphs) within
PARITY_TOLERANCE on probabilities. An fp32 model whose export is off torch is served by torch.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmcore.serving.export import ONNX_DIR, export_model, write_runtime
from mmcore.serving.int8 import CARRIED_DIR, INT8_DIR, DigestMismatch, int8_graphs, ship_graphs
from mmcore.serving.runtime import OnnxPredictor

PARITY_TOLERANCE = 1e-4
SMOKE_RECORDS = [{"note": "corner crushed, box dented", "image": None, "sensor": None},
                 {"note": "left at the door in the rain", "image": None,
                  "sensor": {"temperature_c": [4.0, 4.5, 5.0], "humidity_pct": [60.0, 85.0, 92.0],
                             "shock_g": [0.1, 2.5, 0.2], "light_lux": [0.0, 0.0, 10.0]}}]


class ShipRefused(RuntimeError):
    """The files that would ship are not those the model was trained and gated on."""


def smoke_records() -> list[dict[str, Any]]:
    """SMOKE_RECORDS plus one with a (fixed, synthetic) photo, so the parity check runs the image encoder too."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return [*SMOKE_RECORDS, {"note": "seal tape torn", "image": buf.getvalue(), "sensor": None}]


def parity(model_dir: Path, backend: str, records: list[dict[str, Any]], cache_dir: Path | None = None) -> float:
    """Largest probability difference between the shipped backend and the in-process model on `records`."""
    from mmcore.predict import load_model

    in_process = load_model(model_dir, onnx_cache=cache_dir).probabilities(records)
    return float(np.abs(in_process - OnnxPredictor(model_dir, backend).probabilities(records)).max())


def ship_int8(model_dir: Path, digests: dict[str, str], cache_dir: Path | None,
              images: Callable[[], list[bytes]]) -> dict[str, str]:
    """The int8 graphs named by `digests` into `onnx/int8/`; `images()` gives the training-split images
    to re-quantise with when the cache lost them."""
    from mmcore.features import Featurizer
    from mmcore.model import ModelBundle
    from mmcore.serving.onnx_encoders import encoder_exports

    feat = Featurizer(ModelBundle.load(model_dir).model.cfg, device="cpu", backend="onnx", onnx_cache=cache_dir)
    export, _ = encoder_exports(feat, cache_dir)

    def requantise() -> list[Path]:
        print("package: the int8 graphs the model was trained on are not in the cache: re-quantising", flush=True)
        int8_graphs(export, images(), feat.cfg.image_size)
        return [export / INT8_DIR]

    try:
        shipped = ship_graphs(digests, [export / INT8_DIR, Path(model_dir) / CARRIED_DIR],
                              Path(model_dir) / ONNX_DIR / INT8_DIR, requantise)
        shutil.rmtree(Path(model_dir) / CARRIED_DIR, ignore_errors=True)   # shipped as onnx/int8/: once is enough
        return shipped
    except DigestMismatch as e:
        shutil.rmtree(Path(model_dir) / ONNX_DIR / INT8_DIR, ignore_errors=True)
        raise ShipRefused(str(e)) from None


def prepare(model_dir: Path, digests: dict[str, str], images: Callable[[], list[bytes]],
            cache_dir: Path | None = None) -> dict[str, Any]:
    """Export and check a model directory in place; returns what runtime.json now says. `digests`: the
    int8 graphs the model was trained on ({} for fp32); `cache_dir`: the training cache, whose encoder
    export and int8 graphs are reused."""
    runtime = export_model(model_dir, cache_dir)
    if digests:
        runtime.update(onnx_int8=ship_int8(model_dir, digests, cache_dir, images), int8_sha256=digests)
    backend = "onnx_int8" if digests else "onnx_fp32"
    runtime["int8_reason"] = (f"trained on int8 {'+'.join(sorted(digests))} (chosen on val, confirmed on the gate set)"
                              if digests else "trained on fp32 encoders (reports/train.json says why)")
    write_runtime(model_dir, runtime)
    gap = parity(model_dir, backend, smoke_records(), cache_dir)
    runtime["parity"] = {"backend": backend, "max_abs": gap, "tolerance": PARITY_TOLERANCE}
    if gap > PARITY_TOLERANCE:
        if digests:
            raise ShipRefused(f"the shipped {backend} answers {gap:.2g} away from the in-process model on the same "
                              f"graphs (limit {PARITY_TOLERANCE}): refusing to ship; report this")
        shutil.rmtree(Path(model_dir) / ONNX_DIR)
        runtime.update(onnx_fp32=None, reason=f"fp32 export off torch by {gap:.2g}: serving torch")
    write_runtime(model_dir, runtime)
    return runtime
