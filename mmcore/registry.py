"""MLflow tracking and registry: where every model came from, and which one is champion.

Tracking defaults to a SQLite store in the project (`mlflow.db`, WAL journal, artifacts in
`mlartifacts/`); `MLFLOW_TRACKING_URI` points it at a server instead. A server that does not
answer is retried by MLflow itself (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `..._BACKOFF_FACTOR`,
`..._TIMEOUT`); when it gives up, `reachable` turns the error into one line saying what to do.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import pandas as pd

PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")
CHAMPION = "champion"
CHALLENGER = "challenger"
LOCAL_STORE = "mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / LOCAL_STORE}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for servers and in-memory stores)."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):].split("?")[0]) if uri.startswith(prefix) and len(uri) > len(prefix) else None


def enable_wal(uri: str) -> str | None:
    """Put a SQLite store in WAL mode (it persists in the file); returns the journal mode.

    In WAL a reader (evaluate downloading the champion, a lineage query) never blocks the
    writer, and a writer waits on another writer instead of failing; MLflow's own sessions
    set a busy timeout."""
    path = sqlite_file(uri)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as con:
        return str(con.execute("PRAGMA journal_mode=WAL").fetchone()[0])


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer after MLflow's retries."""


_CONNECTION_MARKERS = ("Max retries exceeded", "Failed to establish a new connection", "Connection refused",
                       "timeout exception", "Connection aborted", "RemoteDisconnected")


def _is_connection_error(e: BaseException) -> bool:
    import requests

    return (isinstance(e.__cause__ or e.__context__, requests.exceptions.ConnectionError)
            or any(m in str(e) for m in _CONNECTION_MARKERS))


def unreachable_message(uri: str, consequence: str) -> str:
    from mlflow.environment_variables import (MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES,
                                              MLFLOW_HTTP_REQUEST_TIMEOUT)

    return (f"the MLflow tracking server at {uri} is unreachable (gave up after "
            f"{MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} retries, backoff factor {MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()}"
            f" s, timeout {MLFLOW_HTTP_REQUEST_TIMEOUT.get()} s; set MLFLOW_HTTP_REQUEST_MAX_RETRIES and "
            f"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR to wait longer). {consequence}. Start the server "
            f"(mlflow server --backend-store-uri sqlite:///mlflow-server.db --host 127.0.0.1 --port 5000) or set "
            f"MLFLOW_TRACKING_URI to one that answers; unset, the project uses its local store "
            f"sqlite:///{Path.cwd() / LOCAL_STORE}.")


@contextlib.contextmanager
def reachable(consequence: str) -> Iterator[None]:
    """Raise TrackingUnavailable (the URI, what it means for the registry, what to do) when MLflow
    gives up on the server; `consequence` says what the interrupted step did or did not change."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        if not _is_connection_error(e):
            raise
        raise TrackingUnavailable(unreachable_message(tracking_uri(), consequence)) from e


def setup(experiment: str) -> str:
    """Point MLflow at the project store and make sure the experiment exists; returns its id."""
    import mlflow

    uri = tracking_uri()
    enable_wal(uri)
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri exports MLFLOW_TRACKING_URI, so the store kind is read from the URI:
    # a SQLite store keeps artifacts next to its file, a server uses its own artifact root
    db = sqlite_file(uri)
    with reachable("Nothing was logged and the champion alias was not changed"):
        if mlflow.get_experiment_by_name(experiment) is None:
            location = (db.parent / "mlartifacts").as_uri() if db is not None else None
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


# The pyfunc's contract: one row per record, any modality may be null. `sensor` is a JSON object
# of channel arrays (as the service takes it), so the example and `mlflow models predict` input
# stay plain JSON: nothing is pickled.
SENSOR_COLUMNS = ("t_s", "temperature_c", "humidity_pct", "shock_g", "light_lux")


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from mmcore.config import CLASSES

    inputs = Schema([ColSpec("string", "note", required=False), ColSpec("string", "image", required=False),
                     ColSpec("string", "sensor", required=False)])
    outputs = Schema([ColSpec("string", "label"), *(ColSpec("double", c) for c in CLASSES),
                      ColSpec("string", "decision"), ColSpec("string", "prediction_set"),
                      ColSpec("string", "review_reason")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    """Two records: all three modalities, and a note alone. Saved as JSON with the model."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (150, 110, 70)).save(buf, format="JPEG")
    t = np.arange(40) * 60.0
    sensor = dict(zip(SENSOR_COLUMNS, [t.tolist(), (4 + 0.1 * np.sin(t / 600)).round(3).tolist(),
                                       [55.0] * 40, [0.2] * 40, [0.0] * 40]))
    return pd.DataFrame({"note": ["outer carton crushed at one corner", "box arrived wet"],
                         "image": [base64.b64encode(buf.getvalue()).decode(), None],
                         "sensor": [json.dumps(sensor), None]})


def log_model(model_dir: Path, model_name: str, artifact: str = "model") -> str:
    """Log the model directory as a pyfunc (models from code, with signature and a JSON input
    example) and register it as the challenger; returns the version."""
    import mlflow

    info = mlflow.pyfunc.log_model(
        name=artifact, python_model=str(PYFUNC_FILE), artifacts={"model_dir": str(model_dir)},
        signature=signature(), input_example=input_example(),
        registered_model_name=model_name, pip_requirements=["mmcore", "torch", "transformers"])
    version = str(info.registered_model_version)
    c = client()
    run = mlflow.active_run()
    commit = (c.get_run(run.info.run_id).data.tags.get("git_commit") if run else None) or git_commit()
    c.set_model_version_tag(model_name, version, "git_commit", commit)
    c.set_registered_model_alias(model_name, CHALLENGER, version)
    return version


def alias_version(model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(model_name, alias).version)
    except MlflowException as e:
        if _is_connection_error(e):
            raise
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


def tag_verdict(model_name: str, version: str, promoted: bool, failed: list[str], verdict: str | None = None) -> None:
    """The gate's verdict on the version itself, so lineage shows it next to the data and commit.

    `verdict` "inconclusive": not proven better, not shown worse; the version stays a candidate."""
    c = client()
    c.set_model_version_tag(model_name, version, "gate", verdict or ("promoted" if promoted else "rejected"))
    c.set_model_version_tag(model_name, version, "gate_failed", ",".join(failed)[:4000] or "none")


BEST_SEEN = "gate_best_seen"   # registered-model tag: JSON {fingerprint, macro_f1, version} of one gate set


def best_seen(model_name: str, fingerprint: str) -> dict[str, Any] | None:
    """The best macro-F1 any scored version reached on this gate set (None: none recorded for it)."""
    from mlflow.exceptions import MlflowException

    try:
        raw = client().get_registered_model(model_name).tags.get(BEST_SEEN)
    except MlflowException as e:
        if _is_connection_error(e):
            raise
        return None
    info = json.loads(raw) if raw else None
    return info if info and info.get("fingerprint") == fingerprint else None


def record_best_seen(model_name: str, fingerprint: str, scored: dict[str, float]) -> dict[str, Any]:
    """Keep the best of the recorded score and the versions just scored (`{version: macro_F1}`) on this gate set."""
    best = best_seen(model_name, fingerprint) or {"fingerprint": fingerprint, "macro_f1": float("-inf")}
    for version, f1 in scored.items():
        if f1 is not None and f1 > best["macro_f1"]:
            best = {"fingerprint": fingerprint, "macro_f1": float(f1), "version": str(version)}
    if "version" in best:
        client().set_registered_model_tag(model_name, BEST_SEEN, json.dumps(best))
    return best


@contextlib.contextmanager
def promotion_lock(timeout_s: float = 300.0) -> Iterator[Path | None]:
    """Serialise gates on one SQLite store: read the champion, decide, move the alias, as one step.

    The lock is a file beside the database (flock, released when the process dies). A tracking
    server offers no compare-and-set on aliases, so there the gate's re-check of the champion
    just before the switch is the guard, and retrain runs on one registry must not overlap
    (the Prefect deployment runs one at a time)."""
    path = sqlite_file(tracking_uri())
    if path is None:
        yield None
        return
    import fcntl

    lock = path.with_name(path.name + ".promote.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another gate has held {lock} for over {timeout_s:.0f} s") from None
                time.sleep(0.05)
        try:
            yield lock
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_of(model_name: str, version: str) -> str:
    return client().get_model_version(model_name, version).run_id


# Reference data for drift checks: the profile rows a model version was trained on,
# stored in that version's training run so "the champion's data" needs no other store.
REFERENCE_DIR, REFERENCE_FILE, FIT_FILE = "reference", "profile.parquet", "fit_records.parquet"
REFERENCE_DROP = ("note",)  # free text: drift never reads it, and it keeps notes out of MLflow


def log_reference(profile: pd.DataFrame, name: str = REFERENCE_FILE) -> None:
    """Log rows as `reference/<name>` of the active MLflow run (training profile rows by default)."""
    import mlflow

    keep = [c for c in profile.columns if c not in REFERENCE_DROP]
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        path = Path(tmp) / name
        profile[keep].to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=REFERENCE_DIR)


def run_frame(run_id: str, name: str) -> pd.DataFrame | None:
    """`reference/<name>` of a run, or None when the run logged none."""
    import mlflow
    import pandas as pd

    if name not in {Path(a.path).name for a in client().list_artifacts(run_id, REFERENCE_DIR)}:
        return None
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{REFERENCE_DIR}/{name}",
                                                   dst_path=tmp, tracking_uri=tracking_uri())
        return pd.read_parquet(path)


def champion_reference(model_name: str) -> pd.DataFrame | None:
    """Profile rows the champion was trained on, or None.

    None when there is no champion yet or its run logged no reference (models trained
    before drift reports existed). The frame's `attrs["source"]` names model, version
    and run, so the drift report can say what it compared against.
    """
    version = alias_version(model_name, CHAMPION)
    if version is None:
        return None
    run_id = run_of(model_name, version)
    frame = run_frame(run_id, REFERENCE_FILE)
    if frame is not None:
        frame.attrs["source"] = {"model": model_name, "alias": CHAMPION, "version": version,
                                 "run_id": run_id, "rows": int(len(frame))}
    return frame


def fitted_records(model_name: str, version: str) -> tuple[pd.DataFrame | None, str]:
    """Keys of the records a version was trained and early-stopped on (mmcore.leak), and where they came from.

    Versions trained before these keys were logged fall back to their drift reference (training rows)."""
    run_id = run_of(model_name, version)
    frame = run_frame(run_id, FIT_FILE)
    if frame is not None:
        return frame, f"{REFERENCE_DIR}/{FIT_FILE} of run {run_id}"
    return run_frame(run_id, REFERENCE_FILE), f"{REFERENCE_DIR}/{REFERENCE_FILE} of run {run_id} (train rows only)"


# Operations on the registry: rollback moves the champion alias back, lineage says where a
# served version came from. Both run as `python -m mmcore.registry {rollback,lineage} --version N`.
LINEAGE_TAGS = ("data_version", "git_commit", "params_hash")


def model_version(model_name: str, version: int | str) -> Any:
    """The registered version, or ValueError naming the versions that do exist."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        return c.get_model_version(model_name, str(version))
    except MlflowException as e:
        if _is_connection_error(e):
            raise
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


def retire(model_name: str) -> str | None:
    """Remove the `champion` alias on purpose (a new gate set): the next model is judged on the floors alone."""
    previous = alias_version(model_name, CHAMPION)
    if previous is not None:
        client().delete_registered_model_alias(model_name, CHAMPION)
        client().set_model_version_tag(model_name, previous, "retired", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()))
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


def _run(args: Any, name: str) -> int:
    import json

    if args.command == "rollback":
        previous = rollback(name, args.version)
        print(f"champion of {name}: version {previous} -> {args.version}. Rebuild the bento to serve it: "
              "python -m mmcore.stages.package --out reports/package.json")
        return 0
    if args.command == "retire":
        previous = retire(name)
        print(f"{name}: champion alias removed (was version {previous}); the next gate judges its challenger "
              "on the floors alone" if previous else f"{name} has no champion; nothing changed")
        return 0
    version = args.version if args.alias is None else alias_version(name, args.alias)
    if version is None:
        raise ValueError(f"model {name!r} has no alias {args.alias!r}")
    info = lineage(name, version)
    print(json.dumps(info, indent=2) if args.json else format_lineage(info))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m mmcore.registry", description="Registry operations.")
    ap.add_argument("--params", default="params.yaml", help="read registry.model_name from here")
    ap.add_argument("--model", help="registered model name (default: registry.model_name in params)")
    sub = ap.add_subparsers(dest="command", required=True)
    rb = sub.add_parser("rollback", help="move the champion alias back to an existing version")
    rb.add_argument("--version", type=int, required=True)
    sub.add_parser("retire", help="remove the champion alias (before starting a new gate set on purpose)")
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
        with reachable("Nothing was changed"):
            return _run(args, name)
    except (ValueError, TrackingUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3 if isinstance(e, TrackingUnavailable) else 2


if __name__ == "__main__":
    raise SystemExit(main())
