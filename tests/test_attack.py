"""Tests for flax_fld.method.attack: TRADES inner maximisation and PGD-CE on a small random network."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_fld.method import attack, losses

SHAPE = (4, 8, 8, 3)
NUM_CLASSES = 4


def _init_params(key):
    k1, k2 = jax.random.split(key)
    features = SHAPE[1] * SHAPE[2] * SHAPE[3]
    return {
        "w1": jax.random.normal(k1, (features, 32)) / np.sqrt(features) * 4.0,
        "w2": jax.random.normal(k2, (32, NUM_CLASSES)) * 2.0,
    }


def _logits(params, x):
    """A two-layer tanh MLP: nonlinear, and each example's logits depend on that example only."""
    return jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"]) @ params["w2"]


def _images(key):
    x = jax.random.uniform(key, SHAPE)
    # Saturated pixels (black B-mode background, bright speckle) exercise the [0, 1] clip.
    return x.at[:, :2].set(0.0).at[:, -1:].set(1.0)


@jax.jit
def _setup(params_seed, images_seed, key_seed):
    """(params, images, key, clean predictions) in one compiled program: built eagerly, each op compiled alone."""
    params = _init_params(jax.random.PRNGKey(params_seed))
    x = _images(jax.random.PRNGKey(images_seed))
    return params, x, jax.random.PRNGKey(key_seed), jnp.argmax(_logits(params, x), axis=-1)


@jax.jit
def _kl_to_clean(params, x, x_adv):
    return losses.kl_divergence(_logits(params, x), _logits(params, x_adv))


@jax.jit
def _cross_entropy(params, x, labels):
    return optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), labels)


def _reference_trades(logits_fn, x, epsilon, step_size, num_steps, key):
    """A plain Python loop of the TRADES update, written independently of attack.py."""
    eps = np.asarray(epsilon).reshape(-1, 1, 1, 1)
    step = np.asarray(step_size).reshape(-1, 1, 1, 1)

    def kl(x_adv):
        target = jax.nn.softmax(logits_fn(x))
        log_q = jax.nn.log_softmax(logits_fn(x_adv))
        return jnp.sum(target * (jnp.log(target) - log_q))

    @jax.jit  # the start and one step, each compiled once; the loop itself stays in Python
    def start(key):
        x_adv = x + 0.001 * jax.random.normal(key, x.shape)
        return jnp.clip(jnp.minimum(jnp.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)

    @jax.jit
    def ascend(x_adv):
        x_adv = x_adv + step * jnp.sign(jax.grad(kl)(x_adv))
        return jnp.clip(jnp.minimum(jnp.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)

    x_adv = start(key)
    iterates = [x_adv]
    for _ in range(num_steps):
        x_adv = ascend(x_adv)
        iterates.append(x_adv)
    return iterates


class TradesPgdTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.params, self.x, self.key, _ = _setup(0, 1, 2)
        self.logits_fn = lambda x: _logits(self.params, x)
        # Radii and step sizes are made with numpy: arithmetic on device arrays compiles a program per op.
        self.epsilon = np.array([0.0, 1 / 255, 4 / 255, 16 / 255], np.float32)

    def _attack(self, epsilon, step_size, num_steps):
        fn = lambda x, eps, step, key: attack.trades_pgd(  # noqa: E731
            self.logits_fn, x, eps, step_size=step, num_steps=num_steps, key=key
        )
        return self.variant(fn)(self.x, epsilon, step_size, self.key)

    @chex.variants(with_jit=True, without_jit=True)
    def test_stays_in_each_examples_ball_and_in_unit_range(self):
        x_adv = self._attack(jnp.asarray(self.epsilon), jnp.asarray(self.epsilon / 4), 5)
        chex.assert_shape(x_adv, SHAPE)
        x_adv, x = np.asarray(x_adv), np.asarray(self.x)
        distance = np.abs(x_adv - x).max(axis=(1, 2, 3))
        self.assertTrue(bool(np.all(distance <= self.epsilon + 1e-6)), msg=f"{distance} vs {self.epsilon}")
        np.testing.assert_array_equal(x_adv[0], x[0])  # radius 0: no perturbation at all
        self.assertGreater(float(distance[3]), 8 / 255)  # the largest ball is actually used
        self.assertTrue(bool(np.all((x_adv >= 0.0) & (x_adv <= 1.0))))

    @chex.variants(with_jit=True, without_jit=True)
    def test_kl_increases(self):
        epsilon = np.full((SHAPE[0],), 0.1, np.float32)
        start = self._attack(jnp.asarray(epsilon), jnp.asarray(epsilon / 4), 0)
        end = self._attack(jnp.asarray(epsilon), jnp.asarray(epsilon / 4), 10)
        kl_start = np.asarray(_kl_to_clean(self.params, self.x, start))
        kl_end = np.asarray(_kl_to_clean(self.params, self.x, end))
        self.assertTrue(bool(np.all(kl_end > kl_start + 1e-4)), msg=f"{kl_start} -> {kl_end}")

    @chex.variants(with_jit=True, without_jit=True)
    def test_fori_loop_matches_python_loop_step_by_step(self):
        step_size = self.epsilon / 4
        reference = _reference_trades(self.logits_fn, self.x, self.epsilon, step_size, 2, self.key)
        for num_steps, expected in enumerate(reference):
            np.testing.assert_allclose(self._attack(jnp.asarray(self.epsilon), jnp.asarray(step_size), num_steps),
                                       expected, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_scalar_radius_equals_uniform_per_example_radius(self):
        scalar = self._attack(jnp.float32(0.05), jnp.float32(0.01), 2)
        vector = self._attack(jnp.asarray(np.full((SHAPE[0],), 0.05, np.float32)),
                              jnp.asarray(np.full((SHAPE[0],), 0.01, np.float32)), 2)
        np.testing.assert_allclose(scalar, vector, atol=1e-7)

    def test_python_float_radius(self):
        # One jitted call: the radius is still a python float to trades_pgd, and eager ops compile one by one.
        x_adv = jax.jit(lambda x: attack.trades_pgd(self.logits_fn, x, 0.05, step_size=0.01, num_steps=2,
                                                    key=self.key))(self.x)
        self.assertLessEqual(float(np.abs(np.asarray(x_adv) - np.asarray(self.x)).max()), 0.05 + 1e-6)

    def test_no_gradient_flows_into_x_adv(self):
        def attacked_sum(x):
            return jnp.sum(attack.trades_pgd(self.logits_fn, x, 0.1, step_size=0.02, num_steps=2, key=self.key))

        # Differentiated under jit: eagerly every op of the attack's backward pass compiles on its own.
        np.testing.assert_array_equal(jax.jit(jax.grad(attacked_sum))(self.x), 0.0)

        def outer_loss(params, x_adv=None):
            if x_adv is None:
                x_adv = attack.trades_pgd(
                    lambda x: _logits(params, x), self.x, 0.1, step_size=0.02, num_steps=2, key=self.key
                )
            return jnp.sum(_logits(params, x_adv) ** 2)

        @jax.jit
        def gradients_with_and_without_the_attack_inside(params):
            fixed = attack.trades_pgd(self.logits_fn, self.x, 0.1, step_size=0.02, num_steps=2, key=self.key)
            return jax.grad(outer_loss)(params), jax.grad(outer_loss)(params, fixed)

        chex.assert_trees_all_close(*jax.device_get(gradients_with_and_without_the_attack_inside(self.params)))

    def test_rejects_bad_radius_shape_and_steps(self):
        with pytest.raises(ValueError, match="epsilon"):
            attack.trades_pgd(self.logits_fn, self.x, jnp.ones(3), step_size=0.1, num_steps=1, key=self.key)
        with pytest.raises(ValueError, match="num_steps"):
            attack.trades_pgd(self.logits_fn, self.x, 0.1, step_size=0.1, num_steps=-1, key=self.key)


class PgdCeTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        # The labels are the clean predictions: the attack starts from correctly classified examples.
        self.params, self.x, self.key, self.labels = _setup(3, 4, 5)
        self.logits_fn = lambda x: _logits(self.params, x)

    def _attack(self, epsilon, step_size, num_steps):
        fn = lambda x, labels, eps, step, key: attack.pgd_ce(  # noqa: E731
            self.logits_fn, x, labels, eps, step_size=step, num_steps=num_steps, key=key
        )
        return self.variant(fn)(self.x, self.labels, epsilon, step_size, self.key)

    @chex.variants(with_jit=True, without_jit=True)
    def test_bounds_and_loss_increase(self):
        epsilon = np.array([0.0, 0.02, 0.05, 0.1], np.float32)
        x_adv = self._attack(jnp.asarray(epsilon), jnp.asarray(epsilon / 4), 10)
        distance = np.abs(np.asarray(x_adv) - np.asarray(self.x)).max(axis=(1, 2, 3))
        self.assertTrue(bool(np.all(distance <= epsilon + 1e-6)))
        self.assertTrue(bool(np.all((np.asarray(x_adv) >= 0.0) & (np.asarray(x_adv) <= 1.0))))
        ce_clean = np.asarray(_cross_entropy(self.params, self.x, self.labels))
        ce_adv = np.asarray(_cross_entropy(self.params, x_adv, self.labels))
        np.testing.assert_allclose(ce_adv[0], ce_clean[0], rtol=1e-6)
        self.assertTrue(bool(np.all(ce_adv[1:] > ce_clean[1:])), msg=f"{ce_clean} -> {ce_adv}")

    @chex.variants(with_jit=True, without_jit=True)
    def test_random_start_fills_the_ball(self):
        x_start = self._attack(jnp.float32(0.1), jnp.float32(0.0), 0)
        x = np.asarray(self.x)
        interior = (x > 0.1) & (x < 0.9)
        offsets = (np.asarray(x_start) - x)[interior]
        self.assertGreater(float(offsets.max()), 0.08)
        self.assertLess(float(offsets.min()), -0.08)

    def test_rejects_bad_labels(self):
        with pytest.raises(ValueError, match="labels"):
            attack.pgd_ce(self.logits_fn, self.x, self.labels[:2], 0.1, step_size=0.1, num_steps=1, key=self.key)
