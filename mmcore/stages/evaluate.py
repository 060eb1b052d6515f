"""evaluate stage: challenger, unimodal baselines and the current champion on the same gate set."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from mmcore.config import CLASSES, load_params
from mmcore.evaluate import score
from mmcore.features import Featurizer
from mmcore.model import MODALITIES, ModelBundle
from mmcore.predict import Predictor
from mmcore.stages.common import read_json, split_records, write_json


def score_dir(model_dir: Path, feat: Featurizer, records: list[dict[str, Any]], y: np.ndarray) -> dict[str, Any]:
    pred = Predictor(ModelBundle.load(model_dir), feat)
    return score(y, pred.probabilities(records), pred.labels)


def champion_scores(model_name: str, challenger: str, feat: Featurizer, records: list[dict[str, Any]],
                    y: np.ndarray) -> dict[str, Any] | None:
    """The production model, scored now on the same records; None before the first promotion."""
    from mmcore import registry

    version = registry.alias_version(model_name, registry.CHAMPION)
    if version is None or version == challenger:
        return None
    scores = score_dir(registry.download_model_dir(model_name, version), feat, records, y)
    return {"version": int(version), **scores}


def log_metrics(run_id: str, metrics: dict[str, Any], report: Path) -> None:
    """Test-set numbers onto the training run, in one batch."""
    import time

    from mlflow.entities import Metric

    from mmcore import registry

    now = int(time.time() * 1000)
    values = {"test_macro_f1": metrics["macro_f1"], "test_accuracy": metrics["accuracy"],
              **{f"test_macro_f1_{m}_only": v for m, v in metrics["unimodal_macro_f1"].items()}}
    registry.client().log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    registry.client().log_artifact(run_id, str(report))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score challenger, baselines and champion on the gate set.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--unimodal", type=Path, required=True)
    ap.add_argument("--train-report", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    from mmcore import registry

    registry.setup(p.registry.experiment)
    trained = read_json(args.train_report)
    feat = Featurizer(p.model, cache_dir=args.cache, batch_size=p.train.embed_batch_size, progress=True)
    records, labels = split_records(args.raw, args.splits, "test")
    y = np.array([CLASSES.index(lbl) for lbl in labels])
    metrics = score_dir(args.model, feat, records, y)
    metrics["unimodal_macro_f1"] = {m: score_dir(args.unimodal / m, feat, records, y)["macro_f1"]
                                    for m in MODALITIES}
    metrics["model_version"] = int(trained["model_version"])
    metrics["champion"] = champion_scores(p.registry.model_name, trained["model_version"], feat, records, y)
    write_json(args.out, metrics)
    log_metrics(trained["run_id"], metrics, args.out)
    print(f"evaluate: fused macro-F1 {metrics['macro_f1']:.3f}, accuracy {metrics['accuracy']:.3f}, "
          f"unimodal {metrics['unimodal_macro_f1']}, champion "
          f"{metrics['champion']['macro_f1'] if metrics['champion'] else None}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
