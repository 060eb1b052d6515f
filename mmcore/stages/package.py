"""package stage: the champion from the registry into BentoML's model store, then a bento.

The bento store lives in the project (`.bentoml/`) unless BENTOML_HOME says otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
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


def training_images(raw: Path, splits: Path, n: int) -> list[bytes]:
    """The training-split images the train stage set the int8 activation ranges with (same pick)."""
    from mmcore.serving.int8 import calibration_images
    from mmcore.stages.common import split_records

    if not (raw.is_dir() and splits.is_file()):
        return []
    return calibration_images(split_records(raw, splits, "train")[0], n)


def ship_model(model_dir: Path, serve: Any, raw: Path, splits: Path, cache: Path) -> dict[str, Any]:
    """Export the champion to ONNX with the int8 graphs it was trained on (mmcore.serving.shipping)."""
    from mmcore.serving.shipping import prepare
    from mmcore.stages.int8_choice import model_int8

    return prepare(model_dir, model_int8(model_dir), lambda: training_images(raw, splits, serve.calibration_images),
                   cache)


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

    from mmcore.serving.shipping import ShipRefused

    try:
        model = bentoml.models.get(f"{p.registry.model_name}:v{version}")
    except bentoml.exceptions.NotFound:
        model_dir = registry.download_model_dir(p.registry.model_name, version)
        try:
            ship_model(model_dir, p.serve, args.raw, args.splits, args.cache)
        except ShipRefused as e:
            print(f"package: error: version {version} not packaged: {e}", file=sys.stderr)
            return 4
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
    print(f"package: built bento {bento.tag} from champion version {version}, serving {backend}"
          f" ({runtime.get('int8_reason', 'no int8 record')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
