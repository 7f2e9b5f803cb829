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


def _reference_trades(logits_fn, x, epsilon, step_size, num_steps, key):
    """A plain Python loop of the TRADES update, written independently of attack.py."""
    eps = epsilon.reshape(-1, 1, 1, 1)
    step = step_size.reshape(-1, 1, 1, 1)
    target = jax.nn.softmax(logits_fn(x))

    def kl(x_adv):
        log_q = jax.nn.log_softmax(logits_fn(x_adv))
        return jnp.sum(target * (jnp.log(target) - log_q))

    @jax.jit  # one step, compiled once; the loop itself stays in Python
    def ascend(x_adv):
        x_adv = x_adv + step * jnp.sign(jax.grad(kl)(x_adv))
        return jnp.clip(jnp.minimum(jnp.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)

    x_adv = x + 0.001 * jax.random.normal(key, x.shape)
    x_adv = jnp.clip(jnp.minimum(jnp.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)
    iterates = [x_adv]
    for _ in range(num_steps):
        x_adv = ascend(x_adv)
        iterates.append(x_adv)
    return iterates


class TradesPgdTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.params = _init_params(jax.random.PRNGKey(0))
        self.logits_fn = lambda x: _logits(self.params, x)
        self.x = _images(jax.random.PRNGKey(1))
        self.key = jax.random.PRNGKey(2)
        self.epsilon = jnp.array([0.0, 1 / 255, 4 / 255, 16 / 255])

    def _attack(self, epsilon, step_size, num_steps):
        fn = lambda x, eps, step, key: attack.trades_pgd(  # noqa: E731
            self.logits_fn, x, eps, step_size=step, num_steps=num_steps, key=key
        )
        return self.variant(fn)(self.x, epsilon, step_size, self.key)

    @chex.variants(with_jit=True, without_jit=True)
    def test_stays_in_each_examples_ball_and_in_unit_range(self):
        x_adv = self._attack(self.epsilon, self.epsilon / 4, 5)
        chex.assert_shape(x_adv, SHAPE)
        distance = jnp.abs(x_adv - self.x).max(axis=(1, 2, 3))
        self.assertTrue(bool(jnp.all(distance <= self.epsilon + 1e-6)), msg=f"{distance} vs {self.epsilon}")
        np.testing.assert_array_equal(x_adv[0], self.x[0])  # radius 0: no perturbation at all
        self.assertGreater(float(distance[3]), 8 / 255)  # the largest ball is actually used
        self.assertTrue(bool(jnp.all((x_adv >= 0.0) & (x_adv <= 1.0))))

    @chex.variants(with_jit=True, without_jit=True)
    def test_kl_increases(self):
        epsilon = jnp.full((SHAPE[0],), 0.1)
        start = self._attack(epsilon, epsilon / 4, 0)
        end = self._attack(epsilon, epsilon / 4, 10)
        clean = self.logits_fn(self.x)
        kl_start = losses.kl_divergence(clean, self.logits_fn(start))
        kl_end = losses.kl_divergence(clean, self.logits_fn(end))
        self.assertTrue(bool(jnp.all(kl_end > kl_start + 1e-4)), msg=f"{kl_start} -> {kl_end}")

    @chex.variants(with_jit=True, without_jit=True)
    def test_fori_loop_matches_python_loop_step_by_step(self):
        step_size = self.epsilon / 4
        reference = _reference_trades(self.logits_fn, self.x, self.epsilon, step_size, 2, self.key)
        for num_steps, expected in enumerate(reference):
            np.testing.assert_allclose(self._attack(self.epsilon, step_size, num_steps), expected, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_scalar_radius_equals_uniform_per_example_radius(self):
        scalar = self._attack(jnp.float32(0.05), jnp.float32(0.01), 2)
        vector = self._attack(jnp.full((SHAPE[0],), 0.05), jnp.full((SHAPE[0],), 0.01), 2)
        np.testing.assert_allclose(scalar, vector, atol=1e-7)

    def test_python_float_radius(self):
        x_adv = attack.trades_pgd(self.logits_fn, self.x, 0.05, step_size=0.01, num_steps=2, key=self.key)
        self.assertLessEqual(float(jnp.abs(x_adv - self.x).max()), 0.05 + 1e-6)

    def test_no_gradient_flows_into_x_adv(self):
        def attacked_sum(x):
            return jnp.sum(attack.trades_pgd(self.logits_fn, x, 0.1, step_size=0.02, num_steps=2, key=self.key))

        np.testing.assert_array_equal(jax.grad(attacked_sum)(self.x), 0.0)

        def outer_loss(params, x_adv=None):
            if x_adv is None:
                x_adv = attack.trades_pgd(
                    lambda x: _logits(params, x), self.x, 0.1, step_size=0.02, num_steps=2, key=self.key
                )
            return jnp.sum(_logits(params, x_adv) ** 2)

        fixed = attack.trades_pgd(self.logits_fn, self.x, 0.1, step_size=0.02, num_steps=2, key=self.key)
        chex.assert_trees_all_close(jax.grad(outer_loss)(self.params), jax.grad(outer_loss)(self.params, fixed))

    def test_rejects_bad_radius_shape_and_steps(self):
        with pytest.raises(ValueError, match="epsilon"):
            attack.trades_pgd(self.logits_fn, self.x, jnp.ones(3), step_size=0.1, num_steps=1, key=self.key)
        with pytest.raises(ValueError, match="num_steps"):
            attack.trades_pgd(self.logits_fn, self.x, 0.1, step_size=0.1, num_steps=-1, key=self.key)


class PgdCeTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        params = _init_params(jax.random.PRNGKey(3))
        self.logits_fn = lambda x: _logits(params, x)
        self.x = _images(jax.random.PRNGKey(4))
        self.labels = jnp.argmax(self.logits_fn(self.x), axis=-1)  # attack correctly classified examples
        self.key = jax.random.PRNGKey(5)

    def _attack(self, epsilon, step_size, num_steps):
        fn = lambda x, labels, eps, step, key: attack.pgd_ce(  # noqa: E731
            self.logits_fn, x, labels, eps, step_size=step, num_steps=num_steps, key=key
        )
        return self.variant(fn)(self.x, self.labels, epsilon, step_size, self.key)

    @chex.variants(with_jit=True, without_jit=True)
    def test_bounds_and_loss_increase(self):
        epsilon = jnp.array([0.0, 0.02, 0.05, 0.1])
        x_adv = self._attack(epsilon, epsilon / 4, 10)
        distance = jnp.abs(x_adv - self.x).max(axis=(1, 2, 3))
        self.assertTrue(bool(jnp.all(distance <= epsilon + 1e-6)))
        self.assertTrue(bool(jnp.all((x_adv >= 0.0) & (x_adv <= 1.0))))
        ce_clean = optax.softmax_cross_entropy_with_integer_labels(self.logits_fn(self.x), self.labels)
        ce_adv = optax.softmax_cross_entropy_with_integer_labels(self.logits_fn(x_adv), self.labels)
        np.testing.assert_allclose(ce_adv[0], ce_clean[0], rtol=1e-6)
        self.assertTrue(bool(jnp.all(ce_adv[1:] > ce_clean[1:])), msg=f"{ce_clean} -> {ce_adv}")

    @chex.variants(with_jit=True, without_jit=True)
    def test_random_start_fills_the_ball(self):
        x_start = self._attack(jnp.float32(0.1), jnp.float32(0.0), 0)
        interior = (self.x > 0.1) & (self.x < 0.9)
        offsets = (x_start - self.x)[interior]
        self.assertGreater(float(offsets.max()), 0.08)
        self.assertLess(float(offsets.min()), -0.08)

    def test_rejects_bad_labels(self):
        with pytest.raises(ValueError, match="labels"):
            attack.pgd_ce(self.logits_fn, self.x, self.labels[:2], 0.1, step_size=0.1, num_steps=1, key=self.key)
