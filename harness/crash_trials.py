"""The crash-and-resume check at scale (``launch/crash_test.py``): an uninterrupted reference run, then trials
that each SIGKILL the same training command at random moments, re-run it, and compare with the reference.

The kill and comparison machinery is ``harness.crash_test``; this module draws the random kill schedule
and runs the trials.
"""

import json
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

from flax_fld.runtime.atomic_files import write_json_atomically
from harness import crash_test

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch", "train.py")


def random_kill(rng: random.Random, profile: dict) -> crash_test.KillPoint:
    """A kill at a random moment of the reference run, during a random checkpoint write, or after one."""
    kind = rng.choice(("delay", "during_write", "after_checkpoint"))
    if kind == "delay":
        return crash_test.KillPoint("delay", round(rng.uniform(0.0, profile["seconds"]), 2))
    count = profile["writes"] if kind == "during_write" else profile["checkpoints"]
    return crash_test.KillPoint(kind, rng.randint(1, max(int(count), 1)))


def reference_run(command: list[str], workdir: str, env: dict, timeout_s: float) -> dict:
    """Runs (or reuses) WORKDIR/reference; returns its profile: seconds, checkpoint writes, periodic steps.

    ValueError when the reference run fails (the log is named).
    """
    folder, profile_path = os.path.join(workdir, "reference"), os.path.join(workdir, "reference.json")
    if os.path.exists(profile_path):
        with open(profile_path, encoding="utf-8") as handle:
            profile = json.load(handle)
        if profile["command"] == command[1:] and os.path.exists(os.path.join(folder, "eval.json")):
            return profile
    shutil.rmtree(folder, ignore_errors=True)
    run = crash_test.launch(command + [f"--workdir={folder}"], folder, os.path.join(workdir, "reference.log"),
                            env=env, timeout_s=timeout_s)
    if run.returncode != 0:
        raise ValueError(f"the reference run failed (rc={run.returncode}); see {run.log}")
    steps = {name: len([n for n in os.listdir(os.path.join(folder, name)) if n.isdigit()])
             for name in crash_test.CHECKPOINT_DIRS}
    with open(os.path.join(folder, "metrics.jsonl"), encoding="utf-8") as handle:
        epochs = sum(1 for line in handle if '"kind": "epoch"' in line)
    # Every epoch saves the periodic slot (tiny/default: checkpoint_every_epochs=1) and maybe the best one.
    profile = {"command": command[1:], "seconds": run.seconds, "checkpoints": max(steps["checkpoints"], 1),
               "writes": epochs + steps["checkpoints_best"]}
    write_json_atomically(profile_path, profile)
    return profile


def run_trials(config_file: str, overrides: Sequence[str], workdir: str, *, trials: int, kills_per_trial: int,
               seed: int, timeout_s: float, log: Callable[[str], Any] = print) -> int:
    """Runs the reference and ``trials`` killed-and-resumed runs of ``launch/train.py --config=config_file``
    plus ``overrides``; logs one verdict line per trial and returns how many differ from the reference.

    Children inherit the environment; JAX_COMPILATION_CACHE_DIR defaults to WORKDIR/jax_cache so that they
    share their compiled programs. ``seed`` seeds the kill schedule, not the training.
    """
    if trials < 1 or kills_per_trial < 1:
        raise ValueError(f"--kills={trials} and --kills_per_trial={kills_per_trial} must be >= 1")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(workdir, "jax_cache"))
    # The trials share one prepared data set with the reference run.
    command = [sys.executable, TRAIN_SCRIPT, f"--config={os.path.abspath(config_file)}",
               f"--config.data.data_dir={os.path.join(workdir, 'tfds_data')}"] + list(overrides)
    profile = reference_run(command, workdir, env, timeout_s)
    log(f"reference: {profile['seconds']:.1f}s, {profile['writes']} checkpoint writes")
    rng, failures = random.Random(seed), 0
    for trial in range(trials):
        folder = os.path.join(workdir, f"trial_{trial}")
        shutil.rmtree(folder, ignore_errors=True)
        kills = [random_kill(rng, profile) for _ in range(kills_per_trial)]
        launches = crash_test.run_trial(command + [f"--workdir={folder}"], folder, kills,
                                        log_dir=os.path.join(workdir, f"trial_{trial}_logs"), env=env,
                                        timeout_s=timeout_s)
        if launches[-1].returncode != 0:
            verdict = f"FAILED: rc={launches[-1].returncode}, see {launches[-1].log}"
        else:
            verdict = crash_test.compare_runs(os.path.join(workdir, "reference"), folder).verdict()
        failures += not verdict.startswith("IDENTICAL")
        log(f"trial {trial}: {' | '.join(run.describe() for run in launches)} -> {verdict}")
    log(f"{trials - failures}/{trials} trials identical to the uninterrupted run")
    return failures
