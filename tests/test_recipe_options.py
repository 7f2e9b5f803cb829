"""The training options that make the recipe learn, each on tiny shapes.

SqueezeNet's BatchNorm, GroupNorm decouplers, feature standardisation, detached features, the clean start of
adversarial training (``adv.start_epoch``), best-epoch tie-breaking and the collapse report.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from model_helpers import synthetic_fld_variables, synthetic_variables

from flax_fld.evaluation import metrics
from flax_fld.method import objective
from flax_fld.models import fld, get_classifier
from flax_fld.models.icfdnet import ICFDNet, icfdnet_preset
from flax_fld.reporting import report_fields
from flax_fld.runtime.config_files import load_config
from flax_fld.training import train
from flax_fld.training.train_state import TrainState

SIZE, CLASSES = 32, 4


def _default_config() -> ml_collections.ConfigDict:
    return load_config("default")


def test_squeezenet_batch_norm_adds_statistics_and_drops_conv_biases():
    plain = jax.eval_shape(lambda: get_classifier("squeezenet1_1", CLASSES).init(
        jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))
    normed = jax.eval_shape(lambda: get_classifier("squeezenet1_1", CLASSES, batch_norm=True).init(
        jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))
    assert "batch_stats" not in plain and "batch_stats" in normed
    assert "bias" in plain["params"]["stem"]["conv"] and "bias" not in normed["params"]["stem"]["conv"]
    # The class-score convolution stays linear and biased in both.
    assert "bias" in normed["params"]["classifier_conv"]
    count = lambda tree: sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree))  # noqa: E731
    # Every conv but the last trades its bias (C) for a BatchNorm scale and bias (2C).
    conv_channels = sum(leaf.shape[0] for path, leaf in jax.tree_util.tree_leaves_with_path(plain["params"])
                        if path[-1].key == "bias" and path[0].key != "classifier_conv")
    assert count(normed["params"]) - count(plain["params"]) == conv_channels


def test_squeezenet_batch_norm_train_mode_uses_batch_statistics():
    model = get_classifier("squeezenet1_1", CLASSES, batch_norm=True, dropout_rate=0.0)
    variables = synthetic_variables(model, (1, SIZE, SIZE, 3))

    @jax.jit  # one program, not one per operation of every layer
    def train_pass(variables):
        x = jax.random.uniform(jax.random.key(1), (4, SIZE, SIZE, 3)) * 5.0 + 3.0
        return model.apply(variables, x, train=True, mutable=["batch_stats"])

    logits, updates = train_pass(variables)
    assert logits.shape == (4, CLASSES)
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), updates["batch_stats"],
                         variables["batch_stats"])
    assert max(jax.tree.leaves(moved)) > 0.1


def test_group_norm_decoupler_has_no_batch_statistics_and_train_equals_eval():
    model = ICFDNet(features=2, head="reconstruct", **dict(icfdnet_preset("tiny"), norm="group"))
    variables = synthetic_variables(model, (1, SIZE, SIZE, 1))  # init's own tree (traced, not compiled)
    assert "batch_stats" not in variables

    @jax.jit  # one program, not one per operation of every layer
    def train_and_eval(variables):
        x = jax.random.uniform(jax.random.key(1), (3, SIZE, SIZE, 1))
        return model.apply(variables, x, train=True), model.apply(variables, x, train=False)

    train_out, eval_out = train_and_eval(variables)
    chex.assert_trees_all_close(train_out, eval_out, atol=1e-6)
    with pytest.raises(ValueError, match="norm='layer'"):  # refused while tracing init: nothing to compile
        jax.eval_shape(lambda: ICFDNet(features=2, norm="layer", **icfdnet_preset("tiny")).init(
            jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1)), train=False))


class StandardizeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_each_image_and_channel_has_zero_mean_unit_variance(self):
        features = jax.random.normal(jax.random.key(0), (3, 8, 8, 2)) * jnp.asarray([50.0, 0.5]) + 7.0
        out = self.variant(fld.standardize)(features)
        np.testing.assert_allclose(np.mean(out, axis=(1, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(np.std(out, axis=(1, 2)), 1.0, atol=1e-2)

    @chex.variants(with_jit=True, without_jit=True)
    def test_a_constant_map_stays_finite(self):
        out = self.variant(fld.standardize)(jnp.full((1, 4, 4, 1), 3.0))
        np.testing.assert_array_equal(out, 0.0)


def _model(**overrides) -> fld.FLDModel:
    config = ml_collections.ConfigDict(dict(
        classifier="squeezenet1_1", vit_preset="tiny", icfdnet_preset="tiny", feature_channels=2,
        use_decouplers=True, color_space="gray", icfdnet_norm="group"))
    config.update(overrides)
    return fld.create_fld_model(config, CLASSES, image_channels=1)


@functools.lru_cache(maxsize=1)
def _fld_variables() -> dict:
    """Numpy-filled variables of ``_model``, with or without detach_features and standardize_features (neither
    changes a variable): these tests need values, not init, whose compile would dominate the file (test_fld
    tests init)."""
    return synthetic_fld_variables(_model(), (SIZE, SIZE, 1))


@pytest.mark.parametrize("detach", [False, True])
def test_detach_features_stops_the_classifier_loss_at_the_decouplers(detach):
    model = _model(detach_features=detach, standardize_features=True)
    variables = _fld_variables()
    labels = np.asarray([0, 3], np.int32)
    config = _default_config()
    config.loss.l1 = config.loss.l2 = 0.0  # the classifier's loss alone (Lat), not Lc or Ls

    def classifier_loss(params, images):
        decoupled, _ = fld.decouple(model, {"params": params, "batch_stats": variables["batch_stats"]}, images,
                                    train=True)
        batch = objective.LossBatch(images, labels, images, jnp.full((CLASSES,), 0.5),
                                    (jax.random.key(2), jax.random.key(3)))
        settings = objective.LossSettings(model, (config.loss.l1, config.loss.l2, config.loss.l3),
                                          config.loss.charbonnier_xi, end_to_end=True)
        return objective.fld_loss(params, decoupled, variables["batch_stats"], batch, settings)[0]

    @jax.jit  # one compile, not one per op (eager norms compile a program per parameter shape)
    def gradient_norms(params):
        images = jax.random.uniform(jax.random.key(1), (2, SIZE, SIZE, 1))
        grads = jax.grad(classifier_loss)(params, images)
        return {name: optax.tree.norm(grads[name]) for name in ("ic1", "ic2", "classifier")}

    norms = gradient_norms(variables["params"])
    ic_norm = float(norms["ic1"]) + float(norms["ic2"])
    assert (ic_norm == 0.0) == detach
    assert float(norms["classifier"]) > 0.0


def test_an_attacker_differentiates_through_detached_features():
    """detach_features is about training; the end-to-end attack's image gradient is the same with it on."""
    @functools.partial(jax.jit, static_argnums=0)  # one compile per model, not one per op
    def image_gradient(model, variables):
        images = jax.random.uniform(jax.random.key(1), (2, SIZE, SIZE, 1))
        logits_fn = fld.attack_logits_fn(model, variables, fld.Decoupled(None, None, None, None), end_to_end=True)
        return jax.grad(lambda x: jnp.sum(logits_fn(x)[:, 0]))(images)

    gradients = [np.asarray(image_gradient(_model(detach_features=detach, standardize_features=True),
                                           _fld_variables())) for detach in (False, True)]
    np.testing.assert_allclose(gradients[1], gradients[0], rtol=1e-5, atol=1e-7)
    assert float(np.max(np.abs(gradients[1]))) > 0.0


def test_create_fld_model_reads_the_new_keys_with_defaults():
    old_style = ml_collections.ConfigDict(dict(
        classifier="squeezenet1_1", vit_preset="tiny", icfdnet_preset="tiny", feature_channels=2,
        use_decouplers=True, color_space="gray"))  # a config.json written before these keys existed
    model = fld.create_fld_model(old_style, CLASSES, 1)
    assert not model.standardize_features and not model.detach_features
    assert model.ic1.norm == "batch" and not model.classifier.batch_norm
    model = _model(squeezenet_batch_norm=True, standardize_features=True)
    assert model.classifier.batch_norm and model.standardize_features and model.ic1.norm == "group"


def _counter_state(num_classes=CLASSES) -> TrainState:
    return TrainState.create(
        params={"w": jnp.zeros((2,))}, batch_stats={}, tx=optax.sgd(0.1),
        class_epsilon=jnp.full((num_classes,), 8 / 255), class_beta=jnp.zeros((num_classes,)),
        class_acc=jnp.full((num_classes,), 0.5), rng=jax.random.key(0), average=False, average_enabled=False,
    ).replace(adv_correct=jnp.asarray([1, 2, 3, 4]), adv_seen=jnp.asarray([4, 4, 4, 4]))


class StartEpochTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_beta_is_zero_before_start_epoch_and_eq2_after(self):
        adv = _default_config().adv
        adv.update(calibration="adaptive", warmup_epochs=0, beta=6.0, mu=0.5, start_epoch=2)
        end = self.variant(lambda s: train.end_epoch(s, adv))
        after_first = end(_counter_state())  # epoch 1 comes next: still clean
        np.testing.assert_array_equal(after_first.class_beta, 0.0)
        after_second = end(after_first.replace(adv_correct=jnp.asarray([1, 2, 3, 4]),
                                               adv_seen=jnp.asarray([4, 4, 4, 4])))
        acc = np.asarray([0.25, 0.5, 0.75, 1.0])
        expected = (0.5 + acc) * 6.0 / (1 + (0.5 + acc) * 6.0)
        np.testing.assert_allclose(after_second.class_beta, expected, rtol=1e-6)
        # Epsilon is calibrated from the start: only the robust term's weight waits.
        np.testing.assert_allclose(after_first.class_epsilon, (adv.sigma + acc) * adv.epsilon, rtol=1e-6)

    def test_adversarial_weight_is_on_from_start_epoch(self):
        config = _default_config()
        config.adv.start_epoch = 3
        on = train.adversarial_weight_on(config.adv, jnp.int32(0))
        assert not bool(on) and bool(train.adversarial_weight_on(config.adv, jnp.int32(3)))
        config.adv.start_epoch = 0
        assert bool(train.adversarial_weight_on(config.adv, jnp.int32(0)))


def _report(per_class_correct, support=10):
    confusion = np.zeros((CLASSES, CLASSES), int)
    for k, correct in enumerate(per_class_correct):
        confusion[k, k] = correct
        confusion[k, (k + 1) % CLASSES] = support - correct
    report = metrics.class_report(confusion, ["a", "b", "c", "d"])
    report.update(class_names=["a", "b", "c", "d"], robust={}, split="validation")
    return report


def test_selection_key_breaks_worst_class_ties_by_balanced_accuracy():
    early, later = _report([10, 0, 0, 0]), _report([10, 9, 0, 8])
    assert report_fields.selection_value(early, "worst_class") == report_fields.selection_value(later, "worst_class") == 0
    assert report_fields.selection_key(later, "worst_class") > report_fields.selection_key(early, "worst_class")


def test_collapse_is_reported_and_warned():
    confusion = np.zeros((CLASSES, CLASSES), int)
    confusion[:, 2] = [5, 6, 7, 8]  # every image predicted as class 2
    report = metrics.class_report(confusion, ["a", "b", "c", "d"])
    report["split"] = "test"
    assert report["collapsed"] and report["predicted_classes"] == 1
    assert report["classes_at_zero"] == ["a", "b", "d"]
    assert "collapsed" in report_fields.collapse_warning(report)
    healthy = _report([9, 8, 7, 6])
    assert not healthy["collapsed"] and report_fields.collapse_warning(healthy) == ""
    assert "b" in report_fields.collapse_warning(_report([9, 0, 7, 6]))


def test_unsettled_classes_are_those_falling_from_half_to_zero_late():
    curves = [[0, 100, 50, 10], [90, 0, 60, 10], [0, 80, 55, 0], [95, 85, 0, 30]]
    # Class a falls 90 -> 0 (epochs 2-3), c falls 55 -> 0 (3-4); b's fall (1-2) is before the window; d < 50.
    assert report_fields.unsettled_classes(curves, ["a", "b", "c", "d"]) == ["a", "c"]
    assert report_fields.unsettled_classes(curves, ["a", "b", "c", "d"], last=2) == ["c"]
    assert report_fields.unsettled_classes(curves[:1], ["a", "b", "c", "d"]) == []
    # A fall over two epochs (60 -> 30 -> 0) counts too.
    assert report_fields.unsettled_classes([[60.0], [30.0], [0.0]], ["a"]) == ["a"]
