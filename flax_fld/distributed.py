"""Several JAX processes: ``jax.distributed`` start-up, barriers, and local launches for tests and CPU runs.

``initialize`` is what ``launch/train.py --multihost`` calls before anything touches a JAX backend.
``launch_local`` starts N copies of a command on this machine (loopback coordinator, one process group
each, a wall-clock limit, every process killed on any failure): the multi-process test uses it, and so can
a user who wants to check a config under ``jax.distributed`` on a CPU.

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

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; a race with other programs is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_flags(num_processes: int, process_id: int, port: int) -> list[str]:
    """The ``launch/train.py`` flags of process ``process_id`` in a loopback-only run."""
    return ["--multihost", f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
            f"--process_id={process_id}"]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILLs a process started with ``start_new_session=True`` and its children (nothing else); waits."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def launch_local(command: Sequence[str], num_processes: int, *, log_dir: str, timeout_s: float,
                 env: dict[str, str] | None = None, poll_s: float = 0.2) -> list[dict[str, Any]]:
    """Runs ``command + process_flags(...)`` as ``num_processes`` processes on 127.0.0.1 and waits for all.

    Logs go to ``log_dir/process_<i>.log``. As soon as one process fails, or ``timeout_s`` passes, every
    process still running is killed (a peer of a dead process would wait in a collective for minutes).
    Returns one ``{'process_id', 'returncode', 'log', 'seconds'}`` per process; ``returncode`` is None for
    a process killed at the time limit and -9 for one killed because a peer failed.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes}; must be >= 1")
    os.makedirs(log_dir, exist_ok=True)
    port, start = free_port(), time.monotonic()
    processes, logs, results = [], [], {}
    try:
        for process_id in range(num_processes):
            log = os.path.join(log_dir, f"process_{process_id}.log")
            with open(log, "wb") as handle:
                processes.append(subprocess.Popen(
                    list(command) + process_flags(num_processes, process_id, port), stdout=handle,
                    stderr=subprocess.STDOUT, env=env, start_new_session=True))
            logs.append(log)
        while len(results) < num_processes and time.monotonic() - start < timeout_s:
            for process_id, process in enumerate(processes):
                if process_id not in results and process.poll() is not None:
                    results[process_id] = process.returncode
            if any(code != 0 for code in results.values()):
                break
            time.sleep(poll_s)
    finally:
        for process in processes:
            kill_group(process)
    seconds = time.monotonic() - start
    timed_out = len(results) < num_processes and not any(code != 0 for code in results.values())
    return [{"process_id": index, "log": logs[index], "seconds": seconds,
             "returncode": results[index] if index in results else (None if timed_out else process.returncode)}
            for index, process in enumerate(processes)]
