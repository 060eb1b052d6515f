"""ingest's line checks on a Dask cluster through prefect-dask (`ingest.executor: dask`).

One flow run, `ingest-on-dask`, with a `DaskTaskRunner`: each batch's `check_chunk` shards
become Prefect task runs on the cluster's workers; duplicates are still resolved in line
order in the flow. Imported only on that path, so the process pool never loads Prefect.
"""
from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Callable, Iterable

from prefect import flow, task
from prefect.context import get_run_context
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from mmcore.config import IngestConfig
from mmcore.data.batch import BatchResult, ingest_batch
from mmcore.progress import progress


class PrefectTasks(Executor):
    """`map` as Prefect task runs on the running flow's task runner; results stay in memory."""

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> list[Any]:
        futures = task(fn, persist_result=False).map(*iterables)
        return [f.result(timeout=timeout) for f in futures]


@flow(name="ingest-on-dask", persist_result=False, validate_parameters=False)
def ingest_on_dask(batches: list[Path], cfg: IngestConfig) -> list[BatchResult]:
    seen: set[str] = set()
    # workers report to this flow's API, not to a temporary server each when none is configured
    with temporary_settings(updates={PREFECT_API_URL: str(get_run_context().client.api_url)}):
        return [ingest_batch(b, cfg, seen, PrefectTasks())
                for b in progress(batches, desc="ingest", unit="batch", every_s=0)]


def dask_runner(cfg: IngestConfig, workers: int) -> DaskTaskRunner:
    """The scheduler at `ingest.dask_address`, or a local cluster of `workers` processes for the run."""
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "dashboard_address": None})


def check_on_dask(batches: list[Path], cfg: IngestConfig, workers: int) -> list[BatchResult]:
    return ingest_on_dask.with_options(task_runner=dask_runner(cfg, workers))(batches, cfg)
