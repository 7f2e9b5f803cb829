"""crash_test.compare_checkpoints / compare_eval, on which the exact-resume and multi-process claims rest, shown
known differences: a flipped bit, a changed or missing key, an array beyond its own tolerance."""

import json
import os

import flax
import jax.numpy as jnp
import numpy as np

from flax_fld.training import checkpointing
from harness import crash_test


@flax.struct.dataclass
class _State:
    step: jnp.ndarray
    params: dict
    class_epsilon: jnp.ndarray
    rng: jnp.ndarray


def _state(**changes) -> _State:
    fields = dict(step=np.int32(3), params={"conv": {"kernel": np.linspace(-1, 1, 12, dtype=np.float32)}},
                  class_epsilon=np.full(4, 8 / 255, np.float32), rng=np.array([0, 7], np.uint32))
    fields.update(changes)
    return _State(**fields)


def _write(workdir, state: _State, meta: dict, report: dict | None = None) -> str:
    saver = checkpointing.Checkpointer(str(workdir), keep=1, async_save=False)
    saver.save(state, meta)
    saver.close()
    with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as handle:
        json.dump(report or {"average": 75.0, "per_class_accuracy": {"normal": 80.0}}, handle)
    return str(workdir)


META = {"epoch": 1, "best_epoch": 1, "best_value": 60.0}


def test_identical_runs_compare_identical(tmp_path):
    reference = _write(tmp_path / "a", _state(), META)
    candidate = _write(tmp_path / "b", _state(), META)
    comparison = crash_test.compare_checkpoints(reference, candidate)
    assert comparison.differences == [] and comparison.arrays == 4
    assert comparison.verdict().startswith("IDENTICAL")
    assert crash_test.compare_eval(reference, candidate) == []


def test_one_flipped_bit_is_reported_and_only_a_tolerance_of_its_kind_admits_it(tmp_path):
    kernel = np.linspace(-1, 1, 12, dtype=np.float32)
    flipped = kernel.copy()
    flipped.view(np.uint32)[5] ^= 1  # the last mantissa bit of one weight
    reference = _write(tmp_path / "a", _state(), META)
    candidate = _write(tmp_path / "b", _state(params={"conv": {"kernel": flipped}}), META)
    exact = crash_test.compare_checkpoints(reference, candidate)
    assert exact.differences == ["checkpoints/params/conv/kernel: not bit-identical (1 of 12 values differ)"]
    assert exact.verdict().startswith("DIFFERENT")
    # A tolerance given to another kind of array does not cover the weights.
    assert crash_test.compare_checkpoints(reference, candidate, tolerances={"class_epsilon": 1.0}).differences
    assert crash_test.compare_checkpoints(reference, candidate, tolerances={"params": 1e-6}).differences == []


def test_a_per_class_epsilon_beyond_its_own_bound_is_reported_under_a_loose_default(tmp_path):
    reference = _write(tmp_path / "a", _state(), META)
    moved = np.full(4, 8 / 255, np.float32) + np.float32(2e-3)
    candidate = _write(tmp_path / "b", _state(class_epsilon=moved), META)
    loose = crash_test.compare_checkpoints(reference, candidate, atol=5e-2)
    assert loose.differences == []  # a weights-sized bound hides a change of 6 % of epsilon...
    strict = crash_test.compare_checkpoints(reference, candidate, atol=5e-2, tolerances={"class_epsilon": 1e-3})
    assert len(strict.differences) == 1 and strict.differences[0].startswith("checkpoints/class_epsilon: max |diff|")
    assert "class_epsilon within 0.001" in strict.tolerance


def test_integer_arrays_step_and_meta_are_always_exact(tmp_path):
    reference = _write(tmp_path / "a", _state(), META)
    candidate = _write(tmp_path / "b", _state(rng=np.array([0, 8], np.uint32)),
                       {"epoch": 1, "best_epoch": 0, "extra": True})
    differences = crash_test.compare_checkpoints(reference, candidate, atol=1.0, rtol=1.0).differences
    assert "checkpoints/rng: not bit-identical (1 of 2 values differ)" in differences
    assert "checkpoints/meta.best_epoch: 0 != 1" in differences
    assert "checkpoints/meta.best_value: missing on one side" in differences
    assert "checkpoints/meta.extra: missing on one side" in differences


def test_eval_json_changed_and_missing_keys_are_reported(tmp_path):
    reference = _write(tmp_path / "a", _state(), META, {"average": 75.0, "per_class_accuracy": {"normal": 80.0}})
    candidate = _write(tmp_path / "b", _state(), META, {"average": 75.5, "robust": {}})
    differences = crash_test.compare_eval(reference, candidate)
    assert differences == ["eval.json.per_class_accuracy: missing on one side",
                           "eval.json.robust: missing on one side", "eval.json.average: 75.5 != 75.0"]
    assert crash_test.compare_eval(reference, candidate, metric_atol=1.0, ignore_eval_keys=("robust",)) == [
        "eval.json.per_class_accuracy: missing on one side"]
