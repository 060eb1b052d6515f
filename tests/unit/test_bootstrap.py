"""The paired bootstrap the gate reads: resampled by shipment, one set of rounds for every figure."""
from __future__ import annotations

import numpy as np
import pytest

from mmcore import bootstrap
from mmcore.bootstrap import paired_bootstrap
from mmcore.evaluate import macro_f1

LABELS = ["a", "b", "c", "d", "e"]


def noisy_predictions(y: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    wrong = rng.random(len(y)) > accuracy
    return np.where(wrong, (y + rng.integers(1, 5, len(y))) % 5, y)


def run(y, new, old, shipments=None, slices=None, n_boot=500, seed=0, probs=None):
    shipments = np.arange(len(y)) if shipments is None else shipments
    return paired_bootstrap(y, new, old, shipments, LABELS, slices or {}, n_boot=n_boot, seed=seed, probs=probs)


def test_identical_models_differ_by_exactly_zero_everywhere() -> None:
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 5, 400), rng.integers(0, 5, 400)
    out = run(y, p, p, shipments=np.arange(400) // 3, slices={"half": np.arange(400) < 200})
    assert out["low"] == out["high"] == out["mean"] == out["observed"] == 0.0
    assert all(v["low"] == v["high"] == 0.0 for v in [*out["classes"].values(), *out["slices"].values()])


def test_interval_contains_the_population_difference() -> None:
    rng = np.random.default_rng(3)
    pop_y = rng.integers(0, 5, 200_000)                             # new model right 85 % of the time, old 78 %
    pop_new, pop_old = noisy_predictions(pop_y, 0.85, rng), noisy_predictions(pop_y, 0.78, rng)
    true_delta = macro_f1(pop_y, pop_new, 5) - macro_f1(pop_y, pop_old, 5)
    covered = 0
    for seed in range(40):                                          # 40 gate sets of 600 records
        s = rng.choice(len(pop_y), 600, replace=False)
        out = run(pop_y[s], pop_new[s], pop_old[s], seed=seed)
        covered += out["low"] < true_delta < out["high"]
    assert covered >= 34                                            # a 95 % interval: ~38 expected


def test_a_clear_gain_is_seen_reproducibly_and_the_sign_is_challenger_minus_champion() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 5, 600)
    new, old = noisy_predictions(y, 0.9, rng), noisy_predictions(y, 0.7, rng)
    out = run(y, new, old, n_boot=1000)
    assert 0 < out["low"] < out["observed"] < out["high"]
    assert out == run(y, new, old, n_boot=1000)                     # seeded: the gate is reproducible
    flipped = run(y, old, new, n_boot=1000)
    assert abs(flipped["low"] + out["high"]) < 1e-12
    assert all(v["high"] < 0 for v in out["classes"].values())     # every class improved: negative drops


def test_records_of_one_shipment_move_together() -> None:
    """Four records per shipment, right or wrong together: resampling records would claim 4x the evidence."""
    rng = np.random.default_rng(6)
    ships = 150
    y = np.repeat(rng.integers(0, 5, ships), 4)
    right_new, right_old = np.repeat(rng.random(ships) < 0.85, 4), np.repeat(rng.random(ships) < 0.8, 4)
    new, old = np.where(right_new, y, (y + 1) % 5), np.where(right_old, y, (y + 1) % 5)
    by_shipment = run(y, new, old, shipments=np.arange(600) // 4)
    by_record = run(y, new, old)
    width = lambda o: o["high"] - o["low"]                         # noqa: E731
    assert by_shipment["shipments"] == 150 and by_record["shipments"] == 600
    assert width(by_shipment) > 1.6 * width(by_record)              # ~2x (sqrt of 4) expected


def test_every_figure_comes_from_the_same_rounds() -> None:
    """A slice holding every record is the overall comparison seen from the champion's side."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 5, 300)
    new, old = noisy_predictions(y, 0.85, rng), noisy_predictions(y, 0.8, rng)
    out = run(y, new, old, shipments=np.arange(300) // 2, slices={"all": np.ones(300, bool)})
    assert out["slices"]["all"]["low"] == pytest.approx(-out["high"], abs=1e-12)
    assert out["slices"]["all"]["high"] == pytest.approx(-out["low"], abs=1e-12)
    mean_class_drop = np.mean([v["observed"] for v in out["classes"].values()])
    assert mean_class_drop == pytest.approx(-out["observed"], abs=1e-12)


def test_a_slice_is_averaged_over_the_classes_in_its_labels_for_both_models() -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    old = np.array([0, 0, 0, 0, 1, 1])
    new = np.array([0, 0, 2, 3, 1, 1])                              # predicts classes the slice does not hold
    out = run(y, new, old, slices={"zeros": y == 0})
    s = out["slices"]["zeros"]
    assert s["classes"] == ["a"] and s["n"] == 4
    assert s["observed"] == pytest.approx(1.0 - 2 * 2 / (2 * 2 + 2))  # F1(a): 1 vs 2/3, nothing else averaged in


def test_rounds_drawn_in_chunks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 5, 200)
    new, old = noisy_predictions(y, 0.8, rng), noisy_predictions(y, 0.75, rng)
    whole = run(y, new, old, shipments=np.arange(200) // 3, n_boot=300)
    monkeypatch.setattr(bootstrap, "ROUNDS_PER_CHUNK", 7)
    assert run(y, new, old, shipments=np.arange(200) // 3, n_boot=300) == whole


def test_proper_scores_see_a_gain_macro_f1_cannot_yet_show() -> None:
    """A modestly sharper model on 300 records: the log-loss interval excludes 0 where macro-F1's does not."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 300)
    base = rng.normal(size=(300, 5))
    base[np.arange(300), y] += 1.6
    old, new = base + rng.normal(scale=0.5, size=(300, 5)), base + rng.normal(scale=0.5, size=(300, 5))
    new[np.arange(300), y] += 0.12                                 # each model's own noise, the challenger sharper
    soft = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)  # noqa: E731
    new, old = soft(new), soft(old)
    out = run(y, new.argmax(1), old.argmax(1), shipments=np.arange(300) // 2, probs=(new, old), n_boot=1000)
    assert out["low"] < 0 < out["high"]
    ll, brier = out["scores"]["log_loss"], out["scores"]["brier"]
    assert 0 < ll["low"] < ll["observed"] and 0 < brier["low"]
    assert ll["champion"] - ll["challenger"] == pytest.approx(ll["observed"])
    same = run(y, old.argmax(1), old.argmax(1), probs=(old, old))
    assert same["scores"]["log_loss"]["low"] == same["scores"]["log_loss"]["high"] == 0.0


def test_the_simultaneous_band_is_wider_than_each_interval_and_holds_together() -> None:
    rng = np.random.default_rng(10)
    y = rng.integers(0, 5, 500)
    new, old = noisy_predictions(y, 0.85, rng), noisy_predictions(y, 0.85, rng)
    hubs = np.arange(500) % 4
    ships = np.arange(500) // 2
    out = run(y, new, old, shipments=ships, slices={f"hub={h}": hubs == h for h in range(4)}
              | {"tiny": np.arange(500) < 20})
    assert out["family"]["members"] == 5 + 4 and out["family"]["q"] > 1.96     # the tiny slice: 10 shipments, out
    assert "simultaneous_low" not in out["slices"]["tiny"] and out["slices"]["tiny"]["shipments"] == 10
    for info in [*out["classes"].values(), *(out["slices"][f"hub={h}"] for h in range(4))]:
        assert info["simultaneous_low"] < info["low"]


def test_the_band_covers_all_true_drops_at_once_about_as_promised() -> None:
    """Equal models (true drops 0 everywhere): the band's lows all stay at or below 0 in ~97.5 % of gate sets."""
    rng = np.random.default_rng(11)
    held = 0
    for seed in range(40):
        y = rng.integers(0, 5, 400)
        right_new, right_old = rng.random(400) < 0.85, rng.random(400) < 0.85
        new, old = np.where(right_new, y, (y + 1) % 5), np.where(right_old, y, (y + 1) % 5)
        out = run(y, new, old, n_boot=300, seed=seed)
        held += all(v["simultaneous_low"] <= 0 for v in out["classes"].values())
    assert held >= 36
