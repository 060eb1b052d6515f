"""The benchmark runs end to end at tiny size and writes every figure (no timing thresholds here)."""
from __future__ import annotations

import json
from pathlib import Path

from mmcore.bench import main
from tests.conftest import ROOT


def test_ingest_bench_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "ingest.json"
    assert main(["ingest", "--records", "40", "--params", str(ROOT / "params.yaml"), "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["records"] == 40
    for key in ("records_per_s", "decode_limit_per_s", "ratio", "validation_rows_per_s", "noop_dvc_repro_s"):
        assert figures[key] > 0, key
    assert abs(figures["ratio"] - figures["records_per_s"] / figures["decode_limit_per_s"]) < 0.01
