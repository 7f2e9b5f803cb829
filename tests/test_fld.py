"""Tests for the composite FLD model (flax_fld/models/fld.py): decouple, x_c, classify, attack functions."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flax_fld.models import fld
from model_helpers import synthetic_fld_variables

FEATURES, CLASSES, SIZE = 3, 4, 32


def model_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(dict(
        classifier="squeezenet1_1", vit_preset="tiny", icfdnet_preset="tiny", feature_channels=FEATURES,
        use_decouplers=True, color_space="ycbcr"))
    config.update(overrides)
    return config


def uniform_images(channels: int) -> np.ndarray:
    # numpy: eager jax.random.uniform compiles programs of its own, and any images in [0, 1) serve here.
    return np.random.default_rng(1).uniform(size=(2, SIZE, SIZE, channels)).astype(np.float32)


# Eval- or train-mode decoupling, compiled once per model: the tests that share `full`'s model share it.
jitted_decouple = jax.jit(lambda model, v, x, train: fld.decouple(model, v, x, train=train), static_argnums=(0, 3))


@pytest.fixture(scope="module")
def full():
    model = fld.create_fld_model(model_config(), CLASSES, image_channels=1)
    variables = synthetic_fld_variables(model, (SIZE, SIZE, 1))
    return model, variables, uniform_images(1)


def test_init_variables_layout_and_determinism():
    model = fld.create_fld_model(model_config(icfdnet_preset="tiny", classifier="vit"), CLASSES, 1)
    variables = fld.init_variables(model, jax.random.key(0), (SIZE, SIZE, 1))
    assert set(variables["params"]) == set(variables["batch_stats"]) == {"ic1", "ic2", "classifier"}
    assert variables["batch_stats"]["classifier"] == {}  # ViT has no BatchNorm
    assert variables["batch_stats"]["ic1"]
    # The synthetic variables used by the other tests have exactly init's structure and shapes.
    synthetic = synthetic_fld_variables(model, (SIZE, SIZE, 1))
    assert jax.tree_util.tree_map(np.shape, synthetic) == jax.tree_util.tree_map(np.shape, variables)
    again = fld.init_variables(model, jax.random.key(0), (SIZE, SIZE, 1))
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, again)
    other = fld.init_variables(model, jax.random.key(1), (SIZE, SIZE, 1))
    differs = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), variables["params"], other["params"])
    assert any(jax.tree_util.tree_leaves(differs["ic1"])) and any(jax.tree_util.tree_leaves(differs["classifier"]))
    # IC1 and IC2 are different networks, not one initialisation shared.
    assert not np.array_equal(variables["params"]["ic1"]["feature_conv"]["kernel"],
                              variables["params"]["ic2"]["feature_conv"]["kernel"])


@pytest.mark.parametrize("image_channels, color_space, use_decouplers, expected", [
    (1, "ycbcr", True, 2 * FEATURES + 3),
    (3, "gray", True, 2 * FEATURES + 1),
    (3, "lab", False, 3),
    (1, "gray", False, 1),
])
def test_classifier_input_channels_by_eval_shape(image_channels, color_space, use_decouplers, expected):
    model = fld.create_fld_model(model_config(color_space=color_space, use_decouplers=use_decouplers,
                                              classifier="resnet18"), CLASSES, image_channels)
    shape = (SIZE, SIZE, image_channels)
    variables = jax.eval_shape(lambda key: fld.init_variables(model, key, shape), jax.random.key(0))
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)

    def run(variables, x):
        decoupled, _ = fld.decouple(model, variables, x, train=False)
        x_c = fld.classifier_input(model, x, decoupled)
        return x_c, fld.classify(model, variables, x_c, train=False)[0]

    x_c, logits = jax.eval_shape(run, variables, x)
    assert x_c.shape == (2, SIZE, SIZE, expected) == (2, SIZE, SIZE, model.classifier_channels)
    assert logits.shape == (2, CLASSES)


def test_decouple_train_updates_statistics_and_eval_keeps_them(full):
    model, variables, images = full
    decoupled, stats = jitted_decouple(model, variables, images, True)
    assert decoupled.feat1.shape == decoupled.feat2.shape == (2, SIZE, SIZE, FEATURES)
    assert decoupled.class_logits.shape == (2, CLASSES)
    assert decoupled.x_hat.shape == images.shape
    moved = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b),
                                   {k: variables["batch_stats"][k] for k in ("ic1", "ic2")}, stats)
    assert all(jax.tree_util.tree_leaves(moved))

    eval_decoupled, eval_stats = jitted_decouple(model, variables, images, False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, eval_stats,
                           {k: variables["batch_stats"][k] for k in ("ic1", "ic2")})
    assert not np.allclose(eval_decoupled.feat1, decoupled.feat1)  # batch vs running statistics


def test_forward_and_classify(full):
    model, variables, images = full

    def forward_then_classify_in_train_mode(v, x, key):  # one program, not two
        logits, intermediates = fld.forward(model, v, x)
        return logits, intermediates, fld.classify(model, v, intermediates["x_c"], train=True, dropout_rng=key)

    logits, intermediates, (train_logits, stats) = jax.jit(forward_then_classify_in_train_mode)(
        variables, images, jax.random.key(5))
    assert logits.shape == (2, CLASSES)
    assert intermediates["x_c"].shape == (2, SIZE, SIZE, 2 * FEATURES + 3)
    # x_c's last channels are Y_c(x): Y of a gray image is the image itself.
    np.testing.assert_allclose(np.asarray(intermediates["x_c"])[..., 2 * FEATURES], images[..., 0], atol=1e-5)
    assert train_logits.shape == (2, CLASSES) and stats == {"classifier": {}}


def test_attack_functions_fixed_features_versus_end_to_end(full):
    model, variables, images = full
    decoupled, _ = jitted_decouple(model, variables, images, False)

    def logits_and_image_gradient(x, end_to_end):
        logits_fn = fld.attack_logits_fn(model, variables, decoupled, end_to_end=end_to_end)

        def objective(x):
            logits = logits_fn(x)
            return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), logits

        (_, logits), gradient = jax.value_and_grad(objective, has_aux=True)(x)
        return logits, gradient

    both = jax.jit(lambda x: (logits_and_image_gradient(x, False), logits_and_image_gradient(x, True)))  # 1 program
    # Compared in numpy: no eager programs.
    (fixed_logits, fixed), (end_to_end_logits, end_to_end) = jax.tree.map(np.asarray, both(images))
    # At the clean image both see the same x_c, hence the same logits.
    np.testing.assert_allclose(fixed_logits, end_to_end_logits, rtol=1e-4, atol=1e-5)
    assert fixed.shape == end_to_end.shape == images.shape
    assert np.all(np.isfinite(fixed)) and np.all(np.isfinite(end_to_end))
    assert np.any(fixed != 0) and np.any(end_to_end != 0)
    # End to end, the gradient also flows through IC1/IC2, so it must differ from the fixed-features one.
    assert not np.allclose(fixed, end_to_end)


@pytest.mark.parametrize("classifier", ["squeezenet1_1", "resnet18"])
def test_classifier_reads_channel_parts_as_their_concatenation_in_values_and_image_gradients(classifier):
    # The attack feeds x_c as (features, Y_c(x')) to such a classifier: the same logits and image gradient.
    model = fld.create_fld_model(model_config(classifier=classifier), CLASSES, image_channels=1)
    assert model.classifier.takes_channel_parts
    variables = synthetic_fld_variables(model, (SIZE, SIZE, 1))
    images = uniform_images(1)
    decoupled, _ = jitted_decouple(model, variables, images, False)
    parts = jax.eval_shape(lambda x, decoupled: fld.classifier_input_parts(model, x, decoupled), images, decoupled)
    assert [part.shape[-1] for part in parts] == [2 * FEATURES, 3]

    def objective(x, decoupled, make_input):
        logits, _ = fld.classify(model, variables, make_input(model, x, decoupled), train=False)
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

    @jax.jit
    def whole_and_as_parts(x, decoupled):  # both in one program: one compile per classifier
        return tuple(jax.value_and_grad(objective)(x, decoupled, make_input)
                     for make_input in (fld.classifier_input, fld.classifier_input_parts))

    whole, as_parts = jax.tree.map(np.asarray, whole_and_as_parts(images, decoupled))
    np.testing.assert_allclose(as_parts[0], whole[0], rtol=1e-5)
    np.testing.assert_allclose(as_parts[1], whole[1], rtol=1e-4, atol=1e-6)
    assert np.any(whole[1] != 0)
    # And the attack takes that path: its logits never build the concatenated [B,H,W,2F+3] input.
    logits_fn = fld.attack_logits_fn(model, variables, decoupled, end_to_end=False)
    assert f"f32[2,{SIZE},{SIZE},{2 * FEATURES + 3}]" not in str(jax.make_jaxpr(logits_fn)(images))
    assert f"f32[2,{SIZE},{SIZE},{2 * FEATURES + 3}]" in str(jax.make_jaxpr(
        lambda x: fld.classifier_input(model, x, decoupled))(images))  # what the check looks for, when it is there


def test_baseline_has_no_decouplers():
    model = fld.create_fld_model(model_config(use_decouplers=False, classifier="resnet18"), CLASSES, image_channels=3)
    variables = synthetic_fld_variables(model, (SIZE, SIZE, 3))
    abstract = jax.eval_shape(lambda key: fld.init_variables(model, key, (SIZE, SIZE, 3)), jax.random.key(0))
    assert set(abstract["params"]) == set(abstract["batch_stats"]) == {"classifier"}
    images = uniform_images(3)
    decoupled, stats = fld.decouple(model, variables, images, train=True)
    assert decoupled == fld.Decoupled(None, None, None, None) and stats == {}
    logits_fn = fld.attack_logits_fn(model, variables, decoupled, end_to_end=True)
    x_c, gradient = jax.jit(lambda x: (fld.classifier_input(model, x, decoupled),  # one program, not op by op
                                       jax.grad(lambda x: jnp.sum(logits_fn(x)[:, 1]))(x)))(images)
    gradient = np.asarray(gradient)
    assert x_c.shape == (2, SIZE, SIZE, 3)
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)


def test_model_is_hashable_and_bad_config_raises():
    first = fld.create_fld_model(model_config(), CLASSES, 1)
    assert first == fld.create_fld_model(model_config(), CLASSES, 1)
    assert hash(first) == hash(fld.create_fld_model(model_config(), CLASSES, 1))
    with pytest.raises(ValueError, match="classifier='alexnet'"):
        fld.create_fld_model(model_config(classifier="alexnet"), CLASSES, 1)
    with pytest.raises(ValueError, match="preset='huge'"):
        fld.create_fld_model(model_config(icfdnet_preset="huge"), CLASSES, 1)
    with pytest.raises(ValueError, match="xyz"):
        fld.create_fld_model(model_config(color_space="xyz"), CLASSES, 1)
    with pytest.raises(ValueError, match="image_channels=2"):
        fld.create_fld_model(model_config(), CLASSES, 2)
    with pytest.raises(ValueError, match="image_shape"):
        fld.init_variables(first, jax.random.key(0), (SIZE, SIZE, 3))
