"""Crash and resume: launch/train.py SIGKILLed at several moments and re-run ends bit-identical on the CPU to an
uninterrupted run of the same seed; half-written checkpoints are never restored; a corrupt one stops the run
with one line.

Tiny preset (32 px, 2 epochs x 3 steps, a checkpoint every epoch) with asynchronous checkpointing on, so the
"during a write" kill lands while the background thread writes. One reference run serves every check; it
runs in a thread while the killed trial runs, and both use the persistent compilation cache of
tests/conftest.py. eval.json fields ignored in the comparison: crash_test.EVAL_IGNORED_KEYS (none today:
eval.json has no wall-clock field).
"""

import concurrent.futures
import os
import shutil
import subprocess
import sys

import pytest

from flax_fld.data import input_pipeline
from flax_fld.runtime import config_files
from flax_fld.training import checkpointing
from harness import crash_test
from harness.crash_test import KillPoint

pytestmark = pytest.mark.slow  # killed and resumed training runs, minutes: make test-slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS, EPOCH_STEPS = 6, 3  # configs/tiny.py: ~57 training images, global batch 16 on 2 devices
TIMEOUT_S = 600


def train_command(workdir: str, data_dir: str) -> list[str]:
    return [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--config={REPO}/configs/tiny.py",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.train.async_checkpointing=True",
            "--config.train.num_grid_examples=0"]  # no decoupling grid: one traced program less per launch


def corrupt_newest_checkpoint(workdir: str) -> str:
    """Truncates the largest array file of the newest periodic checkpoint to half; returns that step's folder."""
    newest = os.path.join(workdir, checkpointing.PERIODIC_DIRNAME, str(TOTAL_STEPS))
    files = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(newest, "state")) for f in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as handle:
        handle.truncate(os.path.getsize(largest) // 2)
    return newest


def reference_then_corrupt_copy(root, data_dir: str) -> tuple[crash_test.Launch, str, subprocess.CompletedProcess]:
    """The uninterrupted run, then a re-run of a copy whose newest checkpoint is truncated.

    Runs in a thread beside the killed trial (which takes longer), so the second launch costs no wall time.
    """
    reference = str(root / "reference")
    run = crash_test.launch(train_command(reference, data_dir), reference, str(root / "reference.log"),
                            timeout_s=TIMEOUT_S)
    corrupt = str(root / "corrupt")
    if run.returncode == 0:
        shutil.copytree(reference, corrupt)
    newest = corrupt_newest_checkpoint(corrupt) if run.returncode == 0 else ""
    rerun = subprocess.run(train_command(corrupt, data_dir), capture_output=True, text=True, timeout=TIMEOUT_S)
    return run, newest, rerun


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(reference workdir, trial workdir, trial launches, corrupt re-run)``: the trial is killed three times.

    1. right after the epoch-1 periodic checkpoint (step 3) is finished;
    2. during a step of epoch 2 (0.2 s after step 4 is logged: step 5 is running);
    3. during the first checkpoint write of epoch 2 (step 6; asynchronous, so training has moved on);
    then it runs to the end, from step 3 next to the half-written step-6 folder. Every launch after the
    first resumes, so only one pays for epoch 1.
    """
    root = tmp_path_factory.mktemp("crash")
    data_dir, trial = str(root / "tfds_data"), str(root / "trial")
    # One preparation of the data set before the two concurrent runs read it.
    input_pipeline.prepare_data_source(config_files.load_config("tiny").data, data_dir)
    kills = [KillPoint("after_checkpoint", 1), KillPoint("log", r"^step 4/6", 0.2), KillPoint("during_write", 1)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(reference_then_corrupt_copy, root, data_dir)
        launches = crash_test.run_trial(train_command(trial, data_dir), trial, kills, log_dir=str(root / "logs"),
                                        timeout_s=TIMEOUT_S)
        reference_run, corrupt_step, corrupt_rerun = future.result()
    print(f"reference run: {reference_run.seconds:.1f}s")
    assert reference_run.returncode == 0, open(reference_run.log, encoding="utf-8").read()[-3000:]
    return str(root / "reference"), trial, launches, (corrupt_step, corrupt_rerun)


def test_every_kill_point_is_hit_and_the_last_launch_resumes(runs):
    _, _, launches, _ = runs
    print("\n".join(run.describe() for run in launches))  # shown with pytest -s
    assert [run.killed for run in launches] == [True, True, True, False], [run.describe() for run in launches]
    after_checkpoint, mid_step, during_write, final = launches
    assert after_checkpoint.steps == [EPOCH_STEPS], after_checkpoint.describe()
    assert mid_step.steps == [EPOCH_STEPS], mid_step.describe()
    # Killed while the step-6 folder was still under its temporary name.
    assert during_write.tmp_dirs and during_write.steps == [EPOCH_STEPS], during_write.describe()
    assert final.returncode == 0, open(final.log, encoding="utf-8").read()[-3000:]
    logs = [open(run.log, encoding="utf-8").read() for run in launches]
    assert "resuming" not in logs[0]
    # Every later launch, the last one included, resumes from the finished step, never the half-written one.
    assert all(f"from step {EPOCH_STEPS} " in log for log in logs[1:])


def test_killed_and_resumed_run_is_bit_identical_to_uninterrupted_run(runs):
    reference, trial, _, _ = runs
    comparison = crash_test.compare_runs(reference, trial)
    assert comparison.differences == [], comparison.verdict()
    step, arrays, meta = crash_test.read_checkpoint(trial)
    assert step == TOTAL_STEPS and meta["epoch"] == 2
    assert comparison.arrays == 2 * len(arrays)  # final and best checkpoints, every array
    expected = crash_test.read_checkpoint(reference)[1]
    # Spelled out for the arrays a resume must restore exactly: the parameters and the class-adaptive epsilon
    # and beta (compare_runs already checked them with all the others).
    params = [name for name in arrays if name.startswith("params/")]
    for name in params + ["class_epsilon", "class_beta"]:
        assert arrays[name].tobytes() == expected[name].tobytes(), name
    assert params


def test_half_written_checkpoint_is_never_restored_and_is_cleaned_up(runs, tmp_path):
    reference, _, _, _ = runs
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    periodic = os.path.join(workdir, checkpointing.PERIODIC_DIRNAME)
    # What a kill during the epoch-2 write leaves: the step's folder under orbax's temporary name.
    half_written = os.path.join(periodic, f"{TOTAL_STEPS}{crash_test.TMP_MARKER}-1234")
    os.rename(os.path.join(periodic, str(TOTAL_STEPS)), half_written)
    checkpointer = checkpointing.Checkpointer(workdir, keep=3, async_save=False)
    try:
        assert checkpointer.latest_step() == EPOCH_STEPS
    finally:
        checkpointer.close()
    assert not os.path.exists(half_written)
    assert crash_test.read_checkpoint(workdir)[0] == EPOCH_STEPS


def test_corrupt_checkpoint_stops_with_one_line_naming_it(runs):
    _, _, _, (newest, result) = runs  # re-run of a copy of the reference with its step-6 array file truncated
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint {newest} is unreadable"), result.stderr[-2000:]
