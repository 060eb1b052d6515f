"""The train stage's int8 choice: which encoders the model embeds through, decided on validation.

Served speed comes from int8 encoders, so the choice is a quality decision made where every setting
is chosen (DESIGN §3: the val split): the fused head is trained on the fp32 pipeline's embeddings and
on an int8 pipeline's (fastest first: image+text, text, image; the first that passes wins), and int8
is chosen when its val macro-F1 is at most `serve.max_quantised_drop` below fp32's and its val Brier
score (of the probabilities as served, each pipeline's temperature fitted on val) at most
`serve.max_quantised_brier_rise` above. The model is then trained, calibrated,
evaluated and gated on the chosen pipeline's own graphs; the evaluate stage confirms the choice once
on the gate set with an interval (mmcore.stages.evaluate). Only frozen encoders are quantised.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmcore.config import CLASSES, Params
from mmcore.evaluate import macro_f1, model_probs
from mmcore.features import INT8_KEY, Featurizer
from mmcore.fit import History
from mmcore.model import ModelBundle
from mmcore.selective.scaling import apply_temperature, fit_temperature

CANDIDATES = (("image", "text"), ("text",), ("image",))     # fastest first: which encoders run in int8
DECISION_FILE = "int8.json"                                  # in the model directory, beside config.json
Fit = Callable[[str, Featurizer], tuple[ModelBundle, History]]


def val_scores(bundle: ModelBundle, feat: Featurizer, records: list[dict[str, Any]], labels: list[str]
               ) -> dict[str, float]:
    """Macro-F1 and Brier score on the val split, through `feat`'s graphs. The Brier score is of the
    probabilities as served: temperature-scaled, the temperature fitted on val as the calibration does
    (mmcore.selective.scaling). Unscaled, two heads that early stopping left at different epochs differ
    in sharpness, which the served model's temperature takes out; `brier_unscaled` keeps that figure."""
    probs = model_probs(bundle.model, feat.batch(records, bundle.sensor_mean, bundle.sensor_std))
    y = np.array([CLASSES.index(lbl) for lbl in labels])
    temperature = fit_temperature(probs, y)
    onehot = np.eye(len(CLASSES))[y]

    def brier(p: np.ndarray) -> float:
        return round(float(((p - onehot) ** 2).sum(1).mean()), 4)

    return {"macro_f1": round(macro_f1(y, probs.argmax(1), len(CLASSES)), 4),
            "brier": brier(apply_temperature(probs, temperature)), "brier_unscaled": brier(probs),
            "temperature": round(float(temperature), 4)}


def verdict(fp32: dict[str, float], int8: dict[str, float], max_drop: float, max_brier_rise: float) -> list[str]:
    """Why this int8 pipeline is not chosen ([] when it is)."""
    drop, rise = fp32["macro_f1"] - int8["macro_f1"], int8["brier"] - fp32["brier"]
    why = [f"val macro-F1 drop {drop:.4f} > serve.max_quantised_drop {max_drop}"] if drop > max_drop else []
    if rise > max_brier_rise:
        why.append(f"val Brier rise {rise:.4f} > serve.max_quantised_brier_rise {max_brier_rise}")
    return why


def quantisable(p: Params, feat: Featurizer) -> str | None:
    """Why int8 is not tried here (None: it is)."""
    if not p.serve.quantise:
        return "serve.quantise is false"
    if p.train.strategy != "frozen":
        return f"train.strategy {p.train.strategy}: fine-tuned encoders stay fp32"
    if feat.backend != "onnx":
        return "the frozen encoders embed with torch here (train.embed_backend, or a GPU): int8 needs ONNX Runtime"
    return None


def choose(p: Params, feat: Featurizer, fp32: tuple[ModelBundle, History], val: tuple[list, list],
           images: list[bytes], fit: Fit) -> tuple[dict[str, Any], Featurizer, tuple[ModelBundle, History]]:
    """(decision, the chosen pipeline's featurizer, its fused model and history). `fit(name, feat)` trains
    the fused head on a featurizer's embeddings; `fp32` is the head already trained on `feat`."""
    from mmcore.serving.int8 import int8_graphs
    from mmcore.serving.onnx_encoders import encoder_exports

    if (why := quantisable(p, feat)) is not None:
        return {"chosen": False, "encoders": [], "reason": why}, feat, fp32
    if not images:
        return {"chosen": False, "encoders": [], "reason": "no training-split images to calibrate int8 on"}, feat, fp32
    digests = int8_graphs(encoder_exports(feat, feat.onnx_cache)[0], images, feat.cfg.image_size)
    reference = val_scores(fp32[0], feat, *val)
    tried = []
    for encoders in CANDIDATES:
        graphs = {e: digests[e] for e in encoders}
        cand = Featurizer(feat.cfg, cache_dir=feat.cache_dir, device=feat.device, batch_size=feat.batch_size,
                          progress=feat.progress, backend="onnx", int8=graphs, onnx_cache=feat.onnx_cache)
        trained = fit(f"fused-int8-{'+'.join(encoders)}", cand)
        scores = val_scores(trained[0], cand, *val)
        why = verdict(reference, scores, p.serve.max_quantised_drop, p.serve.max_quantised_brier_rise)
        tried.append({"encoders": list(encoders), "val": scores, "passed": not why, "why": "; ".join(why)})
        if not why:
            trained[0].extra = {**trained[0].extra, INT8_KEY: graphs}
            return ({"chosen": True, "encoders": list(encoders), "sha256": graphs, "fp32_val": reference,
                     "tried": tried, "calibration_images": len(images),
                     "reason": f"{'+'.join(encoders)} in int8: within both margins on val"}, cand, trained)
    return ({"chosen": False, "encoders": [], "fp32_val": reference, "tried": tried,
             "calibration_images": len(images),
             "reason": f"no int8 pipeline within the margins on val ({tried[-1]['why']} for {tried[-1]['encoders']})"},
            feat, fp32)


def gate_check(y: np.ndarray, int8_probs: np.ndarray, fp32_probs: np.ndarray, shipments: np.ndarray,
               max_drop: float, n_boot: int, seed: int, ci: float) -> dict[str, Any]:
    """The one look at the gate set for the int8 choice: the paired shipment bootstrap (mmcore.bootstrap)
    of macro-F1(int8 pipeline) - macro-F1(fp32 pipeline), each on its served (temperature-scaled)
    probabilities. Vetoed only on evidence: the whole interval below -`max_drop`; a noisy point
    difference below it is not a veto."""
    from mmcore.bootstrap import paired_bootstrap

    boot = paired_bootstrap(y, int8_probs.argmax(1), fp32_probs.argmax(1), shipments, list(CLASSES), {}, n_boot,
                            seed, ci)
    gain = {k: round(float(boot[k]), 4) for k in ("observed", "low", "high")}
    vetoed = gain["high"] < -max_drop
    why = (f"int8 - fp32 macro-F1 on the gate set {gain['observed']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}] "
           f"({ci:.0%} interval, {len(y)} records): " + (f"wholly below -{max_drop}: vetoed, the fp32 pipeline's model "
                                                          "is evaluated and gated" if vetoed else
                                                          f"not wholly below -{max_drop}: int8 confirmed"))
    return {"macro_f1_gain": {**gain, "ci": ci}, "records": len(y), "max_quantised_drop": max_drop,
            "vetoed": vetoed, "reason": why}


def margins(p: Params) -> dict[str, float]:
    return {"max_quantised_drop": p.serve.max_quantised_drop,
            "max_quantised_brier_rise": p.serve.max_quantised_brier_rise}


def model_int8(model_dir: Path) -> dict[str, str]:
    """{encoder: sha256} of the int8 graphs a model directory was trained on ({} for fp32)."""
    return ModelBundle.load(model_dir).extra.get(INT8_KEY) or {}
