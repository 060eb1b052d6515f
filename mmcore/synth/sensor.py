"""IoT tracker traces for the synthetic generator: one row per `PERIOD_S` seconds.

Physically plausible and class-aware. Every parcel gets the same background
(ambient or reefer temperature, 30-70 % humidity, shock noise with handling spikes
of 1-4 g, darkness with an optional scan light at either end); the class evidence
is one event laid on top:

* damaged: drops/tumbles of 8-25 g
* wet: humidity climbing to 90-100 % for a sustained window
* temperature_excursion: reefer failure drifting to ambient (> 15 C), or heat
  exposure of an ambient parcel (> 35 C), for a sustained window
* tampered: a 50-500 lux light window mid-trace (box opened)

Shock is the tracker's peak g over each interval. Every event spans at least
`rows / 128 + 2` rows so it survives resampling the trace to 128 steps by linear
interpolation.
"""
from __future__ import annotations

import io
import math

import numpy as np

from mmcore.schema import SENSOR_HEADER

PERIOD_S = 60          # fixed sampling period of every trace
MIN_ROWS, MAX_ROWS = 60, 600
RESAMPLE_STEPS = 128   # the model's sensor length; events are sized to survive it


def make_trace(rng: np.random.Generator, rows: int, evidence: str | None, reefer: bool,
               start_hour: float, day_of_year: int) -> np.ndarray:
    """A (rows, 5) float array: t_s, temperature_c, humidity_pct, shock_g, light_lux."""
    t = np.arange(rows, dtype=np.float64) * PERIOD_S
    ambient = _ambient(rng, t, start_hour, day_of_year)
    temp = _reefer_temp(rng, rows) if reefer else _lagged(ambient, rng.uniform(20, 60))
    humidity = _humidity(rng, rows)
    shock = _shock(rng, rows)
    light = _light(rng, rows)
    if evidence == "temperature_excursion":
        temp = _excursion(rng, temp, ambient, reefer)
    elif evidence == "wet":
        humidity = _soak(rng, humidity)
    elif evidence == "damaged":
        shock = _drops(rng, shock)
    elif evidence == "tampered":
        light = _opened(rng, light)
    elif evidence is not None:
        raise ValueError(f"no sensor evidence for class {evidence!r}")
    temp = temp + rng.normal(0, 0.15, rows)
    return np.column_stack([t, temp, humidity.clip(0, 100), shock.clip(0, None), light.clip(0, None)])


def to_csv(trace: np.ndarray) -> str:
    """CSV text with the contract header; fixed decimals keep files small and byte-stable."""
    buf = io.StringIO()
    buf.write(",".join(SENSOR_HEADER) + "\n")
    for t, temp, hum, shock, lux in trace.tolist():
        buf.write(f"{int(t)},{temp:.2f},{hum:.1f},{shock:.3f},{lux:.1f}\n")
    return buf.getvalue()


def _min_event(rows: int) -> int:
    """Shortest event (rows) that linear resampling to RESAMPLE_STEPS cannot step over."""
    return math.ceil(rows / RESAMPLE_STEPS) + 2


def _smooth_noise(rng: np.random.Generator, rows: int, scale: float, knots: int = 6) -> np.ndarray:
    """Slow random wander: random knots, linearly interpolated."""
    return np.interp(np.linspace(0, knots - 1, rows), np.arange(knots), rng.normal(0, scale, knots))


def _ambient(rng: np.random.Generator, t: np.ndarray, start_hour: float, day_of_year: int) -> np.ndarray:
    """Outside air: seasonal mean, diurnal sinusoid peaking mid-afternoon, weather wander."""
    season = 17 + 8 * math.cos(2 * math.pi * (day_of_year - 200) / 365) + rng.uniform(-3, 3)
    hours = start_hour + t / 3600
    diurnal = rng.uniform(2, 6) * np.sin(2 * math.pi * (hours - 9) / 24)
    return season + diurnal + _smooth_noise(rng, len(t), 1.0)


def _lagged(signal: np.ndarray, tau_rows: float) -> np.ndarray:
    """First-order thermal lag of a parcel following the air around it."""
    alpha = 1 / tau_rows
    values = signal.tolist()
    acc = values[0]
    for i, v in enumerate(values):
        acc += alpha * (v - acc)
        values[i] = acc
    return np.asarray(values)


def _reefer_temp(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Cold chain held near its 2-8 C set point, with the compressor's sawtooth cycle."""
    setpoint = rng.uniform(3, 6.5)
    period = rng.uniform(20, 45)
    cycle = ((np.arange(rows) / period) % 1.0 - 0.5) * rng.uniform(0.8, 2.0)
    return setpoint + cycle + _smooth_noise(rng, rows, 0.3)


def _humidity(rng: np.random.Generator, rows: int) -> np.ndarray:
    base = rng.uniform(38, 62) + _smooth_noise(rng, rows, 4.0)
    return np.clip(base + rng.normal(0, 0.8, rows), 30, 70)


def _shock(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Vibration floor of 0.1-0.5 g plus handling bumps of 1-4 g that every parcel gets."""
    shock = 0.1 + np.abs(rng.normal(0, rng.uniform(0.04, 0.15), rows))
    for _ in range(int(rng.poisson(2.0))):
        i, width = int(rng.integers(rows)), int(rng.integers(1, 4))
        shock[i:i + width] = rng.uniform(1.0, 4.0, len(shock[i:i + width]))
    return shock


def _light(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Dark inside a closed box; maybe a scan light in the first or last two rows."""
    light = np.abs(rng.normal(0, 0.3, rows))
    if rng.random() < 0.5:
        light[: int(rng.integers(1, 3))] = rng.uniform(50, 400)
    if rng.random() < 0.5:
        light[-int(rng.integers(1, 3)):] = rng.uniform(50, 400)
    return light


def _window(rng: np.random.Generator, rows: int, share: tuple[float, float],
            where: tuple[float, float] = (0.1, 0.7)) -> tuple[int, int]:
    """Start and end row of an event lasting `share` of the trace, at least _min_event rows."""
    length = max(_min_event(rows), int(rng.uniform(*share) * rows))
    start = int(rng.uniform(*where) * rows)
    start = min(start, rows - length - 1)
    return max(start, 1), min(rows, max(start, 1) + length)


def _excursion(rng: np.random.Generator, temp: np.ndarray, ambient: np.ndarray, reefer: bool) -> np.ndarray:
    """Reefer failure warming to a warm dock (16-28 C), or an ambient parcel baking at 36-48 C."""
    rows = len(temp)
    a, b = _window(rng, rows, (0.25, 0.6))
    target = np.full(rows, rng.uniform(36, 48))
    if reefer:
        target = np.maximum(ambient, rng.uniform(16, 28))
    drive = temp.copy()
    drive[a:b] = target[a:b]
    tau = rng.uniform(4, 12) if rows > 120 else rng.uniform(2, 5)
    return _lagged(drive, tau)


def _soak(rng: np.random.Generator, humidity: np.ndarray) -> np.ndarray:
    """Humidity climbing to saturation, staying there, then drying slowly (or not at all)."""
    rows = len(humidity)
    a, b = _window(rng, rows, (0.2, 0.6))
    if rng.random() < 0.4:
        b = rows
    drive = humidity.copy()
    drive[a:b] = rng.uniform(92, 100) + rng.normal(0, 0.8, b - a)
    return np.minimum(_lagged(drive, rng.uniform(1.5, 4)), 100.0)


def _drops(rng: np.random.Generator, shock: np.ndarray) -> np.ndarray:
    """One to three drops: a tumble of several rows at 8-25 g peak."""
    rows = len(shock)
    shock = shock.copy()
    width = _min_event(rows) + int(rng.integers(0, 3))
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(1, rows - width))
        shock[i:i + width] = rng.uniform(8, rng.uniform(10, 25), width)
    return shock


def _opened(rng: np.random.Generator, light: np.ndarray) -> np.ndarray:
    """The box opened mid-route: a sustained 50-500 lux window away from both ends."""
    rows = len(light)
    a, b = _window(rng, rows, (0.04, 0.15), where=(0.2, 0.7))
    light = light.copy()
    light[a:b] = rng.uniform(50, 500) * rng.uniform(0.7, 1.0, b - a)
    return light
