"""In-process speed of each serving backend, part by part (the serve benchmark's `backends` table).

For torch, ONNX fp32 and ONNX int8 on the same model directory, at batch 1 and 32 and on one and
two threads: ms per record end to end (`Predictor.predict` / `OnnxPredictor.predict`, the
service's call) and per part of the path: preprocessing (decode, resize, tokenise, sensor
resampling), the image encoder, the text encoder, and the head with the routing's opinions.
Where a goal is missed, the parts say which one holds the time.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmcore.preprocess import prepare_image, prepare_note
from mmcore.serving.runtime import forget_embeddings

BACKENDS = ("torch", "onnx_fp32", "onnx_int8")


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def parts(predictor: Any, records: list[dict[str, Any]]) -> dict[str, Callable[[], Any]]:
    """One callable per part of the path, on these records."""
    size = predictor.cfg["image_size"] if hasattr(predictor, "cfg") else predictor.bundle.model.cfg.image_size
    images = [r["image"] for r in records if r.get("image") is not None]
    notes = [n for r in records if (n := prepare_note(r.get("note")))]
    pixels = np.stack([prepare_image(b, size) for b in images])

    def preprocess() -> Any:
        return [prepare_image(b, size) for b in images], [prepare_note(r.get("note")) for r in records]

    if hasattr(predictor, "image"):      # OnnxPredictor
        feeds = predictor.inputs(records)
        tokens = predictor.tokens(notes)
        return {"preprocess": preprocess, "image_encoder": lambda: predictor.image.run(None, {"pixels": pixels}),
                "text_encoder": lambda: predictor.text.run(None, tokens),
                "head_and_routing": lambda: predictor.disagreement(feeds["mask"], *predictor.head.run(None, feeds)[1:])}
    import torch

    featurizer, model = predictor.featurizer, predictor.bundle.model
    batch = featurizer.batch(records, predictor.bundle.sensor_mean, predictor.bundle.sensor_std)

    def head() -> Any:
        with torch.inference_mode():
            tokens = model.tokens(batch)
            return predictor.router.route(torch.softmax(model.classify(*tokens), -1).numpy(), batch,
                                          predictor.labels, tokens)

    with torch.inference_mode():
        x = torch.from_numpy(pixels)
        return {"preprocess": preprocess, "image_encoder": lambda: featurizer.image_encoder()(x),
                "text_encoder": lambda: featurizer.text_encoder()(notes), "head_and_routing": head}


def backend_table(model_dir: Path, records: list[dict[str, Any]], batches: tuple[int, ...] = (1, 32),
                  threads: tuple[int, ...] = (1, 2), repeats: int = 5) -> dict[str, dict[str, Any]]:
    """{backend: {ms_per_record_b<B>_t<T>: ..., parts_b<B>_t<T>: {part: ms per record}}}."""
    import torch

    from mmcore.serving.runtime import load_predictor

    before = torch.get_num_threads()
    out: dict[str, dict[str, Any]] = {}
    try:
        for backend in BACKENDS:
            row: dict[str, Any] = {}
            for t in threads:
                predictor = load_predictor(model_dir, backend, threads=t)
                for b in batches:
                    recs = records[:b]
                    n = max(1, repeats if b > 1 else 4 * repeats)

                    def whole() -> Any:
                        forget_embeddings(predictor)
                        return predictor.predict(recs)

                    row[f"ms_per_record_b{b}_t{t}"] = round(median_ms(whole, n) / b, 2)
                    with torch.inference_mode():
                        row[f"parts_b{b}_t{t}"] = {k: round(median_ms(fn, n) / b, 2)
                                                   for k, fn in parts(predictor, recs).items()}
            out[backend] = row
    finally:
        torch.set_num_threads(before)
    return out


def slowest_part(row: dict[str, Any], key: str = "b1_t1") -> str:
    """The part of the path that holds the most time at that batch size and thread count."""
    times = row[f"parts_{key}"]
    return max(times, key=times.get)
