"""MLflow tracking and registry: where every model came from, and which one is champion.

Tracking defaults to a SQLite store in the project (`mlflow.db`, artifacts in
`mlartifacts/`); `MLFLOW_TRACKING_URI` points it at a server instead.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")
CHAMPION = "champion"
CHALLENGER = "challenger"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def setup(experiment: str) -> str:
    """Point MLflow at the project store and make sure the experiment exists; returns its id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None if "MLFLOW_TRACKING_URI" in os.environ else (Path.cwd() / "mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    return mlflow.set_experiment(experiment).experiment_id


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_model(model_dir: Path, model_name: str) -> str:
    """Log the model directory as a pyfunc (models from code) and register it; returns the version."""
    import mlflow

    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(PYFUNC_FILE), artifacts={"model_dir": str(model_dir)},
        registered_model_name=model_name, pip_requirements=["mmcore", "torch", "transformers"])
    version = str(info.registered_model_version)
    client().set_registered_model_alias(model_name, CHALLENGER, version)
    return version


def alias_version(model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def download_model_dir(model_name: str, version: str, dst: Path | None = None) -> Path:
    """The mmcore model directory (safetensors + JSON) of a registered version."""
    import mlflow

    dst = Path(dst or tempfile.mkdtemp(prefix="model-"))
    path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}",
                                               dst_path=str(dst), tracking_uri=tracking_uri())
    found = sorted((Path(path) / "artifacts").glob("*/config.json"))
    if not found:
        raise FileNotFoundError(f"version {version} of {model_name} holds no mmcore model directory")
    return found[0].parent


def promote(model_name: str, version: str) -> None:
    """The single commit point of a release: move the champion alias."""
    c = client()
    c.set_registered_model_alias(model_name, CHAMPION, version)
    c.set_model_version_tag(model_name, version, "gate", "promoted")


def run_of(model_name: str, version: str) -> str:
    return client().get_model_version(model_name, version).run_id


# Reference data for drift checks: the profile rows a model version was trained on,
# stored in that version's training run so "the champion's data" needs no other store.
REFERENCE_DIR, REFERENCE_FILE = "reference", "profile.parquet"
REFERENCE_DROP = ("note",)  # free text: drift never reads it, and it keeps notes out of MLflow


def log_reference(profile: pd.DataFrame) -> None:
    """Log training profile rows as `reference/profile.parquet` of the active MLflow run."""
    import mlflow

    keep = [c for c in profile.columns if c not in REFERENCE_DROP]
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        path = Path(tmp) / REFERENCE_FILE
        profile[keep].to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=REFERENCE_DIR)


def champion_reference(model_name: str) -> pd.DataFrame | None:
    """Profile rows the champion was trained on, or None.

    None when there is no champion yet or its run logged no reference (models trained
    before drift reports existed). The frame's `attrs["source"]` names model, version
    and run, so the drift report can say what it compared against.
    """
    import mlflow
    import pandas as pd

    version = alias_version(model_name, CHAMPION)
    if version is None:
        return None
    run_id = run_of(model_name, version)
    if REFERENCE_FILE not in {Path(a.path).name for a in client().list_artifacts(run_id, REFERENCE_DIR)}:
        return None
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{REFERENCE_DIR}/{REFERENCE_FILE}", dst_path=tmp,
            tracking_uri=tracking_uri())
        frame = pd.read_parquet(path)
    frame.attrs["source"] = {"model": model_name, "alias": CHAMPION, "version": version,
                             "run_id": run_id, "rows": int(len(frame))}
    return frame


# Operations on the registry: rollback moves the champion alias back, lineage says where a
# served version came from. Both run as `python -m mmcore.registry {rollback,lineage} --version N`.
LINEAGE_TAGS = ("data_version", "git_commit", "params_hash")


def model_version(model_name: str, version: int | str) -> Any:
    """The registered version, or ValueError naming the versions that do exist."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        return c.get_model_version(model_name, str(version))
    except MlflowException:
        try:
            known = sorted(int(v.version) for v in c.search_model_versions(f"name='{model_name}'"))
        except MlflowException:
            known = []
        raise ValueError(f"model {model_name!r} has no version {version}; registered versions: "
                         f"{', '.join(map(str, known)) or 'none'}") from None


def rollback(model_name: str, version: int | str) -> str | None:
    """Move `champion` back to an existing version (the same single commit point as a promotion).

    Returns the previous champion. Both versions are tagged, so the registry records the rollback."""
    target = str(model_version(model_name, version).version)
    previous = alias_version(model_name, CHAMPION)
    c = client()
    c.set_registered_model_alias(model_name, CHAMPION, target)
    c.set_model_version_tag(model_name, target, "rollback_from", str(previous))
    if previous is not None and previous != target:
        c.set_model_version_tag(model_name, previous, "rolled_back_to", target)
    return previous


def lineage(model_name: str, version: int | str) -> dict[str, Any]:
    """Data version, git commit, params hash, params and metrics of the run that produced a version."""
    mv = model_version(model_name, version)
    run = client().get_run(mv.run_id)
    tags = {k: mv.tags.get(k) or run.data.tags.get(k) or "unknown" for k in LINEAGE_TAGS}
    return {"model": model_name, "version": int(mv.version), "aliases": sorted(mv.aliases or []),
            "run_id": mv.run_id, **tags, "gate": mv.tags.get("gate"),
            "params": dict(sorted(run.data.params.items())), "metrics": dict(sorted(run.data.metrics.items()))}


def format_lineage(info: dict[str, Any]) -> str:
    head = [f"{info['model']} version {info['version']}"
            + (f" (aliases: {', '.join(info['aliases'])})" if info["aliases"] else ""),
            *(f"  {k}: {info[k]}" for k in ("run_id", *LINEAGE_TAGS, "gate"))]
    params = ["params:", *(f"  {k} = {v}" for k, v in info["params"].items())]
    metrics = ["metrics (last value):", *(f"  {k} = {v:.6g}" for k, v in info["metrics"].items())]
    return "\n".join(head + params + metrics)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(prog="python -m mmcore.registry", description="Registry operations.")
    ap.add_argument("--params", default="params.yaml", help="read registry.model_name from here")
    ap.add_argument("--model", help="registered model name (default: registry.model_name in params)")
    sub = ap.add_subparsers(dest="command", required=True)
    rb = sub.add_parser("rollback", help="move the champion alias back to an existing version")
    rb.add_argument("--version", type=int, required=True)
    ln = sub.add_parser("lineage", help="data version, commit, params and metrics of a model version")
    which = ln.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help="the model_version a prediction carries")
    which.add_argument("--alias", help="e.g. champion")
    ln.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    name = args.model
    if name is None:
        from mmcore.config import load_params

        name = load_params(args.params).registry.model_name
    try:
        if args.command == "rollback":
            previous = rollback(name, args.version)
            print(f"champion of {name}: version {previous} -> {args.version}. Rebuild the bento to serve it: "
                  "python -m mmcore.stages.package --out reports/package.json")
            return 0
        version = args.version if args.alias is None else alias_version(name, args.alias)
        if version is None:
            raise ValueError(f"model {name!r} has no alias {args.alias!r}")
        info = lineage(name, version)
        print(json.dumps(info, indent=2) if args.json else format_lineage(info))
        return 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
