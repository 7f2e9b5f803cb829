"""flax_fld/runs/cli.py (what the launch scripts share) and flax_fld/reporting/progress.py (their progress lines)."""

import logging as std_logging
import os
import re
import subprocess
import sys

import jax
import pytest
from absl import logging

from flax_fld.reporting import progress
from flax_fld.runs import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restored_cache_dir():
    """Puts jax's compilation cache setting back after the test (the test session has its own)."""
    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_the_cache_is_on_by_default_in_the_users_cache_folder(restored_cache_dir, tmp_path):
    environ = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    folder = cli.enable_compilation_cache(environ)
    assert folder == str(tmp_path / "xdg" / "flax_fld" / "jax")
    assert jax.config.jax_compilation_cache_dir == folder
    assert cli.compilation_cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "flax_fld", "jax")


def test_the_variable_names_another_folder_or_turns_the_cache_off(restored_cache_dir, tmp_path):
    jax.config.update("jax_compilation_cache_dir", "/untouched")
    for off in ("0", "off", "False"):
        assert cli.enable_compilation_cache({cli.CACHE_ENV: off}) is None
    assert jax.config.jax_compilation_cache_dir == "/untouched"
    mine = str(tmp_path / "mine")
    assert cli.enable_compilation_cache({cli.CACHE_ENV: mine}) == mine
    assert jax.config.jax_compilation_cache_dir == mine


def test_an_existing_jax_compilation_cache_dir_is_left_to_jax(restored_cache_dir):
    jax.config.update("jax_compilation_cache_dir", "/set/by/jax")
    environ = {"JAX_COMPILATION_CACHE_DIR": "/from/env", cli.CACHE_ENV: "/ignored"}
    assert cli.enable_compilation_cache(environ) == "/from/env"
    assert jax.config.jax_compilation_cache_dir == "/set/by/jax"


def test_quiet_library_logging_sets_warning_and_drops_only_routine_tfds_warnings():
    before, absl_logger = logging.get_verbosity(), std_logging.getLogger("absl")
    try:
        logging.set_verbosity(logging.INFO)
        cli.quiet_library_logging()
        cli.quiet_library_logging()  # the filter is installed once
        assert logging.get_verbosity() == logging.WARNING
        assert absl_logger.filters.count(cli._keep_record) == 1
    finally:
        logging.set_verbosity(before)
        absl_logger.removeFilter(cli._keep_record)

    def record(path, message):
        return std_logging.LogRecord("absl", std_logging.WARNING, path, 1, message, None, None)

    tfds = "/venv/site-packages/tensorflow_datasets/core/dataset_builder.py"
    assert not cli._keep_record(record(tfds, "Using custom data configuration: SyntheticConfig(...)"))
    assert cli._keep_record(record(tfds, "Dataset folder is corrupt"))
    assert cli._keep_record(record("/repo/flax_fld/training/train.py", "Using custom data configuration"))


def test_orbax_warnings_stay_off_the_console_and_its_errors_do_not():
    manager = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"

    def record(path, level):
        return std_logging.LogRecord("absl", level, path, 1, "Waiting for previous save to complete took 2.1 "
                                     "seconds. If this number is high, consider checkpointing less frequently.",
                                     None, None)

    assert not cli._keep_record(record(manager, std_logging.WARNING))
    assert cli._keep_record(record(manager, std_logging.ERROR))
    assert cli._keep_record(record("/repo/orbax_notes/train.py", std_logging.WARNING))  # only the package


def test_the_default_config_is_given_only_when_the_command_line_has_none():
    assert cli.with_default_config(["x.py", "--config.seed=1"], "/d.py") == ["x.py", "--config=/d.py", "--config.seed=1"]
    for given in (["x.py", "--config=t.py", "--config.seed=1"], ["x.py", "--config", "t.py"]):
        assert cli.with_default_config(given, "/d.py") == given


def test_a_misspelt_config_key_is_one_line_also_with_the_default_config():
    # launch/preview_data.py without --config starts from configs/default.py.
    result = subprocess.run([sys.executable, "launch/preview_data.py", "--config.data.imagesize=8"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: bad config override (") and "imagesize" in last


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0s"), (4.25, "4.2s"), (42.0, "42s"), (59.4, "59s"),
                                            (61, "1m01s"), (361.0, "6m01s"), (3600, "1h00m"), (3725.0, "1h02m"),
                                            (None, "?"), (float("inf"), "?"), (-1.0, "?")])
def test_durations_read_as_a_person_would_write_them(seconds, text):
    # One formatter serves the training progress line, the ablation and the evaluation logs.
    assert progress.format_duration(seconds) == text


def test_eta_is_the_mean_duration_times_what_is_left():
    assert progress.eta_seconds([], 3) is None
    assert progress.eta_seconds([60.0, 120.0], 4) == 360.0
    assert progress.eta_seconds([60.0], 0) == 0.0
    assert progress.progress_note(90.0, [60.0, 120.0], 1, unit="epoch") == \
        "1m30s elapsed, ETA 1m30s (1m30s per epoch, 1 epoch left)"
    assert progress.progress_note(5.0, [2.5], 2, unit="batch").endswith("(2.5s per batch, 2 batches left)")
    assert progress.progress_note(5.0, [2.5], 0, unit="batch") == "5.0s elapsed, no batches left"


def test_an_evaluation_pass_reports_progress_only_when_it_is_slow():
    now, lines = [0.0], []
    report = progress.BatchProgress(lines.append, "test split", every_seconds=30.0, clock=lambda: now[0])
    report("clean", 0, 4)
    for done in range(1, 5):  # a demo's pass: a second per batch
        now[0] += 1.0
        report("clean", done, 4)
    assert lines == []
    report("pgd20_linf_8/255", 0, 4)
    for done in range(1, 5):  # PGD-20 through the decouplers at 224 px: 20 s per batch
        now[0] += 20.0
        report("pgd20_linf_8/255", done, 4)
    assert lines == [  # 40 s: the first line; 80 s: the pass ends, and it has spoken, so it says so
        "test split, pgd20_linf_8/255: batch 2/4 | 40s elapsed, ETA 40s (20s per batch, 2 batches left)",
        "test split, pgd20_linf_8/255: batch 4/4 | 1m20s elapsed, no batches left"]


def test_an_unknown_layer_forms_value_stops_a_launch_script_with_one_line(monkeypatch):
    monkeypatch.setenv("FLAX_FLD_LAYER_FORMS", "gpu")
    with pytest.raises(SystemExit) as stopped:
        cli.check_environment()
    assert stopped.value.code == "error: FLAX_FLD_LAYER_FORMS='gpu'; expected one of auto, cpu, plain"
    monkeypatch.setenv("FLAX_FLD_LAYER_FORMS", "plain")
    cli.check_environment()  # a known value passes


# What no line of a launch script's console may come from: absl's own format (W1207 12:00:00.123 ...), orbax,
# TFDS's announcement of a preparation, a traceback.
LIBRARY_LINE = re.compile(r"^[IWEF]\d{4} |^WARNING:absl|orbax|Waiting for previous save|Downloading and preparing|"
                          r"downloaded and prepared|Traceback")


@pytest.mark.slow  # two tiny training runs at once, about a minute: make test-slow
def test_two_runs_at_once_share_one_new_data_folder_and_print_no_library_lines(tmp_path):
    data_dir = tmp_path / "data"
    runs = [subprocess.Popen(
        [sys.executable, "launch/train.py", "--config=configs/tiny.py", f"--workdir={tmp_path / name}",
         f"--config.data.data_dir={data_dir}", "--config.train.num_epochs=1", "--config.model.use_decouplers=False",
         "--config.train.async_checkpointing=True"],  # the demo's checkpointing: both slots saved in the background
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outputs = [run.communicate(timeout=900) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, out[-2000:] + err[-3000:]
        assert "Best-Worst%" in out
        assert [line for line in (out + err).splitlines() if LIBRARY_LINE.search(line)] == []
    lines = [line for out, err in outputs for line in (out + err).splitlines()]
    preparing = [line for line in lines if line.startswith("preparing the data set")]
    waiting = [line for line in lines if line.startswith("waiting for another process preparing")]
    assert len(preparing) == 1 and len(waiting) <= 1 and f"in {data_dir}" in preparing[0], lines
