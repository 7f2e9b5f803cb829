"""Train and evaluate: ``python launch/train.py --config=configs/default.py --workdir=DIR [--config.key=value]``.

Re-running the same command resumes from DIR/checkpoints. On a TPU pod slice or several GPU hosts, pass
``--multihost`` (or run under a launcher that sets the standard JAX coordinator environment) and the same
command runs on every host. Several CPU processes on one machine (e.g. 2 x 2 host devices)::

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python launch/train.py ... --multihost \
        --coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=I   # I = 0 and 1
"""

import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from flax_fld.runs import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (e.g. configs/default.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, plots, eval.json.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False,
    "Call jax.distributed.initialize() (coordinator from flags below or auto-detected on TPU/SLURM/"
    "JAX_COORDINATOR_ADDRESS).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host only).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host only).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host only).")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> None:
    """``distributed.initialize`` when asked by flag or by the standard environment variable."""
    if _MULTIHOST.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        from flax_fld.runtime import distributed

        try:
            distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        except ValueError as error:
            sys.exit(f"error: {error}")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    initialize_distributed()
    import jax

    from flax_fld.training import train

    print(f"JAX {jax.__version__}: {jax.process_count()} process(es), {jax.local_device_count()} local "
          f"{jax.devices()[0].platform} device(s)", flush=True)
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FloatingPointError) as error:
        # Bad config/data or a diverged run: one clear line, non-zero exit, checkpoints untouched.
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    cli.run_main(main)
