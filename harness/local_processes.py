"""Local multi-process launches for tests and CPU checks: N copies of ``launch/train.py`` on 127.0.0.1.

``launch_local`` starts each copy in its own process group with the loopback coordinator flags, enforces a
wall-clock limit and kills every process as soon as one fails (a peer of a dead process would wait in a
collective for minutes). A user can run it to check a config under ``jax.distributed`` on a CPU.
"""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any


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
