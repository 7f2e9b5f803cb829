"""Crash-and-resume check at scale: kill ``launch/train.py`` with SIGKILL at random moments, re-run it, and
compare with an uninterrupted run of the same config and seed (harness/crash_trials.py).

  python launch/crash_test.py --config=configs/tiny.py --workdir=/tmp/fld_crash --kills=20 --seed=0 \
      [--config.train.async_checkpointing=True ...]

WORKDIR/reference is the uninterrupted run (made once, reused while its config is unchanged);
WORKDIR/trial_<i> is trial i, re-created each time: one random kill (``--kills_per_trial`` kills) drawn from
a random moment of the reference run's duration, an asynchronous checkpoint write, or just after a
checkpoint; then runs until the command finishes. One verdict line per trial, e.g.

  trial 3: during checkpoint write #2: killed at 14.2s, steps [3] | final run rc=0 (31.0s) -> IDENTICAL: ...

Exit status 1 if any trial differs or fails. ``--seed`` seeds the kill schedule; the training seed is the
config's (``--config.seed``). Children inherit the environment (XLA_FLAGS etc.); JAX_COMPILATION_CACHE_DIR
defaults to WORKDIR/jax_cache so that re-runs skip compilation.
"""

import functools
import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # harness/ is not installed
from flax_fld.runs import cli  # noqa: E402  pylint: disable=wrong-import-position
from harness import crash_trials  # noqa: E402  pylint: disable=wrong-import-position

# A config flag (not a plain path) so that a bad --config.KEY=VALUE stops here, before any launch.
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (e.g. configs/tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the reference run and the trials.")
_KILLS = flags.DEFINE_integer("kills", 5, "Number of trials (each killed --kills_per_trial times).")
_PER_TRIAL = flags.DEFINE_integer("kills_per_trial", 1, "Kills before the run is let finish.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random kill schedule.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 1800.0, "Wall-clock limit of one launch.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config_file = config_flags.get_config_filename(flags.FLAGS["config"])
    try:
        _CONFIG.value.to_dict()  # a missing or broken config file stops here with one line
    except Exception as error:  # config files may raise anything
        sys.exit(f"error: cannot load --config={config_file}: {' '.join(str(error).split())[:300]}")
    # The overrides as given, forwarded verbatim to every launch of launch/train.py.
    overrides = [arg for arg in sys.argv[1:] if arg.startswith("--config.")]
    try:
        failures = crash_trials.run_trials(config_file, overrides, _WORKDIR.value, trials=_KILLS.value,
                                           kills_per_trial=_PER_TRIAL.value, seed=_SEED.value,
                                           timeout_s=_TIMEOUT.value, log=functools.partial(print, flush=True))
    except ValueError as error:
        sys.exit(f"error: {error}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    cli.run_main(main)
