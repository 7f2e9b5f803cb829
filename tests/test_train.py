"""Training: Eqs. 1/2 at epoch end, the pmapped step (loss falls, 2 devices == 1 device), resume.

Runs on the tiny preset with 2 forced host devices (tests/conftest.py). Compilation dominates the run time,
so each program is compiled once: the full model only in the resume test (train.parallel_train_step and
the evaluation step are cached per model and config, and the resumed run reuses them).
"""

import dataclasses
import json
import os
import shutil

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from model_helpers import synthetic_fld_variables

from flax_fld import models
from flax_fld.data import input_pipeline
from flax_fld.models import fld
from flax_fld.runtime.config_files import load_config
from flax_fld.training import checkpointing, epoch_end, train, weight_averaging
from flax_fld.training.train_state import TrainState


def adv_config(**overrides) -> ml_collections.ConfigDict:
    config = load_config("default").adv
    config.start_epoch = 0  # Eq. 2's beta from the first epoch on (start_epoch has its own tests)
    config.update(overrides)
    return config


@jax.jit  # one program (op by op, building the state was a dozen)
def counter_state(correct, seen, previous) -> TrainState:
    """A TrainState with given epoch counters and a trivial model (end_epoch never looks at the weights)."""
    num_classes = len(correct)
    state = TrainState.create(
        params={"w": jnp.zeros((2,))}, batch_stats={}, tx=optax.sgd(0.1),
        class_epsilon=jnp.full((num_classes,), 8 / 255), class_beta=jnp.full((num_classes,), 6 / 7),
        class_acc=jnp.asarray(previous, jnp.float32), rng=jax.random.key(0), average=False, average_enabled=False,
    )
    return state.replace(adv_correct=jnp.asarray(correct, jnp.int32), adv_seen=jnp.asarray(seen, jnp.int32))


class TestEndEpoch(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_adaptive_applies_eq1_and_eq2_to_counter_accuracy(self):
        adv = adv_config(calibration="adaptive", warmup_epochs=0, epsilon=8 / 255, beta=6.0, sigma=0.3, mu=0.4)
        # Class 1 is unseen this epoch: it keeps its previous accuracy 0.2.
        state = counter_state([3, 0, 5, 2], [4, 0, 5, 8], [0.9, 0.2, 0.9, 0.9])
        new = self.variant(lambda s: train.end_epoch(s, adv))(state)
        acc = np.array([0.75, 0.2, 1.0, 0.25])
        np.testing.assert_allclose(new.class_acc, acc, rtol=1e-6)
        np.testing.assert_allclose(new.class_epsilon, (0.3 + acc) * 8 / 255, rtol=1e-6)
        scaled = (0.4 + acc) * 6.0
        np.testing.assert_allclose(new.class_beta, scaled / (1 + scaled), rtol=1e-6)
        np.testing.assert_array_equal(new.adv_correct, 0)
        np.testing.assert_array_equal(new.adv_seen, 0)
        assert int(new.epoch) == 1

    @chex.variants(with_jit=True, without_jit=True)
    def test_warmup_keeps_uniform_values_then_calibrates(self):
        adv = adv_config(calibration="adaptive", warmup_epochs=2)
        end = self.variant(lambda s: train.end_epoch(s, adv))
        state = end(counter_state([1, 2, 3, 4], [4, 4, 4, 4], [0.5] * 4))
        np.testing.assert_allclose(state.class_epsilon, np.full(4, adv.epsilon), rtol=1e-6)
        np.testing.assert_allclose(state.class_beta, np.full(4, adv.beta / (1 + adv.beta)), rtol=1e-6)
        state = end(state.replace(adv_correct=jnp.array([0, 4, 2, 4], jnp.int32), adv_seen=jnp.full(4, 4, jnp.int32)))
        acc = np.array([0.0, 1.0, 0.5, 1.0])
        np.testing.assert_allclose(state.class_epsilon, (adv.sigma + acc) * adv.epsilon, rtol=1e-6)
        beta = np.asarray(state.class_beta)  # indexed on the host: each device-array index is a program
        assert beta[0] < beta[2] < beta[1]

    def test_fixed_mode_is_plain_trades(self):
        adv = adv_config(calibration="fixed", warmup_epochs=0)
        state = train.end_epoch(counter_state([0, 1, 2, 3], [3, 3, 3, 3], [0.5] * 4), adv)
        np.testing.assert_allclose(state.class_epsilon, np.full(4, adv.epsilon), rtol=1e-6)
        np.testing.assert_allclose(state.class_beta, np.full(4, adv.beta / (1 + adv.beta)), rtol=1e-6)
        np.testing.assert_allclose(state.class_acc, [0, 1 / 3, 2 / 3, 1], rtol=1e-6)


def test_weight_averaging_starts_from_weights_and_respects_gate():
    maybe_update = jax.jit(weight_averaging.maybe_update, static_argnums=4)  # one program; op by op, a dozen
    params = {"w": np.array([1.0, 2.0], np.float32)}
    averaged = {"w": np.zeros(2, np.float32)}
    averaged, count = maybe_update(averaged, params, np.int32(0), np.bool_(True), 0.999)
    np.testing.assert_allclose(averaged["w"], [1.0, 2.0])  # the first update copies
    assert int(count) == 1
    moved = {"w": np.array([12.0, 2.0], np.float32)}
    gated, gated_count = maybe_update(averaged, moved, count, np.bool_(False), 0.999)
    np.testing.assert_allclose(gated["w"], averaged["w"])
    assert int(gated_count) == 1
    stepped, _ = maybe_update(averaged, moved, count, np.bool_(True), 0.999)
    np.testing.assert_allclose(stepped["w"], [1.0 + 11.0 * 10 / 11, 2.0], rtol=1e-6)  # d = 1 / 11
    assert weight_averaging.fawa_gate([40.0, 25.0, 90.0], 0.2)
    assert not weight_averaging.fawa_gate([40.0, 15.0, 90.0], 0.2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny config, its prepared data set, the FLD model and a fixed training batch [2, 8, 32, 32, 1]."""
    config = load_config("tiny")
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds_data"))
    data = input_pipeline.prepare_data_source(config.data, config.data.data_dir)
    info = data.info
    model = fld.create_fld_model(config.model, len(info.class_names), info.image_shape[-1])
    iterator = input_pipeline.TrainIterator(
        data, per_device_batch_size=config.train.per_device_batch_size,
        local_device_count=jax.local_device_count(), seed=config.seed,
    )
    return config, info, model, next(iterator), iterator.steps_per_epoch


def test_pmapped_step_learns_and_matches_one_device(tiny):
    """The pmapped step on 2 devices x 8 equals 1 device x 16 (same global batch), and the loss falls on a
    fixed batch while the per-class counters count every example.

    Baseline model (BN-free squeezenet without dropout): ICFDNet's BatchNorm normalises per device by design,
    as in flax's imagenet example, so with decouplers the two layouts legitimately differ.
    """
    config, info, _, batch, _ = tiny
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.use_decouplers = False
    config.adv.num_steps = 0  # the random start (0.001 N(0,1)) differs per device layout; keep only it
    config.optim.name = "sgd"  # Adam's first step is sign(g): too sensitive to float noise in tiny gradients
    config.optim.learning_rate = 0.05
    num_classes = len(info.class_names)
    model = fld.create_fld_model(config.model, num_classes, info.image_shape[-1])
    model = dataclasses.replace(model, classifier=models.get_classifier("squeezenet1_1", num_classes, dropout_rate=0.0))
    frozen = ml_collections.FrozenConfigDict(config)
    # create_train_state's state around numpy-filled weights (its init program is test_fld's to check) and a
    # fixed raw key [0, 1] (made op by op, a key is two programs of its own); the test compares devices, any key does.
    variables = synthetic_fld_variables(model, info.image_shape)
    state = train._jitted_fresh_state(frozen, num_classes, 10)(variables, np.array([0, 1], np.uint32))
    step_fn = lambda s, b: train.train_step(s, b, model=model, config=frozen)  # noqa: E731
    two = jax.pmap(step_fn, axis_name="batch", in_axes=(None, 0), out_axes=(None, None))
    one = jax.pmap(step_fn, axis_name="batch", in_axes=(None, 0), out_axes=(None, None), devices=jax.local_devices()[:1])
    single_batch = jax.tree.map(lambda x: x.reshape((1, -1) + x.shape[2:]), batch)
    # Laid out as `two` returns it: from a single-device state its first step would compile a program of its own.
    state_two, metrics_two = two(train.replicate(state), batch)
    state_one, metrics_one = one(state, single_batch)
    for key in ("loss", "lat", "clean_acc", "adv_acc", "grad_norm", "learning_rate"):
        np.testing.assert_allclose(metrics_two[key], metrics_one[key], rtol=1e-4, atol=1e-6, err_msg=key)
    chex.assert_trees_all_close(state_two.params, state_one.params, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(state_two.adv_seen, state_one.adv_seen)
    np.testing.assert_array_equal(state_two.adv_correct, state_one.adv_correct)

    losses = [float(metrics_two["loss"])]
    num_steps = 6
    for _ in range(num_steps - 1):
        state_two, metrics_two = two(state_two, batch)
        losses.append(float(metrics_two["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
    for key in ("loss", "lc", "ls", "lat", "clean_acc", "adv_acc", "grad_norm", "learning_rate"):
        assert np.ndim(metrics_two[key]) == 0, key
    labels = np.asarray(batch["label"]).reshape(-1)
    np.testing.assert_array_equal(state_two.adv_seen, num_steps * np.bincount(labels, minlength=num_classes))
    assert np.all(np.asarray(state_two.adv_correct) <= np.asarray(state_two.adv_seen))
    assert int(state_two.step) == num_steps


def _latest_state(workdir: str, template: TrainState) -> TrainState:
    checkpointer = checkpointing.Checkpointer(workdir, keep=3, async_save=False)
    try:
        return checkpointer.restore(template, "latest")[0]
    finally:
        checkpointer.close()


@pytest.mark.slow  # minutes of end-to-end training: make test-slow
def test_resume_continues_from_saved_step_like_an_uninterrupted_run(tiny, tmp_path):
    config, info, model, _, steps_per_epoch = tiny
    uninterrupted = str(tmp_path / "uninterrupted")
    report = train.train_and_evaluate(config, uninterrupted)
    # The final report: every test example counted once, robust results present.
    assert sum(map(sum, report["confusion_matrix"])) == info.num_examples["test"]
    assert report["split"] == "test"
    # Both threat models: end to end (the configured one, first) and Fig. 2's fixed features.
    assert [name.endswith("fixed-features") for name in report["robust"]] == [False, True]
    assert report["epoch"] in (1, 2) and isinstance(report["unsettled_classes"], list)
    assert report["last_epoch"] == 2
    assert isinstance(report["collapsed"], bool)
    with open(os.path.join(uninterrupted, "metrics.jsonl"), encoding="utf-8") as handle:
        epochs = [record for record in map(json.loads, handle) if record["kind"] == "epoch"]
    assert len(epochs) == 2 and all(isinstance(r["val_collapsed"], bool) for r in epochs)
    with open(os.path.join(uninterrupted, "eval.json"), encoding="utf-8") as handle:
        assert json.load(handle)["per_class_accuracy"] == report["per_class_accuracy"]
    for name in ("class_accuracy.png", "class_calibration.png", "confusion_matrix.png", "decoupling_grid.png"):
        assert os.path.exists(os.path.join(uninterrupted, "plots", name)), name

    # "Interrupt" a copy after epoch 1 by removing its epoch-2 checkpoint, then run the same command again.
    interrupted = str(tmp_path / "interrupted")
    shutil.copytree(uninterrupted, interrupted)
    total_steps = 2 * steps_per_epoch
    shutil.rmtree(os.path.join(interrupted, checkpointing.PERIODIC_DIRNAME, str(total_steps)))
    os.remove(os.path.join(interrupted, "eval.json"))
    resumed_report = train.train_and_evaluate(config, interrupted)

    template = train.create_train_state(config, model, info.image_shape, jax.random.key(5), steps_per_epoch)
    expected, resumed = _latest_state(uninterrupted, template), _latest_state(interrupted, template)
    assert int(resumed.step) == int(expected.step) == total_steps
    chex.assert_trees_all_close(
        flax.serialization.to_state_dict(resumed), flax.serialization.to_state_dict(expected), rtol=1e-5, atol=1e-6
    )
    assert resumed_report["per_class_accuracy"] == report["per_class_accuracy"]
    with open(os.path.join(interrupted, "metrics.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    # The resumed run appended steps steps_per_epoch+1 .. total_steps exactly once more.
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps.count(steps_per_epoch + 1) == 2 and train_steps.count(1) == 1
    epoch_records = [r for r in records if r["kind"] == "epoch"]
    assert len(epoch_records[-1]["class_epsilon"]) == len(info.class_names)


@pytest.mark.slow  # minutes of end-to-end training: make test-slow
def test_early_stopping_ends_the_run_once_patience_runs_out_and_a_rerun_stays_stopped(tiny, tmp_path):
    """A learning rate too small to change any prediction: validation never beats epoch 1 (ties are not
    improvements), so patience 1 stops the 4-epoch run after epoch 2, with a checkpoint that a re-run of the
    same command finds finished."""
    config = ml_collections.ConfigDict(tiny[0].to_dict())
    config.model.use_decouplers, config.adv.enabled = False, False  # the stopping rule is model-independent
    config.optim.learning_rate = 1e-12
    config.train.num_epochs, config.train.early_stopping_patience = 4, 1
    workdir = str(tmp_path / "stopped")
    report = train.train_and_evaluate(config, workdir)
    assert (report["epoch"], report["last_epoch"]) == (1, 2)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as handle:
        epochs = [record["epoch"] for record in map(json.loads, handle) if record["kind"] == "epoch"]
    assert epochs == [1, 2]
    os.remove(os.path.join(workdir, "eval.json"))
    rerun = train.train_and_evaluate(config, workdir)
    assert (rerun["epoch"], rerun["last_epoch"]) == (1, 2)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as handle:
        assert sum(record["kind"] == "epoch" for record in map(json.loads, handle)) == 2


@pytest.mark.parametrize("epoch, best_epoch, patience, expected", [
    (5, 3, 2, True), (5, 4, 2, False), (9, 1, 0, False), (1, None, 1, False)])
def test_patience_counts_epochs_since_the_best(epoch, best_epoch, patience, expected):
    assert epoch_end.patience_ran_out(epoch, best_epoch, patience) == expected
