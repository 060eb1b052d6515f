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


def smoke_test(model_path: str) -> dict[str, Any]:
    """The packaged files load and predict with every modality missing but one."""
    from mmcore.predict import load_model

    out = load_model(model_path).predict([{"note": "corner crushed, box dented", "image": None, "sensor": None}])
    return {"label": out[0]["label"], "ok": abs(sum(out[0]["probabilities"].values()) - 1) < 1e-4}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the bento of the current champion.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--bentofile", default="bentofile.yaml")
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

    model = import_model(registry.download_model_dir(p.registry.model_name, version),
                         p.registry.model_name, version)
    smoke = smoke_test(model.path)
    os.environ["PARCEL_MODEL_TAG"] = str(model.tag)
    try:
        bento = bentoml.bentos.get(f"{p.registry.model_name}:v{version}")
    except bentoml.exceptions.NotFound:
        # args: the bento records its model tag, so it never serves whatever model is latest in the store
        bento = bentoml.bentos.build_bentofile(args.bentofile, build_ctx=".", name=p.registry.model_name,
                                               version=f"v{version}", labels={"model_version": version},
                                               args={"model_tag": str(model.tag)})
    write_json(args.out, {"bento": str(bento.tag), "model": str(model.tag), "model_version": int(version),
                          "bentoml_home": os.environ["BENTOML_HOME"], "smoke_test": smoke})
    print(f"package: built bento {bento.tag} from champion version {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
