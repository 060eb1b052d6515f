"""int8 encoder graphs, made once per cache at training time and named by their sha256.

The frozen encoders' fp32 ONNX export (mmcore.serving.onnx_encoders.encoder_exports) is quantised
with ONNX Runtime's tooling: static QDQ for the image encoder (activation ranges from a deterministic
set of training-split images), dynamic for the text encoder. The graphs sit beside the fp32 export,
in `int8/<sha256>.onnx`, so a featurizer (training, evaluation, calibration, the in-process path)
and the package stage find the exact graph a model was trained on by the digest its model
directory records, and embeddings of different graphs never share a cache folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

INT8_DIR = "int8"
CARRIED_DIR = "int8-graphs"      # in a model directory: the graphs it was trained on, as <sha256>.onnx
ENCODERS = ("image", "text")


class DigestMismatch(RuntimeError):
    """An int8 graph's bytes are not those the model was trained on."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def calibration_images(train_records: list[dict[str, Any]], n: int) -> list[bytes]:
    """`n` training-split images picked by a fixed seed, in record order: the same records give the same
    activation ranges, so a lost cache can be re-quantised to the same bytes."""
    images = [r["image"] for r in train_records if r.get("image") is not None]
    pick = np.random.default_rng(0).permutation(len(images))[:n]
    return [images[i] for i in sorted(pick)]


def quantise_graphs(src: Path, dst: Path, images: list[bytes], size: int) -> dict[str, Path]:
    """int8 copies of `src`/image.onnx and `src`/text.onnx into `dst`: static QDQ (per-channel weights,
    activation ranges from `images`) for the convolutional image encoder, dynamic quantisation of the
    text encoder's matmuls."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static

    from mmcore.preprocess import prepare_image

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            data = next(self.it, None)
            return None if data is None else {"pixels": prepare_image(data, size)[None]}

    dst.mkdir(parents=True, exist_ok=True)
    # ONNX Runtime's basic graph optimisations first: they fold the exported "same" padding into the
    # convolutions, which otherwise stay float between a dequantise and a quantise (int8 then ran at
    # the fp32 pace; measured 15.8 vs 15.7 ms, folded 7.7 ms, batch 1, one thread)
    folded = dst / "image-folded.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(src / "image.onnx"), opts, providers=["CPUExecutionProvider"])
    with _quiet():
        quantize_static(str(folded), str(dst / "image.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        quantize_dynamic(str(src / "text.onnx"), str(dst / "text.onnx"), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8)
    folded.unlink()
    return {e: dst / f"{e}.onnx" for e in ENCODERS}


def int8_graphs(export: Path, images: list[bytes], image_size: int) -> dict[str, str]:
    """{encoder: sha256} of the int8 graphs of the fp32 encoder export in `export`
    (mmcore.serving.onnx_encoders.encoder_exports), quantised once per export and calibration set
    (`int8-<key>.json` beside the export records the digests)."""
    if not images:
        raise ValueError("no training-split images to set the image encoder's int8 activation ranges with")
    key = hashlib.sha256("".join(hashlib.sha256(b).hexdigest() for b in images).encode()).hexdigest()[:16]
    record = export / f"int8-{key}.json"
    if record.is_file():
        digests = json.loads(record.read_text(encoding="utf-8"))
        if all((export / INT8_DIR / f"{d}.onnx").is_file() for d in digests.values()):
            return digests
    tmp = export / f".int8.{os.getpid()}.tmp"
    digests = {}
    for name, path in quantise_graphs(export, tmp, images, image_size).items():
        digests[name] = sha256_file(path)
        (export / INT8_DIR).mkdir(exist_ok=True)
        os.replace(path, export / INT8_DIR / f"{digests[name]}.onnx")
    shutil.rmtree(tmp, ignore_errors=True)
    record.write_text(json.dumps(digests), encoding="utf-8")
    return digests


def find_graph(digest: str, folders: list[Path]) -> Path:
    """The graph with this sha256 in `folders` (as `<digest>.onnx`, or any `*.onnx` whose bytes match)."""
    for folder in folders:
        named = Path(folder) / f"{digest}.onnx"
        if named.is_file():
            return named
        for path in sorted(Path(folder).glob("*.onnx")) if Path(folder).is_dir() else []:
            if sha256_file(path) == digest:
                return path
    raise FileNotFoundError(f"no int8 encoder graph with sha256 {digest[:12]}… in {[str(f) for f in folders]}: "
                            "the model was trained on it; train again on this cache, or package the model "
                            "(the package stage re-quantises a lost graph and checks its digest)")


def carry_graphs(digests: dict[str, str], folders: list[Path], model_dir: Path) -> None:
    """Copy the int8 graphs a model was trained on into its directory (`int8-graphs/<sha256>.onnx`), so the
    registered version loads anywhere (MLflow's pyfunc, evaluate or package on a fresh cache) without
    re-quantising: the graphs depend on the calibration images, which the registry does not hold."""
    dst = Path(model_dir) / CARRIED_DIR
    dst.mkdir(parents=True, exist_ok=True)
    for digest in sorted(set(digests.values())):
        shutil.copyfile(find_graph(digest, folders), dst / f"{digest}.onnx")


def ship_graphs(digests: dict[str, str], folders: list[Path], dst: Path,
                requantise: Any = None) -> dict[str, str]:
    """Copy the int8 graphs named by `digests` into `dst` as `<encoder>.onnx`, each checked against its
    digest. A graph missing from `folders` is re-made by `requantise()` (returns the folders to look in
    afterwards); one whose bytes then differ refuses to ship (DigestMismatch)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, digest in sorted(digests.items()):
        try:
            src = find_graph(digest, folders)
        except FileNotFoundError:
            if requantise is None:
                raise
            folders = requantise()
            try:
                src = find_graph(digest, folders)
            except FileNotFoundError:
                raise DigestMismatch(
                    f"the {name} encoder's int8 graph the model was trained on (sha256 {digest}) is not in the "
                    "cache and re-quantising did not give the same bytes (another onnxruntime version or other "
                    "calibration images?): refusing to ship a graph the model was not gated on; retrain") from None
        shutil.copyfile(src, dst / f"{name}.onnx")
        if (got := sha256_file(dst / f"{name}.onnx")) != digest:
            raise DigestMismatch(f"{dst / f'{name}.onnx'} has sha256 {got}, the model was trained on {digest}: "
                                 "refusing to ship it")
    return {name: f"{INT8_DIR}/{name}.onnx" for name in sorted(digests)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantiser logs a warning per bias it clips and a hint to pre-process: not the user's to act on."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
