"""Several JAX processes: ``jax.distributed`` start-up and barriers.

``initialize`` is what ``launch/train.py --multihost`` calls before anything touches a JAX backend. Starting
and stopping processes is not the package's business: ``harness/local_processes.py`` launches N local copies
of a command for the multi-process tests.

On the CPU (XLA's gloo collectives) two measured facts shape ``initialize``:

* a group of devices is connected at its first collective, and gloo waits only 30 s there for the other
  processes ("Gloo context initialization failed: DEADLINE_EXCEEDED"); once connected, a collective waits
  for a late peer (330 s measured);
* only process 0 profits from the persistent compilation cache (jax writes it from process 0 only, and
  keys entries by device ids), so the others compile every program from scratch and reach the first
  train step, or orbax's first barrier, minutes later.

Hence ``connect_collectives`` right after start-up, while the processes are in step: the device groups of
the pmapped steps (every device) and of ``multihost_utils`` (orbax's barriers: one device per process).
"""

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
from jax import lax

T = TypeVar("T")
BARRIER_TIMEOUT_S = 600  # Long enough for a process that compiles everything while another waits.


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
               *, timeout_s: int = 300) -> None:
    """``jax.distributed.initialize`` (arguments may be None on TPU/SLURM/MPI) then connects the collectives.

    Raises ValueError with one line when the coordinator cannot be reached within ``timeout_s``.
    """
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=int(timeout_s))
    except (RuntimeError, ValueError) as error:  # jaxlib's errors derive from RuntimeError
        message = " ".join(str(error).split())[:300]
        raise ValueError(f"jax.distributed.initialize(coordinator_address={coordinator_address!r}, "
                         f"num_processes={num_processes}, process_id={process_id}) failed: {message}") from None
    if jax.process_count() > 1:
        connect_collectives()


def connect_collectives() -> None:
    """Runs once each collective the run uses, so its device group is connected while all are in step.

    The train and evaluation steps pmap over every device in the same order, and orbax synchronises with
    ``multihost_utils.sync_global_devices``; later calls reuse those connections however late one process
    arrives (see the module docstring).
    """
    from jax.experimental import multihost_utils

    barrier("flax_fld_connect_collectives")
    total = jax.pmap(lambda x: lax.psum(x, "devices"), axis_name="devices")(jnp.ones(jax.local_device_count()))
    if int(total[0]) != jax.device_count():
        raise RuntimeError(f"psum over {jax.device_count()} devices gave {int(total[0])}")
    multihost_utils.sync_global_devices("flax_fld_connect_collectives")


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Waits until every process reached ``barrier(name)``; no-op in a single process.

    The coordination service's barrier, not a collective, so it has its own time limit and no gloo window.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the client orbax and jax's own tests use

    jax_distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))


def main_process_first(fn: Callable[[], T]) -> T:
    """``fn()`` on process 0, then on the others (e.g. preparing a data set on a shared file system)."""
    if jax.process_index() == 0:
        result = fn()
        barrier("flax_fld_main_process_first")
        return result
    barrier("flax_fld_main_process_first")
    return fn()
