"""The training benchmark runs end to end at tiny size and writes every figure (no timing thresholds here)."""
from __future__ import annotations

import json
from pathlib import Path

from mmcore.bench.train import main
from tests.conftest import ROOT


def test_train_bench_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    args = ["--records", "60", "--epochs", "2", "--full-records", "60", "--full-epochs", "2", "--finetune-records", "12", "--finetune-strategy", "lora",
            "--params", str(ROOT / "params.yaml"), "--out", str(out)]
    assert main(args) == 0
    figures = json.loads(out.read_text())
    for key in ("samples_per_s", "compute_limit_samples_per_s", "ratio", "peak_mem_mb"):
        assert figures[key] > 0, key
    assert abs(figures["ratio"] - figures["samples_per_s"] / figures["compute_limit_samples_per_s"]) < 0.01
    assert figures["device"].startswith(("cpu", "NVIDIA"))
    assert figures["strategy"] == "frozen" and figures["finetune"]["strategy"] == "lora"
    assert figures["finetune"]["samples_per_s"] > 0 and figures["finetune"]["ratio"] > 0
    assert figures["inference"]["records_per_s_b1"] > 0 and figures["inference"]["records_per_s_b64"] > 0
    assert figures["steady_samples_per_s"] > 0
    full, on_gpu = figures["full_finetune"], figures["device"].startswith("NVIDIA")
    assert figures["bf16_autocast"] is on_gpu and full["judged"] is on_gpu and full["goal_samples_per_s"] == 4000
    assert full["strategy"] == "full" and (full["samples_per_s"] > 0 if on_gpu else "CUDA" in full["skipped"])
    assert figures["peak_mem_kind"] == ("cuda allocated" if on_gpu else "process RSS")
