"""Ingest's line checks through prefect-dask (`ingest.executor: dask`) give the same dataset of
record as the local process pool; the chunks run as Prefect task runs on the cluster's workers,
and a local cluster is started for the run when no scheduler address is given."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import distributed
import pandas as pd
import pytest
from distributed import Client, LocalCluster, get_task_stream

from mmcore.config import load_params
from mmcore.data.ingest import ingest
from mmcore.synth.generate import generate_batch
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("landing")
    cfg = dataclasses.replace(load_params(ROOT / "params.yaml").synth, image_size=48)
    generate_batch(root, "b0", 300, cfg, seed=1, workers=1)   # 3 chunks of 128 lines
    bad = generate_batch(root, "b1", 40, cfg, seed=2, workers=1)
    lines = (bad / "records.jsonl").read_text().splitlines()
    (bad / "records.jsonl").write_text("\n".join(["{not json"] + lines[1:]) + "\n")
    broken = generate_batch(root, "b2", 4, cfg, seed=3, workers=1)     # held back whole, then redelivered
    shutil.copytree(broken, root / "b3")
    lines = (broken / "records.jsonl").read_text().splitlines()
    (broken / "records.jsonl").write_text("\n".join(["{not json", "{not json"] + lines[2:]) + "\n")
    return root


@pytest.fixture(scope="module")
def pool_run(landing: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("pool")
    base = load_params(ROOT / "params.yaml").ingest
    return ingest(landing, out / "raw", out / "q", base, workers=2), out


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """A Prefect server on a temporary database for this module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def clusters_started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every LocalCluster that DaskTaskRunner starts."""
    started: list[dict[str, Any]] = []

    class Recording(LocalCluster):
        def __init__(self, **kwargs: Any) -> None:
            started.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", Recording)
    return started


def dask_cfg(address: str) -> Any:
    return dataclasses.replace(load_params(ROOT / "params.yaml").ingest, executor="dask", dask_address=address)


def assert_same_as_pool(summary: dict[str, Any], out: Path, pool_run: tuple[dict[str, Any], Path]) -> None:
    local, pool_out = pool_run
    assert summary == local and summary["landed"] == 348
    assert summary["by_reason"] == {"bad_json": 3, "batch_rejected": 2}
    assert (summary["batches"]["b2"]["status"], summary["batches"]["b3"]["accepted"]) == ("rejected", 4)
    assert json.dumps(summary["batches"], sort_keys=True) == json.dumps(local["batches"], sort_keys=True)
    pd.testing.assert_frame_equal(pd.read_parquet(pool_out / "raw" / "records.parquet"),
                                  pd.read_parquet(out / "raw" / "records.parquet"))
    assert (pool_out / "q" / "records.jsonl").read_text() == (out / "q" / "records.jsonl").read_text()


def chunk_task_runs(timeout: float = 60) -> list[Any]:
    """The task runs of the latest `ingest-on-dask` flow run, once the server has recorded all three."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest-on-dask"])),
                                    sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        assert run.state_type.value == "COMPLETED"
        deadline = time.monotonic() + timeout
        while True:
            found = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            if len(found) >= 3 and all(t.state_type and t.state_type.value == "COMPLETED" for t in found):
                return found
            assert time.monotonic() < deadline, f"task runs recorded: {[(t.name, t.state_type) for t in found]}"
            time.sleep(0.5)


def test_chunks_run_as_prefect_tasks_on_the_scheduler_at_dask_address(
        landing: Path, pool_run: tuple[dict[str, Any], Path], prefect_api: None,
        clusters_started: list[dict[str, Any]], tmp_path: Path) -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        with get_task_stream(client) as stream:
            summary = ingest(landing, tmp_path / "raw", tmp_path / "q", dask_cfg(cluster.scheduler_address))
        on_dask = [t for t in stream.data if "check_chunk" in str(t["key"])]
        workers = set(cluster.scheduler_info["workers"])
    assert_same_as_pool(summary, tmp_path, pool_run)
    assert clusters_started == []                      # connected to the running scheduler, none started
    assert len(on_dask) == 3 and {t["worker"] for t in on_dask} <= workers   # b1 (one chunk) is checked in the flow
    runs = chunk_task_runs()
    assert len(runs) == 3 and all(t.name.startswith("check_chunk") for t in runs)


def test_a_local_cluster_is_started_when_no_address_is_given(
        landing: Path, pool_run: tuple[dict[str, Any], Path], prefect_api: None,
        clusters_started: list[dict[str, Any]], tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):   # no API configured, as in a bare `dvc repro`
        summary = ingest(landing, tmp_path / "raw", tmp_path / "q", dask_cfg(""), workers=2)
    assert_same_as_pool(summary, tmp_path, pool_run)
    assert [(c["n_workers"], c["threads_per_worker"]) for c in clusters_started] == [(2, 1)]
    runs = chunk_task_runs()
    assert len(runs) == 3 and all(t.name.startswith("check_chunk") for t in runs)


def test_an_unknown_executor_fails_at_load_time() -> None:
    with pytest.raises(ValueError, match="executor"):
        dataclasses.replace(load_params(ROOT / "params.yaml").ingest, executor="spark")
