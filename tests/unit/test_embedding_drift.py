"""The embedding drift test keeps its false-alarm rate at alpha without shift, and sees a shift
confined to a fifth of a window and a few directions of the embedding space."""
from __future__ import annotations

import numpy as np
import pytest

from mmcore.monitor.embedding_drift import embedding_drift

D = 64


def population(rng: np.random.Generator, n: int, mixing: np.ndarray) -> np.ndarray:
    """Correlated, non-Gaussian embeddings: a few latent factors (one skewed) through a fixed mixing."""
    z = rng.normal(size=(n, 8))
    z[:, 0] = rng.exponential(size=n)
    return z @ mixing + 0.3 * rng.normal(size=(n, D))


def new_source(rng: np.random.Generator, n: int, mixing: np.ndarray) -> np.ndarray:
    """Another camera, say: one latent factor offset by three of its standard deviations (at two, 76% of
    such windows alarmed: a fifth of a window is a small signal)."""
    return population(rng, n, mixing) + 3.0 * mixing[1]


@pytest.fixture(scope="module")
def world() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, D))
    return mixing, population(rng, 2000, mixing)


def test_false_alarm_rate_without_shift_stays_at_alpha(world: tuple[np.ndarray, np.ndarray]) -> None:
    """Over draws of both samples, as the monitor makes them (a reference drawn anew each window).
    Against one fixed reference the rate is conditional on that draw's own sampling error, which a
    32-component classifier adds up: 0.15 for this generator's seed-0 reference, 0.07 fresh."""
    mixing, _ = world
    rng = np.random.default_rng(1)
    alarms = [embedding_drift(population(rng, 2000, mixing), population(rng, 300, mixing), seed=i).drift
              for i in range(100)]
    assert np.mean(alarms) <= 0.08, np.mean(alarms)   # alpha 0.05 plus the binomial spread of 100 draws


def test_a_fifth_of_the_window_from_a_new_source_is_detected(world: tuple[np.ndarray, np.ndarray]) -> None:
    mixing, reference = world
    rng = np.random.default_rng(2)
    detected = []
    for _ in range(50):
        window = np.vstack([population(rng, 240, mixing), new_source(rng, 60, mixing)])
        detected.append(embedding_drift(reference, window).drift)
    assert np.mean(detected) >= 0.9, np.mean(detected)
    same = embedding_drift(reference, population(rng, 300, mixing))
    moved = embedding_drift(reference, np.vstack([population(rng, 240, mixing), new_source(rng, 60, mixing)]))
    assert moved.auc > same.auc and moved.p_value < same.p_value


def test_bad_inputs_say_what_is_wrong(world: tuple[np.ndarray, np.ndarray]) -> None:
    _, reference = world
    with pytest.raises(ValueError, match="widths differ"):
        embedding_drift(reference, reference[:10, :32])
    broken = reference[:50].copy()
    broken[3, 4] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        embedding_drift(reference, broken)
    with pytest.raises(ValueError, match="at least 2"):
        embedding_drift(reference, reference[:1])
    with pytest.raises(ValueError, match="at least 4 embeddings on each side"):
        embedding_drift(reference[:3], reference[3:10])
    tiny = embedding_drift(reference[:10], reference[10:20])   # fewer records than components: fewer components
    assert tiny.components == 19 and tiny.n_reference == 10 and not np.isnan(tiny.p_value)
