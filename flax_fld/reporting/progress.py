"""Progress lines for long jobs: elapsed time and an ETA from the mean duration of the finished units."""

import math
from collections.abc import Sequence

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
