"""Evaluation metrics: calibration, the paired bootstrap, slices and per-modality ablation."""
from __future__ import annotations

import numpy as np
import torch

from mmcore.config import load_params
from mmcore.bootstrap import pair_onehot, shipment_weights, weighted_f1
from mmcore.evaluate import (ablation, ablation_report, class_f1, confusion, ece, ece_classwise, macro_f1,
                             mask_modality, model_probs, per_class, reliability, slice_scores)
from mmcore.model import FusionModel
from tests.conftest import ROOT
from tests.unit.test_model import MCFG, random_batch


def two_class_probs(conf: np.ndarray) -> np.ndarray:
    """Predict class 0 with the given confidence."""
    return np.stack([conf, 1 - conf], axis=1)


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    probs = two_class_probs(np.full(100, 0.8))
    y = np.array([0] * 80 + [1] * 20)                  # 80 % right at 80 % confidence
    assert ece(probs, y, bins=10) < 1e-9


def test_ece_of_an_overconfident_model_is_the_gap() -> None:
    probs = two_class_probs(np.full(200, 0.99))
    y = np.array([0, 1] * 100)                         # 50 % right at 99 % confidence
    assert abs(ece(probs, y, bins=15) - 0.49) < 1e-9


def test_classwise_ece_charges_the_classes_not_predicted() -> None:
    """Three classes; the top class is calibrated (0.6 right at 0.6), so the top-label ECE is 0, but the
    runner-up is said to be 0.3 likely and is the answer 0.4 of the time."""
    probs = np.tile([0.6, 0.3, 0.1], (100, 1))
    y = np.array([0] * 60 + [1] * 40)
    assert ece(probs, y, bins=10) < 1e-9
    assert abs(ece_classwise(probs, y, bins=10) - 0.2 / 3) < 1e-9   # |0.4 - 0.3| and |0 - 0.1|, over 3 classes
    onehot = np.eye(3)[y]
    assert ece_classwise(onehot, y) == 0.0 and ece_classwise(np.zeros((0, 3)), y[:0]) == 0.0


def test_reliability_bins_cover_every_record_once() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    bins = reliability(probs, rng.integers(0, 5, 300), bins=15)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 300
    for b in bins:
        assert b["count"] == 0 or b["lower"] <= b["confidence"] <= b["upper"]


def test_class_f1_matches_per_class_and_the_bootstrap_kernel() -> None:
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 5, (4, 60)), rng.integers(0, 5, (4, 60))
    for yt, yp in zip(y, p):
        cm = confusion(yt, yp, 5)
        expected = [v["f1"] for v in per_class(cm, list("abcde")).values()]
        assert np.allclose(class_f1(cm), expected)
    # the bootstrap's weighted kernel: weight 1 on one row's records is that row's confusion matrix
    flat_y, flat_p = y.ravel(), p.ravel()
    weights = np.kron(np.eye(4), np.ones(60))                                    # (4, 240)
    assert np.allclose(weighted_f1(weights, pair_onehot(flat_y, flat_p, 5), 5).mean(1),
                       [macro_f1(yt, yp, 5) for yt, yp in zip(y, p)])
    assert next(shipment_weights(np.arange(240), 3, seed=0)).sum(1).tolist() == [240] * 3


def test_slices_average_over_the_classes_in_their_labels() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 0, 2, 2])
    out = slice_scores(y, p, {"a": np.array([1, 1, 0, 0, 0, 0], bool), "all": np.ones(6, bool)}, 5)
    # slice a holds class 0 only: F1(0) = 2/3; the wrong prediction of class 1 is not averaged in
    assert out["a"] == {"macro_f1": 2 / 3, "accuracy": 0.5, "n": 2}
    assert out["all"]["n"] == 6 and abs(out["all"]["macro_f1"] - np.mean([0.5, 0.5, 1.0])) < 1e-12


def test_a_slice_with_the_records_of_another_says_so() -> None:
    y = p = np.array([0, 1, 2, 3])
    empty_note = np.array([1, 0, 1, 0], bool)
    out = slice_scores(y, p, {"note_lang=empty": empty_note, "missing=text": empty_note.copy(),
                              "hub=A": ~empty_note}, 5)
    assert out["note_lang=empty"]["duplicate_of"] == "missing=text"          # the first by name is gated
    assert "duplicate_of" not in out["missing=text"] and "duplicate_of" not in out["hub=A"]


def test_mask_modality_marks_only_that_modality_absent() -> None:
    batch = random_batch(4, seed=6)
    masked = mask_modality(batch, "text")
    assert masked.mask[:, 1].sum() == 0 and torch.equal(masked.mask[:, [0, 2]], batch.mask[:, [0, 2]])
    assert batch.mask.sum() == 12                                   # the input batch is untouched
    assert torch.equal(masked.text, batch.text)                     # the data stays; only presence changes


def test_ablation_is_the_model_with_that_modality_replaced_by_its_missing_embedding() -> None:
    torch.manual_seed(0)
    model = FusionModel(MCFG).eval()
    batch = random_batch(40, seed=7)
    y = np.arange(40) % 5
    out = ablation(model, batch, y, 5)
    assert set(out) == {"drop_image", "drop_text", "drop_sensor"}
    # masking the sensor means its input no longer matters: scrambling it changes nothing
    scrambled = mask_modality(batch, "sensor")
    scrambled.sensor = torch.randn_like(batch.sensor)
    assert np.allclose(model_probs(model, mask_modality(batch, "sensor")), model_probs(model, scrambled), atol=1e-6)
    assert out["drop_sensor"] == macro_f1(y, model_probs(model, scrambled).argmax(1), 5)
    assert not np.allclose(model_probs(model, batch), model_probs(model, scrambled))


def test_ablation_report_checks_each_quality_target() -> None:
    cfg = load_params(ROOT / "params.yaml").evaluate
    metrics = {"macro_f1": 0.91, "unimodal_macro_f1": {"image": 0.70, "text": 0.60, "sensor": 0.85},
               "ablation": {"drop_image": 0.86, "drop_text": 0.90, "drop_sensor": 0.78}}
    rep = ablation_report(metrics, cfg)
    assert rep["best_unimodal"] == "sensor" and rep["worst_modality_removed"] == "sensor"
    assert abs(rep["modality_removed"]["sensor"]["drop"] - 0.13) < 1e-9
    met = {k: t["met"] for k, t in rep["targets"].items()}
    # 0.91 >= 0.90 met; 0.91 - 0.85 = 0.06 < 0.10 missed; sensor drop 0.13 > 0.10 missed
    assert met == {"fused_macro_f1": True, "margin_over_best_unimodal": False, "max_modality_drop": False}
    assert rep["all_met"] is False


def test_a_champion_from_other_input_settings_gets_its_own_featurizer(tmp_path) -> None:
    """An older champion (no n-gram features) scored beside a challenger with them: each its own inputs."""
    import dataclasses

    from mmcore.config import CLASSES
    from mmcore.features import Featurizer
    from mmcore.model import ModelBundle
    from mmcore.stages.evaluate import featurizer_for

    shared = Featurizer(MCFG, cache_dir=tmp_path)
    old = dataclasses.replace(MCFG, text_ngram_buckets=0)
    bundle = ModelBundle(FusionModel(old), list(CLASSES), np.zeros(4, np.float32), np.ones(4, np.float32),
                         shared.versions())
    own = featurizer_for(bundle, shared)
    assert own is not shared and own.cfg.text_ngram_buckets == 0 and own.cache_dir == shared.cache_dir
    same = ModelBundle(FusionModel(MCFG), list(CLASSES), np.zeros(4, np.float32), np.ones(4, np.float32),
                       shared.versions())
    assert featurizer_for(same, shared) is shared
