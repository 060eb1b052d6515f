"""ingest: landing batches into the dataset of record, `data/raw/` (DESIGN §3.1).

Accepted records become rows of `records.parquet` (normalised fields plus the
profile that validation checks); image bytes and sensor arrays go into a few
Parquet shards, never one file per record. Every rejected record is kept in the
quarantine with its reason, and `landed == accepted + quarantined` is checked
before anything is written. Late labels from the label feed are joined onto the
accepted records by mmcore/monitor/labels.py, with the same accounting
(`landed == joined + quarantined`) and a label audit table beside the records.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmcore.config import IngestConfig, load_params
from mmcore.data.batch import Accepted, BatchResult, ingest_batch
from mmcore.monitor.labels import LabelJoin, audit_frame, join_labels, read_label_batches
from mmcore.progress import progress
from mmcore.schema import PROFILE_COLUMNS, SENSOR_HEADER


def ready_batches(landing: Path) -> list[Path]:
    """Batches the producer has finished (`_SUCCESS` written last), in name order."""
    if not landing.is_dir():
        return []
    return sorted(p for p in landing.iterdir() if p.is_dir() and (p / "_SUCCESS").is_file())


def write_atomic(path: Path, writer: Callable[[Path], None]) -> None:
    """Write to a temp file beside the target, then rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def list_column(values: list[Any]) -> pa.Array:
    """float32 arrays (or None) to an Arrow list column without a detour through Python lists."""
    lengths = np.array([0 if v is None else len(v) for v in values], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
                       mask=np.array([v is None for v in values] + [False]) if any(v is None for v in values) else None)
    flat = [v for v in values if v is not None]
    data = pa.array(np.concatenate(flat).astype(np.float32) if flat else np.zeros(0, np.float32))
    return pa.ListArray.from_arrays(offsets, data)


def write_shards(accepted: list[Accepted], shard_dir: Path, shard_size: int) -> list[str]:
    names = []
    for start in range(0, len(accepted), shard_size):
        chunk = accepted[start:start + shard_size]
        name = f"part-{start // shard_size:05d}.parquet"
        cols: dict[str, Any] = {"record_id": pa.array([a.row["record_id"] for a in chunk], pa.string()),
                                "image": pa.array([a.image for a in chunk], pa.binary())}
        for i, ch in enumerate(SENSOR_HEADER):
            cols[ch] = list_column([None if a.sensor is None else a.sensor[:, i] for a in chunk])
        table = pa.table(cols)
        write_atomic(shard_dir / name, lambda p, t=table: pq.write_table(t, p))
        for a in chunk:
            a.row["shard"] = name
        names.append(name)
    return names


def add_unk_share(df: pd.DataFrame, tokenizer: Any) -> pd.DataFrame:
    """Share of [UNK] tokens per note: shows when the text encoder cannot read a language."""
    def share(note: Any) -> float:
        if not isinstance(note, str) or not note:
            return 0.0
        ids = tokenizer(note, add_special_tokens=False)["input_ids"]
        return sum(i == tokenizer.unk_token_id for i in ids) / max(len(ids), 1)
    df["note_unk_share"] = df["note"].map(share).astype("float64")
    return df


def pool_size(workers: int | None) -> int:
    return workers if workers is not None else min(os.cpu_count() or 1, 8)


@contextmanager
def worker_pool(workers: int | None) -> Iterator[Executor | None]:
    """Processes for decoding (CPU-bound, GIL-bound in PIL's Python parts); none when asked for 1."""
    n = pool_size(workers)
    if n <= 1:
        yield None
        return
    # fork starts workers in milliseconds; spawn (slow imports in every worker) where fork is absent
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method)) as pool:
        yield pool


def check_batches(batches: list[Path], cfg: IngestConfig, workers: int | None) -> list[BatchResult]:
    """The seam for scaling out: the same `check_chunk` shards go to a local process pool or,
    with `ingest.executor: dask`, become Prefect task runs on a Dask cluster through
    prefect-dask's DaskTaskRunner (`ingest.dask_address`, or a local cluster started for the
    run; see mmcore/data/ingest_dask.py). The cluster's workers must see the landing area's paths."""
    if cfg.executor == "dask":
        from mmcore.data.ingest_dask import check_on_dask

        return check_on_dask(batches, cfg, pool_size(workers))
    seen: set[str] = set()
    with worker_pool(workers) as pool:
        return [ingest_batch(b, cfg, seen, pool) for b in progress(batches, desc="ingest", unit="batch", every_s=0)]


def swap_dir(new: Path, target: Path) -> None:
    """Replace a directory by renames: a crash leaves the old or the new one, and the next run redoes it."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, lambda p: p.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in rows),
                                              encoding="utf-8"))


def join_label_feed(accepted: list[Accepted], labels: Path | None, cfg: IngestConfig) -> LabelJoin:
    """Late labels onto the accepted rows (mmcore/monitor/labels.py); rows change only after
    both accountings hold, so a broken run writes nothing."""
    feed = read_label_batches(ready_batches(labels) if labels else [], cfg)
    joined = join_labels([a.row for a in accepted], feed)
    if error := joined.accounting_error():
        raise RuntimeError(f"{error}; nothing was written")
    for a in accepted:
        a.row.update(joined.columns[a.row["record_id"]])
    return joined


def ingest(landing: Path, raw: Path, quarantine: Path, cfg: IngestConfig,
           tokenizer: Any = None, workers: int | None = None, labels: Path | None = None) -> dict[str, Any]:
    """Rebuild data/raw from every finished landing batch and the label feed (`labels`, none when
    None); returns the accounting."""
    results = check_batches(ready_batches(landing), cfg, workers)
    batches = {res.batch_id: {"landed": res.landed, "accepted": len(res.accepted),
                              "quarantined": len(res.quarantined), "bad_share": round(res.bad_share, 4),
                              "status": "rejected" if res.rejected else "ok"} for res in results}
    accepted = [a for r in results for a in r.accepted]
    quarantined = [q for r in results for q in r.quarantined]
    landed = sum(r.landed for r in results)
    if landed != len(accepted) + len(quarantined):
        raise RuntimeError(f"accounting broken: landed {landed} != accepted {len(accepted)} "
                           f"+ quarantined {len(quarantined)}; nothing was written")
    label_join = join_label_feed(accepted, labels, cfg)
    staging = raw.with_name(f".{raw.name}.new")
    if staging.exists():
        shutil.rmtree(staging)
    write_shards(accepted, staging / "shards", cfg.shard_size)
    df = pd.DataFrame([a.row for a in accepted], columns=[c for c in PROFILE_COLUMNS if c != "note_unk_share"])
    df = add_unk_share(df, tokenizer) if tokenizer is not None else df.assign(note_unk_share=0.0)
    df = df.astype(PROFILE_COLUMNS)[list(PROFILE_COLUMNS)]
    write_atomic(staging / "records.parquet", lambda p: df.to_parquet(p, index=False))
    audit = audit_frame(label_join.audit)
    write_atomic(staging / "label_audit.parquet", lambda p: audit.to_parquet(p, index=False))
    swap_dir(staging, raw)
    write_jsonl(quarantine / "records.jsonl", quarantined)
    write_jsonl(quarantine / "labels.jsonl", label_join.quarantined)
    stuck = int((df["sensor_stuck_channels"].fillna("") != "").sum())
    return {"landed": landed, "accepted": len(accepted), "quarantined": len(quarantined),
            "by_reason": dict(Counter(q["reason"] for q in quarantined)), "batches": batches,
            "warnings": {"sensor_stuck_channel": stuck}, "labels": label_join.summary()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Ingest landing batches into data/raw.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--landing", type=Path, required=True)
    ap.add_argument("--labels", type=Path, help="label feed (default: params ingest.labels)")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--quarantine", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    args = ap.parse_args(argv)
    from mmcore.encoders import load_tokenizer

    cfg = load_params(args.params).ingest
    summary = ingest(args.landing, args.raw, args.quarantine, cfg, tokenizer=load_tokenizer(),
                     labels=args.labels or Path(cfg.labels))
    write_atomic(args.report, lambda p: p.write_text(json.dumps(summary, indent=2), encoding="utf-8"))
    lab = summary["labels"]
    print(f"ingest: landed {summary['landed']} = accepted {summary['accepted']} "
          f"+ quarantined {summary['quarantined']} {summary['by_reason']}; labels: landed {lab['landed']} "
          f"= joined {lab['joined']} + quarantined {lab['quarantined']} {lab['by_reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
