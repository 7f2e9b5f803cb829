"""Tests for flax_fld.method.losses (Eqs. 3, 4, 5 and the decoupling BCE)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from flax_fld.method import losses


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class LaplacianTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_linear_ramp_has_zero_interior(self):
        rows, cols = np.meshgrid(np.arange(12.0), np.arange(10.0), indexing="ij")
        ramp = np.stack([0.03 * rows + 0.05 * cols, 0.5 - 0.02 * cols], axis=-1)[None].astype(np.float32)
        lap = self.variant(losses.laplacian)(ramp)
        chex.assert_shape(lap, ramp.shape)
        lap = np.asarray(lap)  # sliced on the host: each slice of a device array compiles a program
        np.testing.assert_allclose(lap[:, 1:-1, 1:-1, :], 0.0, atol=1e-5)
        # The border is not zero for a ramp under edge replication: the check above is not vacuous.
        self.assertGreater(float(np.abs(lap[:, 0, :, 0]).max()), 1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_scipy_nearest_mode(self):
        x = np.random.default_rng(0).uniform(size=(2, 9, 7, 3)).astype(np.float32)
        expected = np.stack(
            [np.stack([scipy.ndimage.laplace(x[b, :, :, c], mode="nearest") for c in range(3)], -1) for b in range(2)]
        )
        np.testing.assert_allclose(self.variant(losses.laplacian)(x), expected, atol=1e-5)

    def test_rejects_unbatched_input(self):
        with pytest.raises(ValueError, match="laplacian"):
            losses.laplacian(np.zeros((8, 8, 1), np.float32))


@jax.jit  # one program for the reference's edge term, whichever variant runs first
def _laplacian_difference(x, x_hat):
    return losses.laplacian(x) - losses.laplacian(x_hat)


class ReconstructionLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_identical_images_give_xi(self):
        x = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype(np.float32)
        loss = self.variant(losses.reconstruction_loss)(x, x, 1e-3)
        np.testing.assert_allclose(loss, 1e-3, rtol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_brightness_shift_costs_only_l1(self):
        x = np.random.default_rng(1).uniform(size=(2, 16, 16, 1)).astype(np.float32)
        loss = self.variant(losses.reconstruction_loss)(x, x + 0.1, 1e-3)
        np.testing.assert_allclose(loss, 1e-3 + 0.1, rtol=1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_formula_and_penalises_blur(self):
        x = np.random.default_rng(2).uniform(size=(1, 16, 16, 1)).astype(np.float32)
        blurred = scipy.ndimage.uniform_filter(x, size=(1, 3, 3, 1), mode="nearest")
        xi = 1e-2
        loss = self.variant(losses.reconstruction_loss)(x, blurred, xi)
        edge = _laplacian_difference(x, blurred)
        expected = np.mean(np.sqrt(np.asarray(edge) ** 2 + xi**2)) + np.mean(np.abs(x - blurred))
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        self.assertGreater(float(loss), 0.1)

    def test_gradient_is_finite_at_zero_error(self):
        x = np.random.default_rng(3).uniform(size=(1, 8, 8, 1)).astype(np.float32)
        # Under jit: differentiated eagerly, each op of the backward pass compiles a program of its own.
        grad = jax.jit(jax.grad(lambda x_hat: losses.reconstruction_loss(x, x_hat)))(x)
        self.assertTrue(bool(np.all(np.isfinite(grad))))

    def test_rejects_shape_mismatch(self):
        with pytest.raises(ValueError, match="reconstruction_loss"):
            losses.reconstruction_loss(np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 8, 8, 3), np.float32))


class DecouplingBceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        logits = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
        labels = np.array([0, 3, 1, 2, 3])
        targets = np.eye(4)[labels]
        probs = 1.0 / (1.0 + np.exp(-logits))
        expected = -np.mean(targets * np.log(probs) + (1 - targets) * np.log(1 - probs))
        np.testing.assert_allclose(self.variant(losses.decoupling_bce)(logits, labels), expected, rtol=1e-5)


class AdaptiveTradesLossTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(5)
        self.clean = rng.normal(size=(6, 4)).astype(np.float32)
        self.adv = (self.clean + rng.normal(size=(6, 4))).astype(np.float32)
        self.labels = np.array([0, 1, 2, 3, 1, 0])
        log_p, log_q = _log_softmax(self.clean), _log_softmax(self.adv)
        self.ce = -log_p[np.arange(6), self.labels]
        self.kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)

    @chex.variants(with_jit=True, without_jit=True)
    def test_beta_zero_is_cross_entropy(self):
        mean, per_example = self.variant(losses.adaptive_trades_loss)(self.clean, self.adv, self.labels, np.zeros(4))
        np.testing.assert_allclose(per_example, self.ce, rtol=1e-5)
        np.testing.assert_allclose(mean, self.ce.mean(), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_beta_one_is_kl_with_clean_target(self):
        _, per_example = self.variant(losses.adaptive_trades_loss)(self.clean, self.adv, self.labels, np.ones(4))
        np.testing.assert_allclose(per_example, self.kl, rtol=1e-4, atol=1e-6)
        # The direction matters: KL(adv || clean) is a different number.
        log_p, log_q = _log_softmax(self.clean), _log_softmax(self.adv)
        reversed_kl = np.sum(np.exp(log_q) * (log_q - log_p), axis=-1)
        self.assertFalse(np.allclose(per_example, reversed_kl, rtol=1e-3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_class_beta_is_gathered_by_label(self):
        class_beta = np.array([0.1, 0.5, 0.75, 0.9], np.float32)
        mean, per_example = self.variant(losses.adaptive_trades_loss)(self.clean, self.adv, self.labels, class_beta)
        beta = class_beta[self.labels]
        np.testing.assert_allclose(per_example, (1 - beta) * self.ce + beta * self.kl, rtol=1e-4)
        np.testing.assert_allclose(mean, np.mean(per_example), rtol=1e-6)

    def test_kl_is_zero_for_identical_logits(self):
        _, per_example = losses.adaptive_trades_loss(self.clean, self.clean, self.labels, np.ones(4))
        np.testing.assert_allclose(per_example, 0.0, atol=1e-6)

    def test_rejects_bad_shapes(self):
        with pytest.raises(ValueError, match="class_beta"):
            losses.adaptive_trades_loss(self.clean, self.adv, self.labels, np.ones(3))
        with pytest.raises(ValueError, match="labels"):
            losses.adaptive_trades_loss(self.clean, self.adv, self.labels[:3], np.ones(4))
        with pytest.raises(ValueError, match="differ in shape"):
            losses.adaptive_trades_loss(self.clean, self.adv[:, :3], self.labels, np.ones(4))


class TotalLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_weighted_sum(self):
        total = self.variant(losses.total_loss)(jnp.float32(2.0), jnp.float32(3.0), jnp.float32(5.0), (0.5, 2.0, 0.1))
        np.testing.assert_allclose(total, 0.5 * 2 + 2.0 * 3 + 0.1 * 5, rtol=1e-6)

    def test_rejects_wrong_number_of_weights(self):
        with pytest.raises(ValueError, match="weights"):
            losses.total_loss(1.0, 1.0, 1.0, (1.0, 1.0))
