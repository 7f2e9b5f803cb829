"""Programs compiled ahead of their first use, in a background thread, and that first use waiting for them.

A job is ``(key, compile)``: ``compile()`` lowers and compiles a program from abstract arguments
(``fn.lower(*jax.ShapeDtypeStruct...).compile()``; XLA's compile releases the GIL), so that its executable lands
in the cache the program's first real call looks up, and that call compiles nothing. ``compile_in_background``
runs the jobs one after another in a daemon thread; the code that calls a program asks ``before_use(key)`` first:

- the job is compiling: wait for it (compiling the same program again beside it could only take longer);
- the job is queued: it is claimed, the thread skips it, and the call compiles it as it always did;
- done, failed, or never a job: go on at once.

A job that raises changes nothing: its program compiles at its first call, as without this module. The calls
themselves never change, so results are the same bit for bit. On by default on an accelerator, off on a CPU
(``enabled``); ``FLAX_FLD_AHEAD_OF_TIME=1`` or ``0`` decides.
"""

import os
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Optional

import jax

ENV_VAR = "FLAX_FLD_AHEAD_OF_TIME"

QUEUED, COMPILING, DONE, FAILED, CLAIMED = "queued", "compiling", "done", "failed", "claimed"

_lock = threading.Lock()
_states: dict[Hashable, str] = {}
_finished: dict[Hashable, threading.Event] = {}


def abstract(tree: Any) -> Any:
    """``tree``'s arrays as ``jax.ShapeDtypeStruct``s with their shardings and weak types (no device work): the
    arguments to lower a program with so that a later call with ``tree`` itself finds the executable."""
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None),
        weak_type=bool(getattr(leaf, "weak_type", False))), tree)


def enabled() -> bool:
    """``FLAX_FLD_AHEAD_OF_TIME`` when set (``0`` / ``false`` / ``no`` / ``off`` turn it off, anything else on);
    unset: on for an accelerator backend, off for the CPU.

    Why off on a CPU: there the background compile takes the cores the training steps run on; on the 2-core
    CPU a 149-step run took 174.7 s with it against 161.0 s without (BENCHMARKS.md). On a GPU or TPU host the
    steps run on the device and the host's cores are idle, which is what this module is for."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value:
        return value not in ("0", "false", "no", "off")
    return jax.default_backend() != "cpu"


def state(key: Hashable) -> Optional[str]:
    """``queued`` | ``compiling`` | ``done`` | ``failed`` | ``claimed``, or None for a key never queued."""
    with _lock:
        return _states.get(key)


def before_use(key: Hashable) -> None:
    """Call before each use of the program ``key`` names (cheap): waits while it compiles in the background,
    claims it when it is still queued (its first call then compiles it)."""
    with _lock:
        current = _states.get(key)
        if current == QUEUED:
            _states[key] = CLAIMED
            return
        event = _finished.get(key) if current == COMPILING else None
    if event is not None:
        event.wait()


def compile_in_background(jobs: Sequence[tuple[Hashable, Callable[[], Any]]], *,
                          name: str = "compile_ahead") -> Callable[[], None]:
    """Runs ``jobs`` in order in a daemon thread named ``name``. Returns ``finish``: it cancels the jobs not
    started and waits for the one compiling, if any (call it once the programs are no longer needed, e.g. at
    the end of a run, also after an error).

    A job queued or compiling in another thread is left to it; one done before (an earlier run in this process)
    runs again, which costs next to nothing while JAX still caches the program. Nothing happens when
    ``enabled()`` is False.
    """
    if not enabled() or not jobs:
        return lambda: None
    keys = []
    with _lock:
        for key, _ in jobs:
            if _states.get(key) not in (COMPILING, QUEUED):
                _states[key] = QUEUED
                _finished[key] = threading.Event()
                keys.append(key)
    compile_of = dict(jobs)

    def take_next(done: Optional[tuple[Hashable, str]]) -> Optional[Hashable]:
        # Records the job just run and marks the next queued one as compiling, under one lock, so that a first
        # use arriving in between waits for it rather than claiming it.
        with _lock:
            if done is not None:
                _states[done[0]] = done[1]
                _finished[done[0]].set()
            while keys:
                key = keys.pop(0)
                if _states.get(key) == QUEUED:  # not claimed by a first use, nor cancelled
                    _states[key] = COMPILING
                    return key
        return None

    def run() -> None:
        key = take_next(None)
        while key is not None:
            try:
                compile_of[key]()
                outcome = DONE
            except BaseException:  # pylint: disable=broad-except  # the first use compiles it instead
                outcome = FAILED
            key = take_next((key, outcome))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def finish() -> None:
        with _lock:
            for key in keys:  # those not taken yet
                if _states.get(key) == QUEUED:
                    _states[key] = CLAIMED
        thread.join()

    return finish
