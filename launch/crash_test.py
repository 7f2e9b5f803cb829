"""Crash-and-resume check at scale: kill ``launch/train.py`` with SIGKILL at random moments, re-run it, and
compare with an uninterrupted run of the same config and seed.

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

import json
import os
import random
import shutil
import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from flax_fld import config_files, crash_test

# A config flag (not a plain path) so that a bad --config.KEY=VALUE stops here, before any launch.
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (e.g. configs/tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the reference run and the trials.")
_KILLS = flags.DEFINE_integer("kills", 5, "Number of trials (each killed --kills_per_trial times).")
_PER_TRIAL = flags.DEFINE_integer("kills_per_trial", 1, "Kills before the run is let finish.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random kill schedule.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 1800.0, "Wall-clock limit of one launch.")
flags.mark_flags_as_required(["config", "workdir"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_kill(rng: random.Random, profile: dict) -> crash_test.KillPoint:
    """A kill at a random moment of the reference run, during a random checkpoint write, or after one."""
    kind = rng.choice(("delay", "during_write", "after_checkpoint"))
    if kind == "delay":
        return crash_test.KillPoint("delay", round(rng.uniform(0.0, profile["seconds"]), 2))
    count = profile["writes"] if kind == "during_write" else profile["checkpoints"]
    return crash_test.KillPoint(kind, rng.randint(1, max(int(count), 1)))


def reference_run(command: list[str], workdir: str, env: dict) -> dict:
    """Runs (or reuses) WORKDIR/reference; returns its profile: seconds, checkpoint writes, periodic steps."""
    folder, profile_path = os.path.join(workdir, "reference"), os.path.join(workdir, "reference.json")
    if os.path.exists(profile_path):
        with open(profile_path, encoding="utf-8") as handle:
            profile = json.load(handle)
        if profile["command"] == command[1:] and os.path.exists(os.path.join(folder, "eval.json")):
            return profile
    shutil.rmtree(folder, ignore_errors=True)
    run = crash_test.launch(command + [f"--workdir={folder}"], folder, os.path.join(workdir, "reference.log"),
                            env=env, timeout_s=_TIMEOUT.value)
    if run.returncode != 0:
        sys.exit(f"error: the reference run failed (rc={run.returncode}); see {run.log}")
    steps = {name: len([n for n in os.listdir(os.path.join(folder, name)) if n.isdigit()])
             for name in crash_test.CHECKPOINT_DIRS}
    with open(os.path.join(folder, "metrics.jsonl"), encoding="utf-8") as handle:
        epochs = sum(1 for line in handle if '"kind": "epoch"' in line)
    # Every epoch saves the periodic slot (tiny/default: checkpoint_every_epochs=1) and maybe the best one.
    profile = {"command": command[1:], "seconds": run.seconds, "checkpoints": max(steps["checkpoints"], 1),
               "writes": epochs + steps["checkpoints_best"]}
    with open(profile_path, "w", encoding="utf-8") as handle:
        json.dump(profile, handle, indent=2)
    return profile


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
    # The overrides as given, forwarded verbatim to every launch of launch/train.py.
    overrides = [arg for arg in sys.argv[1:] if arg.startswith("--config.")]
    config_file = os.path.abspath(config_flags.get_config_filename(flags.FLAGS["config"]))
    try:
        _CONFIG.value.to_dict()  # a missing or broken config file stops here with one line
    except Exception as error:  # config files may raise anything
        sys.exit(f"error: cannot load --config={config_file}: {' '.join(str(error).split())[:300]}")
    if _KILLS.value < 1 or _PER_TRIAL.value < 1:
        sys.exit(f"error: --kills={_KILLS.value} and --kills_per_trial={_PER_TRIAL.value} must be >= 1")
    workdir = os.path.abspath(_WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(workdir, "jax_cache"))
    # The reference run and the trials, all in WORKDIR, share WORKDIR/tfds_data (input_pipeline.resolve_data_dir).
    command = [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--config={config_file}"] + overrides
    profile = reference_run(command, workdir, env)
    print(f"reference: {profile['seconds']:.1f}s, {profile['writes']} checkpoint writes", flush=True)
    rng, failures = random.Random(_SEED.value), 0
    for trial in range(_KILLS.value):
        folder = os.path.join(workdir, f"trial_{trial}")
        shutil.rmtree(folder, ignore_errors=True)
        kills = [random_kill(rng, profile) for _ in range(_PER_TRIAL.value)]
        launches = crash_test.run_trial(command + [f"--workdir={folder}"], folder, kills,
                                        log_dir=os.path.join(workdir, f"trial_{trial}_logs"), env=env,
                                        timeout_s=_TIMEOUT.value)
        if launches[-1].returncode != 0:
            verdict = f"FAILED: rc={launches[-1].returncode}, see {launches[-1].log}"
        else:
            verdict = crash_test.compare_runs(os.path.join(workdir, "reference"), folder).verdict()
        failures += not verdict.startswith("IDENTICAL")
        print(f"trial {trial}: {' | '.join(run.describe() for run in launches)} -> {verdict}", flush=True)
    print(f"{_KILLS.value - failures}/{_KILLS.value} trials identical to the uninterrupted run", flush=True)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    config_files.run_main(main)
