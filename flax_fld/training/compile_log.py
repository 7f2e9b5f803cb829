"""How many XLA programs this process has compiled, and how long that took: a listener on JAX's own events.

JAX (0.10) reports every program it hands to XLA through ``jax.monitoring``: the duration event
``/jax/core/compile/backend_compile_duration`` (``fun_name=`` the program's name; a program loaded from the
persistent compilation cache reports it too, just after a ``/jax/compilation_cache/cache_hits`` event), and
the tracing and jaxpr-to-MLIR lowering durations beside it. ``CompileLog`` collects them; the training loop
prints its ``summary()`` before the first step, and ``benchmarks/compile_probe.py`` tabulates ``records`` by
phase. Small eager operations (a ``jnp.zeros`` outside any jit) count too: each is a program of its own.
"""

import dataclasses
import threading
from typing import Optional

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
TRACING_EVENT = "/jax/core/compile/jaxpr_trace_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class Program:
    """One program handed to XLA: its name, the phase it was compiled in, and seconds spent on it."""

    name: str
    phase: str
    compile_s: float  # XLA compilation (or the persistent cache's load, when ``cached``)
    lower_s: float = 0.0  # jaxpr -> StableHLO, the lowering just before it
    cached: bool = False  # loaded from the persistent compilation cache rather than compiled
    thread: str = "MainThread"  # the Python thread that compiled it (train.compile_step_in_background's)


class CompileLog:
    """Records every program JAX compiles while installed (``with CompileLog() as log:`` or ``install()``).

    ``phase`` labels the records that follow (set it between parts of a run); ``trace_s`` sums the tracing
    events, which have no program of their own.
    """

    def __init__(self, phase: str = "") -> None:
        self.phase = phase
        self.programs: list[Program] = []
        self.trace_s = 0.0
        self._pending_lower_s: dict[str, float] = {}
        self._pending_hit = False
        self._lock = threading.Lock()
        self._installed = False

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        name = str(kwargs.get("fun_name", "?"))
        with self._lock:
            if event == LOWERING_EVENT:
                self._pending_lower_s[name] = self._pending_lower_s.get(name, 0.0) + duration
            elif event == TRACING_EVENT:
                self.trace_s += duration
            elif event == BACKEND_COMPILE_EVENT:
                self.programs.append(Program(name, self.phase, duration, self._pending_lower_s.pop(name, 0.0),
                                             self._pending_hit, threading.current_thread().name))
                self._pending_hit = False

    def _on_event(self, event: str, **kwargs) -> None:
        del kwargs
        if event == CACHE_HIT_EVENT:
            with self._lock:
                self._pending_hit = True

    def install(self) -> "CompileLog":
        if not self._installed:
            jax.monitoring.register_event_duration_secs_listener(self._on_duration)
            jax.monitoring.register_event_listener(self._on_event)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            jax.monitoring.unregister_event_duration_listener(self._on_duration)
            jax.monitoring.unregister_event_listener(self._on_event)
            self._installed = False

    def __enter__(self) -> "CompileLog":
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.uninstall()

    def count(self, phase: Optional[str] = None) -> int:
        return sum(1 for program in self.programs if phase is None or program.phase == phase)

    def seconds(self, phase: Optional[str] = None) -> float:
        """Compile (or cache-load) plus lowering seconds of the recorded programs."""
        return sum(p.compile_s + p.lower_s for p in self.programs if phase is None or p.phase == phase)

    def summary(self, since: int = 0, so_far: bool = True) -> str:
        """One line about the programs recorded from the ``since``-th on, e.g. ``4 XLA programs compiled so
        far (21.3 s lowering + compiling; 1 from the persistent cache)`` (without "so far": ``so_far=False``)."""
        programs = self.programs[since:]
        seconds = sum(program.compile_s + program.lower_s for program in programs)
        hits = sum(program.cached for program in programs)
        cached = f"; {hits} from the persistent cache" if hits else ""
        when = " so far" if so_far else ""
        return f"{len(programs)} XLA programs compiled{when} ({seconds:.1f} s lowering + compiling{cached})"


_PROCESS_LOG: Optional[CompileLog] = None


def process_log() -> CompileLog:
    """The process-wide ``CompileLog``, installed on first use and never removed: a caller notes
    ``len(process_log().programs)`` when it starts and reports ``summary(since=that)``."""
    global _PROCESS_LOG  # pylint: disable=global-statement
    if _PROCESS_LOG is None:
        _PROCESS_LOG = CompileLog().install()
    return _PROCESS_LOG
