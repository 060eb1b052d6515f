"""Progress of long steps (embedding, training, ingest): one helper for all of them.

In a terminal it is a tqdm bar. Anywhere else (a pipe: `dvc repro` under the retrain flow, CI, a
log file) a bar's carriage returns make one unreadable line that arrives only when the bar closes,
so it prints plain lines instead, flushed at once: the first step, then one every `every_s`
seconds, and the last, e.g.

    embed image: 640/2400 records (27.1 records/s, 24 s elapsed, ~65 s left)
    train image+text+sensor: 3/60 epochs loss=0.812 val_f1=0.743 (4.1 s/epoch, 12 s elapsed, ~3.9 min left)

Both take the same calls: iterate it, or `update(n)`; `set_postfix(...)`; `close()` (or `with`).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

EVERY_S = 10.0   # plain lines: at most one per this many seconds (besides the first and the last)


def progress(iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None,
             unit: str = "it", disable: bool = False, every_s: float = EVERY_S, quiet_s: float = 0.0,
             initial: int = 0, leave: bool = True, file: TextIO | None = None) -> Any:
    """A tqdm bar on a terminal, plain periodic lines elsewhere (see the module's docstring).

    `every_s=0` prints every step (epochs); `quiet_s` prints nothing until the work has run that long
    (batches within an epoch: only a long epoch reports them); `initial` counts steps done before
    (a resumed run); `leave=False` drops a finished inner bar on a terminal."""
    out = file or sys.stderr
    if disable or (hasattr(out, "isatty") and out.isatty()):
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, initial=initial, leave=leave,
                    file=out)
    return Lines(iterable, desc=desc, total=total, unit=unit, every_s=every_s, quiet_s=quiet_s, initial=initial,
                 file=out)


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "tch", "sh")) else "s")   # batches, epochs


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


class Lines:
    """Progress as plain lines (what `progress` gives when its file is not a terminal)."""

    def __init__(self, iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None,
                 unit: str = "it", every_s: float = EVERY_S, quiet_s: float = 0.0, initial: int = 0,
                 file: TextIO | None = None) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.every_s, self.quiet_s, self.file = every_s, quiet_s, file or sys.stderr
        self.initial = self.n = self.printed_n = initial
        self.postfix = ""
        self.start = self.last_print = self.last_step = time.monotonic()
        self.step_s = 0.0          # duration of the last update: what an epoch took
        self.first: tuple[float, int] | None = None   # (when, n) at the first update: loading is over
        self.printed = False
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "nothing to iterate: call update(n) instead"
        try:
            for item in self.iterable:
                yield item
                self.update(1)   # resumed: the previous item is done (also just before a `break`)
        finally:
            self.close()

    def __enter__(self) -> "Lines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kwargs.items())

    def update(self, n: int = 1) -> None:
        now = time.monotonic()
        self.n += n
        self.step_s, self.last_step = now - self.last_step, now
        if self.first is None:
            self.first = (now, self.n)
        if now - self.start < self.quiet_s:
            return
        if not self.printed or now - self.last_print >= self.every_s or self.n == self.total:
            self.emit(now)

    def close(self) -> None:
        if not self.closed and self.printed_n != self.n and (self.printed or not self.quiet_s):
            self.emit(time.monotonic())
        self.closed = True

    def line(self, now: float) -> str:
        elapsed = now - self.start
        units = _plural(self.unit)
        head = f"{self.n}/{self.total} {units}" if self.total else f"{self.n} {units}"
        # the rate and what is left from the first step on: the first step also loads models, compiles, ...
        t0, n0 = self.first if self.first and self.n > self.first[1] else (self.start, self.initial)
        rate = (self.n - n0) / (now - t0) if now > t0 else 0.0
        if self.every_s == 0 and self.step_s:   # a line per step (epochs): what this one took
            speed = f"{self.step_s:.1f} s/{self.unit}"
        elif rate >= 1 or rate == 0:
            speed = f"{rate:.1f} {units}/s"
        else:
            speed = f"{1 / rate:.1f} s/{self.unit}"
        parts = [speed, f"{_duration(elapsed)} elapsed"]
        if self.total and 0 < self.n < self.total and rate > 0 and t0 != self.start:
            parts.append(f"~{_duration((self.total - self.n) / rate)} left")
        return f"{self.desc}: {head}{' ' + self.postfix if self.postfix else ''} ({', '.join(parts)})"

    def emit(self, now: float) -> None:
        print(self.line(now), file=self.file, flush=True)
        self.last_print, self.printed_n, self.printed = now, self.n, True
