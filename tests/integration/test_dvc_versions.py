"""Data versions with DVC: each ingest that changes data is a new version, pushed to the remote (a label
batch alone too); re-ingesting the same batches is no new version; an old commit restores its exact dataset."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from mmcore.config import load_params
from mmcore.synth.generate import generate_batch

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def sh(ws: Path, *cmd: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(list(cmd), cwd=ws, env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def git(ws: Path, *args: str) -> str:
    return sh(ws, "git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args)


def raw_md5(ws: Path) -> str:
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/raw")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def workspace(ws: Path, names: tuple[str, ...] = ("ingest",)) -> None:
    """A git + DVC workspace with these stages of the project's dvc.yaml, its params and mmcore."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": {n: stages[n] for n in names}}))
    shutil.copy(ROOT / "params.yaml", ws / "params.yaml")
    shutil.copytree(ROOT / "mmcore", ws / "mmcore", ignore=shutil.ignore_patterns("__pycache__"))
    (ws / ".gitignore").write_text("data/landing/\ndata/labels/*\n!data/labels/.gitkeep\n")
    (ws / "data" / "labels").mkdir(parents=True)   # a checkout has it: the tracked .gitkeep
    shutil.copy(ROOT / "data" / "labels" / ".gitkeep", ws / "data" / "labels" / ".gitkeep")
    git(ws, "init", "-q")
    sh(ws, str(BIN / "dvc"), "init", "-q")


def test_ingest_versions_push_and_restore(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    workspace(ws)
    sh(ws, str(BIN / "dvc"), "remote", "add", "-d", "store", str(tmp_path / "remote"))
    cfg = dataclasses.replace(load_params(ROOT / "params.yaml").synth, image_size=64)
    generate_batch(ws / "data" / "landing", "day-0", 20, cfg, seed=1)

    sh(ws, str(BIN / "dvc"), "repro", "ingest")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "data v1")
    first_commit, first_md5 = git(ws, "rev-parse", "HEAD").strip(), raw_md5(ws)
    first_table = digest(ws / "data" / "raw" / "records.parquet")
    sh(ws, str(BIN / "dvc"), "push")

    generate_batch(ws / "data" / "landing", "day-1", 20, cfg, seed=2)
    sh(ws, str(BIN / "dvc"), "repro", "ingest")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "data v2")
    assert raw_md5(ws) != first_md5
    sh(ws, str(BIN / "dvc"), "push")

    second_md5 = raw_md5(ws)
    rid = pd.read_parquet(ws / "data" / "raw" / "records.parquet")["record_id"].iloc[0]
    (ws / "data" / "labels" / "L1").mkdir()
    (ws / "data" / "labels" / "L1" / "labels.jsonl").write_text(json.dumps(
        {"record_id": rid, "label": "tampered", "labelled_at": "2026-12-01T00:00:00Z", "source": "claim"}) + "\n")
    (ws / "data" / "labels" / "L1" / "_SUCCESS").write_text("")
    sh(ws, str(BIN / "dvc"), "repro", "ingest")   # a label batch alone: a new data version
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "data v3: late labels")
    assert raw_md5(ws) not in (first_md5, second_md5)
    joined = pd.read_parquet(ws / "data" / "raw" / "records.parquet").set_index("record_id").loc[rid]
    assert (joined["label"], joined["label_source"]) == ("tampered", "claim")

    lock_before = (ws / "dvc.lock").read_text()
    out = sh(ws, str(BIN / "dvc"), "repro", "-f", "ingest")  # same batches ingested again
    assert (ws / "dvc.lock").read_text() == lock_before, out
    df = pd.read_parquet(ws / "data" / "raw" / "records.parquet")
    assert len(df) == 40 and df["record_id"].is_unique

    git(ws, "checkout", "-q", first_commit)
    shutil.rmtree(ws / "data" / "raw")
    shutil.rmtree(ws / ".dvc" / "cache")
    sh(ws, str(BIN / "dvc"), "pull", "data/raw")
    assert digest(ws / "data" / "raw" / "records.parquet") == first_table
    assert len(pd.read_parquet(ws / "data" / "raw" / "records.parquet")) == 20


def test_the_gate_set_survives_dvc_repro_of_split_and_a_back_dated_copy(tmp_path: Path) -> None:
    """The real split stage under `dvc repro`: its stored membership (data/split, `persist: true`) is
    read back on the next run, so a back-dated copy of a gate-set parcel under a shipment that hashes
    to train joins the gate set instead of moving the original out of it."""
    from mmcore.data.split import assign

    ws = tmp_path / "ws"
    ws.mkdir()
    workspace(ws, ("ingest", "split"))
    spec = yaml.safe_load((ws / "dvc.yaml").read_text())
    spec["stages"]["split"]["deps"].remove("reports/validation.json")   # no validate stage in this workspace
    (ws / "dvc.yaml").write_text(yaml.safe_dump(spec))
    params = load_params(ws / "params.yaml")
    landing = generate_batch(ws / "data" / "landing", "day-0", 30,
                             dataclasses.replace(params.synth, image_size=64), seed=3)
    sh(ws, str(BIN / "dvc"), "repro", "split")
    splits = pd.read_parquet(ws / "data" / "split" / "splits.parquet").set_index("record_id")
    gate = splits.index[splits["split"] == "test"][0]

    rec = next(r for r in map(json.loads, (landing / "records.jsonl").read_text().splitlines())
               if r["record_id"] == gate)
    train_ship = next(f"copy-{i}" for i in range(1000) if assign(f"copy-{i}", params.split) == "train")
    copy_dir = ws / "data" / "landing" / "day-1"
    for rel in (rec["image"], rec["sensor"]):
        if rel:
            (copy_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(landing / rel, copy_dir / rel)
    copy = {**rec, "record_id": "back-dated", "shipment_id": train_ship, "captured_at": "2025-01-01T00:00:00+00:00"}
    (copy_dir / "records.jsonl").write_text(json.dumps(copy) + "\n")
    (copy_dir / "_SUCCESS").write_text("")
    sh(ws, str(BIN / "dvc"), "repro", "split")

    after = pd.read_parquet(ws / "data" / "split" / "splits.parquet").set_index("record_id")["split"]
    assert (after[gate], after["back-dated"]) == ("test", "test")
    assert json.loads((ws / "reports" / "split.json").read_text())["membership"] == "kept"
    assert (after.drop("back-dated") == splits["split"]).all()           # nobody else moved either
