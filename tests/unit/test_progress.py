"""mmcore.progress: plain lines when piped (the retrain flow's log), the first, every few seconds, the last."""
from __future__ import annotations

import io

from tqdm import tqdm

from mmcore import progress as progress_mod
from mmcore.progress import Lines, progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_piped_progress_prints_lines_and_a_terminal_gets_a_bar(monkeypatch) -> None:
    out = io.StringIO()
    assert isinstance(progress(range(3), desc="x", file=out), Lines)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True
    assert isinstance(progress(range(3), desc="x", file=Tty()), tqdm)
    assert isinstance(progress(range(3), desc="x", file=out, disable=True), tqdm)   # silent either way


def test_an_epoch_a_line_with_its_postfix_and_duration(monkeypatch) -> None:
    clock, out = Clock(), io.StringIO()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    bar = progress(range(3, 6), desc="train fused", unit="epoch", total=5, initial=2, every_s=0, file=out)
    for epoch in bar:
        if epoch == 5:
            break                                           # early stopping (as in mmcore.train.fit)
        clock.now += 4.0
        bar.set_postfix(loss=f"{1 / epoch:.3f}", val_f1="0.700")
    assert out.getvalue().splitlines() == [
        "train fused: 3/5 epochs loss=0.333 val_f1=0.700 (4.0 s/epoch, 4 s elapsed)",
        "train fused: 4/5 epochs loss=0.250 val_f1=0.700 (4.0 s/epoch, 8 s elapsed, ~4 s left)"]


def test_counts_are_printed_first_then_every_few_seconds_and_last(monkeypatch) -> None:
    clock, out = Clock(), io.StringIO()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    with progress(desc="embed image", total=320, unit="image", every_s=10, file=out) as bar:
        for _ in range(10):
            clock.now += 3.0
            bar.update(32)
    assert out.getvalue().splitlines() == [
        "embed image: 32/320 images (10.7 images/s, 3 s elapsed)",    # no guess yet: the first step loads
        "embed image: 160/320 images (10.7 images/s, 15 s elapsed, ~15 s left)",
        "embed image: 288/320 images (10.7 images/s, 27 s elapsed, ~3 s left)",
        "embed image: 320/320 images (10.7 images/s, 30 s elapsed)"]


def test_quiet_work_says_nothing_unless_it_runs_long(monkeypatch) -> None:
    clock, out = Clock(), io.StringIO()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    for _ in progress(range(5), desc="train fused epoch 1", unit="step", quiet_s=10, file=out):
        clock.now += 1.0
    assert out.getvalue() == ""                             # a short epoch: its epoch line is enough
    for _ in progress(range(5), desc="train fused epoch 2", unit="step", quiet_s=10, every_s=10, file=out):
        clock.now += 6.0
    assert out.getvalue().splitlines() == [
        "train fused epoch 2: 2/5 steps (6.0 s/step, 12 s elapsed, ~18 s left)",
        "train fused epoch 2: 4/5 steps (6.0 s/step, 24 s elapsed, ~6 s left)",
        "train fused epoch 2: 5/5 steps (6.0 s/step, 30 s elapsed)"]
