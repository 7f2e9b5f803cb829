"""Progress lines for long jobs: elapsed time and an ETA from the mean duration of the finished units."""

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def format_duration(seconds: float | None) -> str:
    """``4.2s``, ``42s``, ``6m01s`` or ``1h02m``; ``?`` when unknown (None, infinite or negative).

    Tenths only below ten seconds, where they still carry information (a compile, an evaluation); beyond an
    hour the seconds no longer matter.
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, whole_seconds = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{whole_seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_seconds(durations: Sequence[float], remaining: int) -> float | None:
    """Mean of ``durations`` (seconds per finished unit) times ``remaining`` units; None before any finished."""
    if remaining <= 0:
        return 0.0
    if not durations:
        return None
    return float(np.mean(durations)) * remaining


def progress_note(elapsed: float, durations: Sequence[float], remaining: int, unit: str = "run") -> str:
    """``12m03s elapsed, ETA 1h10m (6m01s per run, 12 runs left)``; the ETA is ``unknown`` before the first."""
    if remaining <= 0:
        return f"{format_duration(elapsed)} elapsed, no {_plural(unit)} left"
    eta = eta_seconds(durations, remaining)
    if eta is None:
        return f"{format_duration(elapsed)} elapsed, ETA unknown until the first {unit} finishes"
    mean = format_duration(float(np.mean(durations)))
    return (f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta)} "
            f"({mean} per {unit}, {remaining} {unit if remaining == 1 else _plural(unit)} left)")


def _plural(unit: str) -> str:
    """``runs``, ``epochs``, ``batches``."""
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


class BatchProgress:
    """``evaluate.evaluate_split``'s ``on_batch``: a progress line with an ETA, but only for slow passes.

    A pass over a split is quiet unless it is long: a line is written once ``every_seconds`` have passed since
    the pass began or since its last line, and, if any line was written for the pass, when it ends. A demo's
    evaluation (seconds) prints nothing; PGD-20 through the decouplers at 224 px (minutes per pass) says
    ``test split, pgd20_linf_8/255: batch 2/5 | 1m40s elapsed, ETA 2m30s (50s per batch, 3 batches left)``.
    """

    def __init__(self, log: Callable[[str], Any], label: str, every_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.label, self.every_seconds, self.clock = log, label, float(every_seconds), clock
        self._started = self._last_line = 0.0
        self._spoke = False

    def __call__(self, what: str, done: int, total: int) -> None:
        now = self.clock()
        if done == 0:
            self._started = self._last_line = now
            self._spoke = False
            return
        finished = done >= total
        if now - self._last_line < self.every_seconds and not (finished and self._spoke):
            return
        spent = now - self._started
        self.log(f"{self.label}, {what}: batch {done}/{total} | "
                 f"{progress_note(spent, [spent / done], total - done, unit='batch')}")
        self._last_line, self._spoke = now, True
