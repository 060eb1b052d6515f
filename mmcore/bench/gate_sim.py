"""Simulated models for the gate benchmark: per-record probabilities with a controlled true gap.

What is real: the records. The oracle is `plan_batch` of the default generator (mmcore/synth) at
the default synth settings, many batches of it (every record's true class, observed label with its
noise, shipment, hub, note language, missing modalities and which modalities show evidence) -
everything but the pixels, words and traces, which are never drawn.

What is simulated: the models. A model's logits on a record are

    z = beta * signal(record) + sigma_ship * u[shipment] + sigma_common * e[record] + sigma_model * e_m[record]

where `signal` puts weight on the true class in proportion to the evidence a record shows (an
abnormal record that shows none looks normal: the error the real model makes), `u` and `e` are
shared by every model (hard parcels, hard records: both models err on them together, which is what
makes the paired comparison sharp), and `e_m` is the model's own noise. Probabilities are the
softmax of `sharpness` * z mixed with `SMOOTHING` of the uniform (label smoothing caps the real top probability near 0.96).
A pair's true gap is its macro-F1 difference on the whole oracle, against observed labels as the
gate scores; `beta` of the challenger is searched (bisection) to hit a scenario's gap.

Calibration against the real pipeline: the champion's `beta` gives the default model's gate-set
macro-F1 (0.885, reports/metrics.json of `make run`); `sigma_model` gives two equal models the
macro-F1-gain interval width the real evaluate stage measured on the default gate set between two
retrains (0.035 on 261 shipments). Neither is fitted to any gate decision.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmcore.config import CLASSES, SynthConfig
from mmcore.evaluate import macro_f1

SMOOTHING = 0.05
NORMAL = CLASSES.index("normal")


@dataclass
class Population:
    """The oracle's labelled records, as the gate sees them."""

    y: np.ndarray                   # observed label (the gate scores against it)
    truth: np.ndarray               # true class
    shipments: np.ndarray           # shipment id per record
    evidence: np.ndarray            # modalities showing the class's evidence (0..3; 0 for normal)
    slices: dict[str, np.ndarray]   # hub=, note_lang=, missing= (as the evaluate stage names them)
    ship_index: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        _, self.ship_index = np.unique(self.shipments, return_inverse=True)

    def __len__(self) -> int:
        return len(self.y)


def population(cfg: SynthConfig, records: int, seed: int) -> Population:
    """`records` planned by the default generator, in batches of its default size; unlabelled ones dropped."""
    from mmcore.synth.generate import plan_batch

    plans = []
    for b in range(-(-records // cfg.records_per_batch)):
        plans += plan_batch(np.random.default_rng(seed + b), f"oracle-{b:04d}", cfg.records_per_batch, cfg)
    plans = [p for p in plans[:records] if p.label is not None]
    text = np.array([p.note_mode == "text" for p in plans])
    ev = np.array([(p.image_evidence and p.has_image) + (p.note_evidence and p.note_mode == "text")
                   + (p.sensor_evidence and p.has_sensor) for p in plans])
    lang = np.where(~text, "empty", np.where([p.chinese for p in plans], "zh", "en"))
    hubs = np.array([p.hub for p in plans])
    slices = {**{f"hub={h}": hubs == h for h in sorted(set(hubs))},
              **{f"note_lang={v}": lang == v for v in sorted(set(lang))},
              "missing=image": np.array([not p.has_image for p in plans]), "missing=text": ~text,
              "missing=sensor": np.array([not p.has_sensor for p in plans])}
    return Population(np.array([CLASSES.index(p.label) for p in plans]),
                      np.array([CLASSES.index(p.true_class) for p in plans]),
                      np.array([p.shipment_id for p in plans]), ev, slices)


@dataclass(frozen=True)
class Noise:
    """Scales of the logits' parts (see the module docstring); the defaults are the calibrated ones."""

    sigma_ship: float = 0.6
    sigma_common: float = 0.9
    sigma_model: float = 0.45
    sharpness: float = 1.3      # logits' scale: gives the default model's ECE (0.048 measured; 0.045 here)


def signal(pop: Population) -> np.ndarray:
    """(N, C): where the evidence points. Normal records and abnormal ones showing nothing look normal."""
    s = np.zeros((len(pop), len(CLASSES)))
    shows = pop.evidence > 0
    s[np.arange(len(pop)), np.where(shows, pop.truth, NORMAL)] = np.where(shows, 1.0 + 0.8 * pop.evidence, 2.0)
    return s


class Simulator:
    """Shared noise of the oracle, and models drawn on it."""

    def __init__(self, pop: Population, noise: Noise, seed: int):
        rng = np.random.default_rng(seed)
        n, c = len(pop), len(CLASSES)
        self.pop, self.noise, self.rng = pop, noise, rng
        self.signal = signal(pop)
        ship = rng.normal(size=(int(pop.ship_index.max()) + 1, c))[pop.ship_index]
        self.shared = noise.sigma_ship * ship + noise.sigma_common * rng.normal(size=(n, c))

    def own_noise(self) -> np.ndarray:
        return self.noise.sigma_model * self.rng.normal(size=self.shared.shape)

    def probs(self, beta: np.ndarray | float, own: np.ndarray) -> np.ndarray:
        """Probabilities of the model with per-record signal weight `beta` and its own noise `own`."""
        z = self.noise.sharpness * (np.asarray(beta, dtype=np.float64).reshape(-1, 1) * self.signal + self.shared + own)
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return (1 - SMOOTHING) * e / e.sum(1, keepdims=True) + SMOOTHING / len(CLASSES)

    def macro_f1(self, probs: np.ndarray, sel: np.ndarray | None = None) -> float:
        y = self.pop.y if sel is None else self.pop.y[sel]
        return macro_f1(y, probs.argmax(1) if sel is None else probs[sel].argmax(1), len(CLASSES))

    def solve(self, target: float, own: np.ndarray, base: np.ndarray | None = None,
              lo: float = 0.0, hi: float = 12.0, where: np.ndarray | None = None) -> float:
        """The signal weight (on `where`'s records, `base` elsewhere) whose macro-F1 on the oracle is `target`."""
        base = np.ones(len(self.pop)) if base is None else base
        mask = np.ones(len(self.pop), bool) if where is None else where
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.macro_f1(self.probs(np.where(mask, mid, base), own)) < target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2


@dataclass
class Pair:
    """A champion and a challenger on the oracle: their probabilities and true figures."""

    name: str
    new: np.ndarray
    old: np.ndarray
    truth: dict[str, Any]


def scenario_pair(sim: Simulator, name: str, gap: float, champion_f1: float, hub: str | None = None,
                  hub_gap: float = 0.0) -> Pair:
    """The champion at `champion_f1`; the challenger at `gap` from it overall (and at `hub_gap` on `hub`)."""
    own_old, own_new = sim.own_noise(), sim.own_noise()
    b_old = sim.solve(champion_f1, own_old)
    old = sim.probs(b_old, own_old)
    f_old = sim.macro_f1(old)
    base = np.full(len(sim.pop), b_old)
    if hub is None:
        beta = np.full(len(sim.pop), sim.solve(f_old + gap, own_new))
    else:
        on_hub = sim.pop.slices[f"hub={hub}"]
        hub_old = sim.macro_f1(old, on_hub)
        # the hub's weight for its gap, then everyone else's so the overall gap is `gap`
        probe = np.full(len(sim.pop), b_old)
        b_hub = _solve_slice(sim, own_new, probe, on_hub, hub_old + hub_gap)
        beta = np.where(on_hub, b_hub, 0.0)
        b_rest = sim.solve(f_old + gap, own_new, base=beta, where=~on_hub)
        beta = np.where(on_hub, b_hub, b_rest)
    new = sim.probs(beta, own_new)
    truth = {"true_gap": sim.macro_f1(new) - f_old, "champion_macro_f1": f_old, "challenger_macro_f1": sim.macro_f1(new),
             "log_loss_gain": float(_log_loss(sim.pop.y, old) - _log_loss(sim.pop.y, new))}
    if hub is not None:
        truth |= {"hub": hub, "true_hub_gap": sim.macro_f1(new, on_hub) - hub_old}
    return Pair(name, new, old, truth)


def _solve_slice(sim: Simulator, own: np.ndarray, base: np.ndarray, where: np.ndarray, target: float) -> float:
    lo, hi = 0.0, 12.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if sim.macro_f1(sim.probs(np.where(where, mid, base), own), where) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.log(probs[np.arange(len(y)), y]).mean())


def draw_shipments(pop: Population, records: int, rng: np.random.Generator, exclude: np.ndarray | None = None
                   ) -> np.ndarray:
    """Record indices of whole shipments drawn at random until `records` are reached (as the split does)."""
    n_ship = int(pop.ship_index.max()) + 1
    order = rng.permutation(n_ship)
    if exclude is not None:
        order = order[~np.isin(order, np.unique(pop.ship_index[exclude]))]
    sizes = np.bincount(pop.ship_index, minlength=n_ship)[order]
    chosen = order[: int(np.searchsorted(np.cumsum(sizes), records)) + 1]
    return np.flatnonzero(np.isin(pop.ship_index, chosen))
