"""Progress lines for long jobs: elapsed time and an ETA from the mean duration of the finished units."""

from collections.abc import Sequence

import numpy as np


def format_duration(seconds: float) -> str:
    """``42.0s``, ``6m01s`` or ``1h02m`` (hours and minutes beyond an hour: the seconds no longer matter)."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, whole_seconds = divmod(int(round(seconds)), 60)
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
        return f"{format_duration(elapsed)} elapsed, no {unit}s left"
    eta = eta_seconds(durations, remaining)
    if eta is None:
        return f"{format_duration(elapsed)} elapsed, ETA unknown until the first {unit} finishes"
    mean = format_duration(float(np.mean(durations)))
    return (f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta)} "
            f"({mean} per {unit}, {remaining} {unit}{'s' if remaining != 1 else ''} left)")
