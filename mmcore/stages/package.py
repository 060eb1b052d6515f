"""package stage: the champion from the registry into BentoML's model store, then a bento.

The bento store lives in the project (`.bentoml/`) unless BENTOML_HOME says otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from mmcore.config import load_params
from mmcore.stages.common import write_json


def import_model(model_dir: Path, name: str, version: str) -> Any:
    """A BentoML model `name:v<version>` holding the mmcore model directory (idempotent)."""
    import bentoml

    tag = f"{name}:v{version}"
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        pass
    with bentoml.models.create(tag, labels={"stage": "champion"},
                               metadata={"model_version": version}) as model:
        shutil.copytree(model_dir, model.path, dirs_exist_ok=True)
    return bentoml.models.get(tag)


def smoke_test(model_path: str, backend: str) -> dict[str, Any]:
    """The packaged files load and predict with every modality missing but one, on the backend served."""
    from mmcore.serving.runtime import load_predictor

    out = load_predictor(model_path, backend).predict([{"note": "corner crushed, box dented", "image": None,
                                                        "sensor": None}])
    return {"label": out[0]["label"], "ok": abs(sum(out[0]["probabilities"].values()) - 1) < 1e-4}


def shipping_data(raw: Path, splits: Path, n_images: int) -> tuple[list[bytes], Any, Any]:
    """Training-split images for int8 calibration, the validation split to choose int8 encoders on and
    the gate set to check the choice on; nothing without data."""
    if not (raw.is_dir() and splits.is_file()):
        return [], None, None
    import numpy as np

    from mmcore.config import CLASSES
    from mmcore.stages.common import split_records
    from mmcore.stages.evaluate import gate_set

    train, _ = split_records(raw, splits, "train")
    images = [r["image"] for r in train if r.get("image") is not None]
    pick = np.random.default_rng(0).permutation(len(images))[:n_images]
    val, labels = split_records(raw, splits, "val")
    gate = gate_set(raw, splits)
    return ([images[i] for i in sorted(pick)], (val, np.array([CLASSES.index(x) for x in labels])) if val else None,
            (gate.records, np.asarray(gate.y)) if len(gate.y) else None)


def ship_model(model_dir: Path, serve: Any, raw: Path, splits: Path, cache: Path) -> dict[str, Any]:
    """Export the champion to ONNX, with int8 only where the gate set allows (mmcore.serving.shipping)."""
    from mmcore.serving.shipping import prepare

    calibration, val, gate = shipping_data(raw, splits, serve.calibration_images)
    return prepare(model_dir, serve, calibration, val, gate, cache)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the bento of the current champion.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--bentofile", default="bentofile.yaml")
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--splits", type=Path, default=Path("data/split/splits.parquet"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache"), help="reuses the training cache's encoder export")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("BENTOML_HOME", str(Path.cwd() / ".bentoml"))
    p = load_params(args.params)
    from mmcore import registry

    registry.setup(p.registry.experiment)
    version = registry.alias_version(p.registry.model_name, registry.CHAMPION)
    if version is None:
        write_json(args.out, {"bento": None, "reason": "no champion in the registry yet"})
        print("package: no champion yet, nothing to build")
        return 0
    import bentoml

    try:
        model = bentoml.models.get(f"{p.registry.model_name}:v{version}")
    except bentoml.exceptions.NotFound:
        model_dir = registry.download_model_dir(p.registry.model_name, version)
        ship_model(model_dir, p.serve, args.raw, args.splits, args.cache)
        model = import_model(model_dir, p.registry.model_name, version)
    from mmcore.serving.runtime import exported, resolve_backend

    runtime = exported(Path(model.path))
    backend = resolve_backend(Path(model.path), p.serve.backend)
    smoke = smoke_test(model.path, backend)
    os.environ["PARCEL_MODEL_TAG"] = str(model.tag)
    try:
        bento = bentoml.bentos.get(f"{p.registry.model_name}:v{version}")
    except bentoml.exceptions.NotFound:
        # args: the bento records its model tag, so it never serves whatever model is latest in the store
        bento = bentoml.bentos.build_bentofile(args.bentofile, build_ctx=".", name=p.registry.model_name,
                                               version=f"v{version}", labels={"model_version": version},
                                               args={"model_tag": str(model.tag), "backend": p.serve.backend})
    write_json(args.out, {"bento": str(bento.tag), "model": str(model.tag), "model_version": int(version),
                          "bentoml_home": os.environ["BENTOML_HOME"], "smoke_test": smoke,
                          "backend": backend, "runtime": runtime})
    int8 = runtime.get("int8_decision") or {}
    print(f"package: built bento {bento.tag} from champion version {version}, serving {backend}"
          f" (int8 {'kept' if int8.get('kept') else 'not kept'}: {int8.get('reason', 'no decision recorded')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
