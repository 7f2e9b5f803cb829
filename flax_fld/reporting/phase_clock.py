"""Where a run's wall time went: seconds per phase (data, compile, training, validation, test report, plots).

A run wraps each part of its work in ``with clock.phase("training"):``; the same name may open many times
(every epoch's steps, every validation) and its seconds add up. ``line()`` is the run's last console line,
``seconds()`` its ``time`` record in metrics.jsonl. Time outside every phase (setup, checkpoints, Python
between the parts) is reported as ``other``, so the phases always sum to the run's wall time.
"""

import contextlib
import time
from collections.abc import Callable, Iterator

from flax_fld.reporting import progress


class PhaseClock:
    """Wall seconds per named phase, from its creation to ``seconds()``; ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._start = clock()
        self._totals: dict[str, float] = {}
        self._open = False

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Adds the seconds spent inside the block to ``name``. Phases do not nest: an inner one would count
        its seconds twice, so it is an error."""
        if self._open:
            raise RuntimeError(f"phase {name!r} opened inside another phase")
        self._open = True
        start = self._clock()
        try:
            yield
        finally:
            self._totals[name] = self._totals.get(name, 0.0) + self._clock() - start
            self._open = False

    def seconds(self) -> dict[str, float]:
        """``{phase: seconds}`` in the order the phases first opened, then ``other`` and ``total``."""
        total = self._clock() - self._start
        other = max(total - sum(self._totals.values()), 0.0)
        return {**{name: round(value, 3) for name, value in self._totals.items()},
                "other": round(other, 3), "total": round(total, 3)}

    def line(self, seconds: dict[str, float] | None = None) -> str:
        """``time by phase: data 13s, compile 44s, training 2m21s, ... (total 4m40s)`` of ``seconds()`` (now, or
        the record given, so that the console and metrics.jsonl say the same)."""
        seconds = dict(self.seconds() if seconds is None else seconds)
        total = seconds.pop("total")
        parts = ", ".join(f"{name} {progress.format_duration(value)}" for name, value in seconds.items())
        return f"time by phase: {parts} (total {progress.format_duration(total)})"
