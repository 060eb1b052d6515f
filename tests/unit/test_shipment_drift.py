"""The drift test counts a shipment once, the reference follows the window's hub mix, and a drift
finding below `monitor.min_drift_auc` is reported without counting toward a retrain."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from mmcore.config import MonitorConfig
from mmcore.monitor import embedding_drift as ed
from mmcore.monitor.window import counted_drift, encoder_tests, reference_pool, reference_sample, shipment_units

ALPHA = 0.2   # a large level: its binomial spread over a few dozen draws is small next to it


def shipments(rng: np.random.Generator, n: int, d: int, prefix: str, max_size: int,
              noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate records: each shipment's 1..max_size records sit `noise` from its own centre."""
    sizes = rng.integers(1, max_size + 1, n)
    x = np.repeat(rng.normal(size=(n, d)), sizes, axis=0) + noise * rng.normal(size=(sizes.sum(), d))
    return x, np.repeat([f"{prefix}{i}" for i in range(n)], sizes)


def alarm_rate(seed: int, max_size: int, noise: float, draws: int = 60) -> float:
    rng = np.random.default_rng(seed)
    alarms = []
    for i in range(draws):
        (r, gr), (c, gc) = shipments(rng, 50, 6, "r", max_size, noise), shipments(rng, 25, 6, "c", max_size, noise)
        alarms.append(ed.embedding_drift(r, c, components=4, alpha=ALPHA, seed=i, groups=(gr, gc)).drift)
    return float(np.mean(alarms))


@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**16), max_size=st.integers(3, 6), noise=st.floats(0.01, 0.1))
def test_level_holds_with_clustered_shipments(seed: int, max_size: int, noise: float) -> None:
    """No shift, shipments of up to six near-identical records: false alarms stay at alpha (plus
    three binomial standard deviations of 60 draws)."""
    assert alarm_rate(seed, max_size, noise) <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / 60)


def test_ranking_records_instead_of_shipments_breaks_the_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """The level test above can fail: ranked as independent records, the same draws alarm far more."""
    monkeypatch.setattr(ed, "shipment_means", lambda scores, y, group: (scores, y))
    assert alarm_rate(7, 6, 0.02) > ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / 60)


def test_shipment_means_are_one_unit_per_side_and_shipment() -> None:
    scores, y = np.array([1.0, 3.0, 5.0, 2.0, 4.0]), np.array([0, 0, 0, 1, 1])
    means, side = ed.shipment_means(scores, y, np.array([0, 0, 1, 0, 2]))   # shipment 0 on both sides
    assert sorted(zip(side.tolist(), means.tolist())) == [(0, 2.0), (0, 5.0), (1, 2.0), (1, 4.0)]


POOL = pd.DataFrame({"record_id": [f"r{i}" for i in range(3000)], "hub": np.repeat(["A", "B", "C"], 1000)})


@settings(max_examples=25, deadline=None)
@given(mix=st.dictionaries(st.sampled_from(["A", "B", "C", "NEW", "unknown"]), st.integers(1, 50), min_size=1),
       n=st.integers(1, 1200), seed=st.integers(0, 2**16))
def test_reference_follows_the_window_hub_mix(mix: dict[str, int], n: int, seed: int) -> None:
    """Each hub the pool knows gets at least its window share of the reference (or all its records); hub `unknown` and
    hubs the pool lacks (a new hub) are filled from the whole pool; no record twice."""
    hubs = pd.Series([h for h, k in mix.items() for _ in range(k)])
    ids = reference_sample(POOL, hubs, n, seed)
    assert len(ids) == len(set(ids)) == n and set(ids) <= set(POOL["record_id"])
    got = POOL.set_index("record_id").loc[ids, "hub"].value_counts()
    for hub, share in hubs.value_counts(normalize=True).items():
        if hub in ("A", "B", "C"):
            assert got.get(hub, 0) >= min(int(share * n), 1000)   # its share, or all the pool has
    assert reference_sample(POOL, hubs, n, seed) == ids                      # seeded by the window
    assert n < 10 or reference_sample(POOL, hubs, n, seed + 1) != ids       # and drawn anew per window


def test_a_window_from_two_hubs_gets_those_hubs_and_unknown_gets_any() -> None:
    ids = reference_sample(POOL, pd.Series(["A"] * 80 + ["B"] * 20), 500, seed=0)
    assert POOL.set_index("record_id").loc[ids, "hub"].value_counts().to_dict() == {"A": 400, "B": 100}
    anywhere = POOL.set_index("record_id").loc[reference_sample(POOL, pd.Series(["unknown"] * 9), 900, 0), "hub"]
    assert set(anywhere) == {"A", "B", "C"}


def small_shift(n_ref: int, n_cur: int, shift: float) -> tuple[dict, np.ndarray, dict, np.ndarray]:
    rng = np.random.default_rng(3)
    ref = {k: rng.normal(size=(n_ref, 8)) for k in ("image", "text")}
    cur = {k: rng.normal(size=(n_cur, 8)) + shift * np.eye(8)[0] for k in ("image", "text")}
    return ref, np.ones((n_ref, 3)), cur, np.ones((n_cur, 3))


def test_drift_below_the_minimum_effect_is_reported_but_not_counted() -> None:
    """A shift a big sample resolves (p below alpha) but a classifier barely sees (AUC ~0.56)."""
    ref, ref_has, cur, cur_has = small_shift(6000, 3000, 0.25)
    ship = (np.arange(6000).astype(str), (np.arange(3000) + 10_000).astype(str))
    strict = encoder_tests(ref, ref_has, cur, cur_has, 0, ship, min_auc=0.6)
    assert all(v["drift"] and not v["effect_ok"] and 0.5 < v["auc"] < 0.6 for v in strict.values()), strict
    assert counted_drift(strict) == ([], ["image", "text"])
    lenient = encoder_tests(ref, ref_has, cur, cur_has, 0, ship, min_auc=0.5)
    assert counted_drift(lenient) == (["image", "text"], [])
    assert lenient["image"]["units"] == "shipments" and lenient["image"]["held_current"] == 2000   # two thirds tested


def test_min_drift_auc_must_be_an_auc_above_chance() -> None:
    with pytest.raises(ValueError, match="min_drift_auc"):
        MonitorConfig(min_drift_auc=0.4)
    with pytest.raises(ValueError, match="min_drift_auc"):
        MonitorConfig(min_drift_auc=1.0)


def test_the_reference_pool_is_the_champions_training_rows_else_the_train_split() -> None:
    profile = pd.DataFrame({"record_id": ["a", "b", "c", "d"], "hub": ["A", "A", "B", "B"],
                            "shipment_id": ["s1", "s1", "s2", "s3"]})
    splits = pd.DataFrame({"record_id": ["a", "b", "c", "d"], "split": ["train", "train", "train", "test"]})
    champion = pd.DataFrame({"record_id": ["a", "c", "gone"]})        # trained on a and c; "gone" left data/raw
    champion.attrs["source"] = {"version": "3"}
    pool, source = reference_pool(profile, splits, (champion, ""))
    assert list(pool["record_id"]) == ["a", "c"] and source == {"from": "champion", "version": "3", "rows": 3,
                                                                 "in_raw": 2}
    pool, source = reference_pool(profile, splits, (None, "no champion"))
    assert list(pool["record_id"]) == ["a", "b", "c"] and source["from"] == "train split"
    assert source["why"] == "no champion"


def test_a_record_without_a_shipment_is_its_own_unit() -> None:
    units = shipment_units(pd.DataFrame({"record_id": ["a", "b", "c"], "shipment_id": ["s1", None, "s1"]}))
    assert units.tolist() == ["s1", "record:b", "s1"]
