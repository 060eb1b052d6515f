"""Ingest's line checks on a Dask cluster (`ingest.executor: dask`) give the same dataset of
record as the local process pool, and the chunks really run on the cluster's workers."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from mmcore.config import load_params
from mmcore.data.ingest import ingest
from mmcore.data.synth import generate_batch
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("landing")
    cfg = dataclasses.replace(load_params(ROOT / "params.yaml").synth, image_size=48)
    generate_batch(root, "b0", 300, cfg, seed=1, workers=1)   # 3 chunks of 128 lines
    bad = generate_batch(root, "b1", 40, cfg, seed=2, workers=1)
    lines = (bad / "records.jsonl").read_text().splitlines()
    (bad / "records.jsonl").write_text("\n".join(["{not json"] + lines[1:]) + "\n")
    return root


def test_dask_executor_matches_the_process_pool(landing: Path, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    base = load_params(ROOT / "params.yaml").ingest
    local = ingest(landing, tmp_path / "raw-pool", tmp_path / "q-pool", base, workers=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        cfg = dataclasses.replace(base, executor="dask", dask_address=cluster.scheduler_address)
        with get_task_stream(client) as stream:
            on_dask = ingest(landing, tmp_path / "raw-dask", tmp_path / "q-dask", cfg)
        chunks = [t for t in stream.data if "check_chunk" in t["key"]]
        workers = {t["worker"] for t in chunks}
    assert on_dask == local and on_dask["landed"] == 340 and on_dask["by_reason"] == {"bad_json": 1}
    assert len(chunks) == 3 and len(workers) >= 1   # b0's three chunks; b1 (one chunk) is checked in-process
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "raw-pool" / "records.parquet"),
                                  pd.read_parquet(tmp_path / "raw-dask" / "records.parquet"))
    assert (tmp_path / "q-pool" / "records.jsonl").read_text() == (tmp_path / "q-dask" / "records.jsonl").read_text()
    assert json.dumps(on_dask["batches"], sort_keys=True) == json.dumps(local["batches"], sort_keys=True)


def test_a_local_cluster_is_started_when_no_address_is_given(landing: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(load_params(ROOT / "params.yaml").ingest, executor="dask", dask_address="")
    out = ingest(landing, tmp_path / "raw", tmp_path / "q", cfg, workers=2)
    assert out["landed"] == out["accepted"] + out["quarantined"] == 340


def test_an_unknown_executor_fails_at_load_time() -> None:
    with pytest.raises(ValueError, match="executor"):
        dataclasses.replace(load_params(ROOT / "params.yaml").ingest, executor="spark")
