"""Evaluation programs compiled ahead of their first use (flax_fld/runtime/ahead_of_time.py): a first use waits
for a program compiling in the background, claims one still queued, falls back when a compile fails; the
validation then compiles nothing and reports the same bits as without it (FLAX_FLD_AHEAD_OF_TIME=0)."""

import json
import os
import threading
import time

import jax
import pytest

from flax_fld.data import input_pipeline
from flax_fld.evaluation import evaluate
from flax_fld.models import fld
from flax_fld.runtime import ahead_of_time
from flax_fld.runtime.config_files import load_config
from flax_fld.training import compile_log, epoch_end, train

PMAPPED = "jit(_fun)"  # the name JAX gives every pmapped program (eval, logits and train steps alike)


def _wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _forget_compiled_programs():
    # Every program compiles again (or loads from the persistent cache, which the compile log records too).
    evaluate._parallel_eval_step.cache_clear()  # pylint: disable=protected-access
    evaluate._parallel_logits_step.cache_clear()  # pylint: disable=protected-access
    jax.clear_caches()


def test_a_first_use_waits_while_its_program_compiles_and_claims_one_still_queued(monkeypatch):
    monkeypatch.setenv(ahead_of_time.ENV_VAR, "1")
    release, ran = threading.Event(), []
    first, second = ("test", "first", object()), ("test", "second", object())

    def slow():
        ran.append("first")
        assert release.wait(30)

    finish = ahead_of_time.compile_in_background([(first, slow), (second, lambda: ran.append("second"))])
    _wait_until(lambda: ahead_of_time.state(first) == ahead_of_time.COMPILING)
    ahead_of_time.before_use(second)  # still queued: claimed, returns at once, the thread skips it
    assert ahead_of_time.state(second) == ahead_of_time.CLAIMED
    waiter = threading.Thread(target=ahead_of_time.before_use, args=(first,))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waits for the compile rather than compiling again
    release.set()
    waiter.join(30)
    assert not waiter.is_alive()
    finish()
    assert ran == ["first"] and ahead_of_time.state(first) == ahead_of_time.DONE


def test_a_failed_compile_leaves_the_program_to_its_first_use_and_the_switch_turns_it_off(monkeypatch):
    monkeypatch.delenv(ahead_of_time.ENV_VAR, raising=False)
    assert not ahead_of_time.enabled(), "off by default on the CPU backend: the compile would take the steps' cores"
    monkeypatch.setenv(ahead_of_time.ENV_VAR, "1")
    failing = ("test", "failing", object())

    def fail():
        raise RuntimeError("no compiler today")

    ahead_of_time.compile_in_background([(failing, fail)])()  # finish: waits for the thread
    assert ahead_of_time.state(failing) == ahead_of_time.FAILED
    ahead_of_time.before_use(failing)  # returns at once
    monkeypatch.setenv(ahead_of_time.ENV_VAR, "0")
    assert not ahead_of_time.enabled()
    never = ("test", "never", object())
    ahead_of_time.compile_in_background([(never, fail)])()
    assert ahead_of_time.state(never) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny config (eval batch 5: programs of this module's own) with the baseline model, which compiles
    in a fraction of the full model's time, and its freshly initialised variables."""
    config = load_config("tiny")
    config.model.use_decouplers = False
    config.train.eval_batch_size = 5
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds_data"))
    data = input_pipeline.prepare_data_source(config.data, config.data.data_dir)
    model = fld.create_fld_model(config.model, len(data.info.class_names), data.info.image_shape[-1])
    variables = fld.init_variables(model, jax.random.key(3), data.info.image_shape)
    return config, data, model, variables


def _validation_reports(config, data, model, variables):
    return [evaluate.evaluate_split(model, variables, config, data, split="validation", robust=robust)
            for robust in (False, True)]


def test_validation_takes_the_programs_compiled_ahead_and_reports_the_same_bits(tiny, monkeypatch):
    config, data, model, variables = tiny
    _forget_compiled_programs()
    monkeypatch.setenv(ahead_of_time.ENV_VAR, "0")
    with compile_log.CompileLog() as log:
        ahead_of_time.compile_in_background(evaluate.ahead_of_time_jobs(  # switched off: does nothing
            model, variables, config, data.info.image_shape, validation_robust=True))()
        expected = _validation_reports(config, data, model, variables)
    # Without: the clean and the PGD programs compile at their first use, on the caller's thread.
    assert {p.thread for p in log.programs} == {"MainThread"}
    assert [p.name for p in log.programs].count(PMAPPED) == 2

    _forget_compiled_programs()
    monkeypatch.setenv(ahead_of_time.ENV_VAR, "1")
    jobs = (evaluate.ahead_of_time_jobs(model, variables, config, data.info.image_shape, validation_robust=False,
                                        test_report=False)
            + evaluate.ahead_of_time_jobs(model, variables, config, data.info.image_shape, validation_robust=True,
                                          test_report=False))
    assert len(jobs) == 2
    with compile_log.CompileLog() as log:
        finish = ahead_of_time.compile_in_background(jobs, name="compile_ahead_test")
        _wait_until(lambda: all(ahead_of_time.state(key) in (ahead_of_time.DONE, ahead_of_time.FAILED)
                                for key, _ in jobs), timeout=600)
        assert [ahead_of_time.state(key) for key, _ in jobs] == [ahead_of_time.DONE] * 2
        compiled_ahead = len(log.programs)
        reports = _validation_reports(config, data, model, variables)
        finish()
    assert [p.name for p in log.programs[:compiled_ahead] if p.thread == "compile_ahead_test"].count(PMAPPED) == 2
    # The first validation compiled nothing: not the programs, not even its small eager operations.
    assert [(p.thread, p.name) for p in log.programs[compiled_ahead:]] == []
    assert reports == expected  # the same executables: the same bits


def _config(workdir_root, validate_robust=True):
    config = load_config("tiny")
    config.data.data_dir = os.path.join(workdir_root, "tfds_data")
    config.train.validate_robust = validate_robust
    return config


def _run_counting(config, workdir, monkeypatch):
    """train_and_evaluate, with the programs compiled in each part: [(part, [(thread, name), ...]), ...]."""
    parts, log = [], compile_log.process_log()

    def counting(module, name):
        original = getattr(module, name)

        def counted(*args, **kwargs):
            before = len(log.programs)
            try:
                return original(*args, **kwargs)
            finally:
                parts.append((name, [(p.thread, p.name) for p in log.programs[before:]]))

        monkeypatch.setattr(module, name, counted)

    counting(train, "train_epoch")
    counting(epoch_end, "finish_epoch")
    before = len(log.programs)
    train.train_and_evaluate(config, workdir)
    return parts, [(p.thread, p.name) for p in log.programs[before:]]


def _written(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as handle:
        epochs = [record for record in map(json.loads, handle) if record["kind"] == "epoch"]
    with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as handle:
        return epochs, json.load(handle)


@pytest.mark.slow  # two tiny training runs: a few minutes
def test_a_run_compiles_nothing_at_its_first_validation_and_reports_the_same_bits(tmp_path, monkeypatch):
    config = _config(str(tmp_path))
    _forget_compiled_programs()
    with monkeypatch.context() as patch:
        patch.setenv(ahead_of_time.ENV_VAR, "0")
        without_parts, _ = _run_counting(config, str(tmp_path / "without"), patch)
    _forget_compiled_programs()
    with monkeypatch.context() as patch:
        patch.setenv(ahead_of_time.ENV_VAR, "1")
        parts, everything = _run_counting(config, str(tmp_path / "with"), patch)

    assert [name for name, _ in parts] == ["train_epoch", "finish_epoch"] * 2
    # Without: epoch 1's end compiles end_epoch and the robust validation program on the main thread.
    assert ("MainThread", PMAPPED) in without_parts[1][1] and ("MainThread", "jit(end_epoch)") in without_parts[1][1]
    # With: nothing compiles on the main thread between epoch 1's last step and the next epoch; the background
    # thread compiled end_epoch and the evaluation programs (validation's, the test report's two, the logits').
    assert [entry for entry in parts[1][1] if entry[0] == "MainThread"] == []
    background = [name for thread, name in everything if thread == "compile_evaluation"]
    assert "jit(end_epoch)" in background and background.count(PMAPPED) == 3  # robust validation = test's first
    assert [name for thread, name in everything if thread == "MainThread"].count(PMAPPED) == 0
    assert _written(str(tmp_path / "with")) == _written(str(tmp_path / "without"))
