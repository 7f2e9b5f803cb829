"""The adversarial-training options of the inner maximisation, each on tiny shapes: the uniform random
start (fast adversarial training), the box-free projection and the attack in the classifier's input space."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from model_helpers import synthetic_fld_variables

from flax_fld.method import attack, losses, objective
from flax_fld.models import fld
from flax_fld.runtime.config_files import load_config
from flax_fld.training import config_validation

SIZE, CLASSES, FEATURES = 16, 4, 2


def _mlp_logits(x):
    weights = jax.random.normal(jax.random.key(7), (x[0].size, CLASSES)) * 3.0
    return jnp.tanh(x.reshape(x.shape[0], -1)) @ weights


class RandomStartTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_uniform_start_fills_the_ball_and_small_start_stays_near_x(self):
        x = jax.random.uniform(jax.random.key(0), (3, SIZE, SIZE, 1)) * 0.5 + 0.25  # away from the [0,1] box
        epsilon = jnp.asarray([2 / 255, 4 / 255, 8 / 255])

        def start(random_start):
            return self.variant(lambda x, e: attack.trades_pgd(
                _mlp_logits, x, e, step_size=e / 4, num_steps=0, key=jax.random.key(1),
                random_start=random_start))(x, epsilon)

        uniform, small = start("uniform"), start("small")
        # The distances in numpy: eagerly, each jnp operation would compile a program of its own.
        uniform_distance = np.abs(np.asarray(uniform) - np.asarray(x)).max(axis=(1, 2, 3))
        np.testing.assert_array_less(uniform_distance, np.asarray(epsilon) + 1e-6)
        np.testing.assert_array_less(0.9 * np.asarray(epsilon), uniform_distance)  # the whole ball is used
        assert float(np.abs(np.asarray(small) - np.asarray(x)).max()) < 0.006  # 0.001 N(0, 1): a few thousandths

    def test_unknown_start_is_refused(self):
        with pytest.raises(ValueError, match="random_start='gaussian'"):
            attack.trades_pgd(_mlp_logits, np.zeros((1, SIZE, SIZE, 1), np.float32), 0.1, step_size=0.1,
                              num_steps=1, key=jax.random.key(0), random_start="gaussian")


def test_without_a_valid_range_only_the_ball_bounds_the_attack():
    x = np.full((2, SIZE, SIZE, 1), -3.0, np.float32)
    x[1] = 5.0  # standardised features lie outside [0, 1]
    # Both projections in one program (eagerly, one program per clip).
    boxed, free = jax.jit(lambda x: (attack.project(x + 0.5, x, 0.1),
                                     attack.project(x + 0.5, x, 0.1, valid_range=None)))(x)
    np.testing.assert_allclose(free, x + 0.1, atol=1e-6)
    assert float(np.min(boxed)) >= 0.0 and float(np.max(boxed)) <= 1.0


def _tiny_model():
    model_config = ml_collections.ConfigDict(dict(
        classifier="squeezenet1_1", vit_preset="tiny", icfdnet_preset="tiny", feature_channels=FEATURES,
        use_decouplers=True, color_space="ycbcr", icfdnet_norm="group", standardize_features=True,
        squeezenet_batch_norm=True))
    model = fld.create_fld_model(model_config, CLASSES, image_channels=1)
    return model, synthetic_fld_variables(model, (SIZE, SIZE, 1))


def _adv_config(**overrides) -> ml_collections.ConfigDict:
    adv = load_config("default").adv
    adv.update(dict(num_steps=3, attack_space="classifier_input", **overrides))
    return adv


@pytest.fixture(scope="module")
def tiny():
    model, variables = _tiny_model()

    @jax.jit  # one program, not one per operation of the decouplers
    def images_and_features(variables):
        images = jax.random.uniform(jax.random.key(1), (4, SIZE, SIZE, 1))
        return images, fld.decouple(model, variables, images, train=True)[0]

    images, decoupled = images_and_features(variables)
    labels = np.asarray([0, 1, 2, 3], np.int32)
    return model, variables, images, labels, decoupled


def test_classifier_input_attack_moves_every_channel_of_x_c_within_each_class_radius(tiny):
    model, variables, images, labels, decoupled = tiny
    class_epsilon = np.asarray([1, 2, 4, 8], np.float32) / 255

    @jax.jit  # the attack and the divergences that judge it: one program, not one per classifier operation
    def attack_and_divergences(variables, images, decoupled):
        delta = objective.adversarial_examples(model, variables, images, labels, decoupled, class_epsilon,
                                               jax.random.key(0), _adv_config())
        x_c = fld.classifier_input(model, images, decoupled)

        def logits(z):
            return fld.classify(model, variables, z, train=False)[0]

        kl_attacked = losses.kl_divergence(logits(x_c), logits(x_c + delta))
        kl_start = losses.kl_divergence(logits(x_c),
                                        logits(x_c + 0.001 * jax.random.normal(jax.random.key(5), x_c.shape)))
        return delta, jnp.sum(kl_attacked), jnp.sum(kl_start)

    delta, kl_attacked, kl_start = attack_and_divergences(variables, images, decoupled)
    chex.assert_shape(delta, (4, SIZE, SIZE, model.classifier_channels))
    per_example = np.abs(np.asarray(delta)).max(axis=(1, 2))  # [B, channels]
    np.testing.assert_array_less(per_example.max(axis=1), class_epsilon + 1e-6)
    # Features and Y_c alike are perturbed (the image-space attack moves the last 3 channels only).
    assert np.all(per_example[:, : 2 * FEATURES] > 0.5 * class_epsilon[:, None])
    assert float(kl_attacked) > float(kl_start)


@pytest.mark.parametrize("attack_space", ["image", "classifier_input"])
def test_the_train_step_loss_takes_x_adv_of_either_space_and_reaches_the_decouplers(tiny, attack_space):
    model, variables, images, labels, _ = tiny
    config = load_config("default")
    config.adv.update(dict(num_steps=2, attack_space=attack_space))
    class_epsilon = np.full((CLASSES,), 8 / 255, np.float32)
    class_beta = np.full((CLASSES,), 0.5, np.float32)

    @jax.jit  # the gradients' norms too: eagerly, one program per parameter shape
    def step(variables, images):
        keys = tuple(jax.random.split(jax.random.key(0), 3))
        loss, terms, grads, x_adv = objective.loss_and_gradients(
            variables["params"], variables["batch_stats"], images, labels, class_epsilon, class_beta, keys,
            model=model, config=config)
        return loss, terms, {name: optax.tree.norm(grads[name]) for name in ("ic1", "ic2", "classifier")}, x_adv

    loss, terms, gradient_norms, x_adv = step(variables, images)
    expected_shape = images.shape if attack_space == "image" else (4, SIZE, SIZE, model.classifier_channels)
    chex.assert_shape(x_adv, expected_shape)
    assert bool(np.isfinite(loss))
    assert not np.allclose(terms.logits_adv, terms.logits_clean)  # the robust term sees a perturbed input
    for name in ("ic1", "ic2", "classifier"):
        assert float(gradient_norms[name]) > 0.0, name


def test_config_checks_name_the_new_keys():
    config = load_config("tiny")
    config.adv.attack_space = "features"
    with pytest.raises(ValueError, match="adv.attack_space='features'"):
        config_validation.validate_config(config)
    config.adv.attack_space = "classifier_input"
    config.adv.through_decouplers = True
    with pytest.raises(ValueError, match="through_decouplers=False"):
        config_validation.validate_config(config)
    config.adv.through_decouplers = False
    config.adv.random_start = "gaussian"
    with pytest.raises(ValueError, match="adv.random_start='gaussian'"):
        config_validation.validate_config(config)
    config.adv.random_start = "uniform"
    config_validation.validate_config(config)  # a valid combination passes
