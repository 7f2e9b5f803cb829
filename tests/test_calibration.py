"""Tests for flax_fld.method.calibration (Eqs. 1 and 2 and the per-class accuracy they consume)."""

import chex
import numpy as np
import pytest

from flax_fld.method import calibration


class ClassEpsilonTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed(self):
        acc = np.array([0.0, 0.5, 1.0, 0.25], np.float32)
        eps = self.variant(calibration.class_epsilon)(acc, 8 / 255, 0.5)
        # (sigma + acc) * epsilon = [0.5, 1.0, 1.5, 0.75] * 8/255.
        np.testing.assert_allclose(eps, [4 / 255, 8 / 255, 12 / 255, 6 / 255], rtol=1e-6)

    def test_rejects_non_vector(self):
        with pytest.raises(ValueError, match="class_epsilon"):
            calibration.class_epsilon(np.ones((2, 2)), 0.1, 0.5)


class ClassBetaTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed(self):
        acc = np.array([0.0, 0.5, 1.0], np.float32)
        beta = self.variant(calibration.class_beta)(acc, 6.0, 0.5)
        # (mu + acc) * beta = 3, 6, 9 -> 3/4, 6/7, 9/10.
        np.testing.assert_allclose(beta, [0.75, 6 / 7, 0.9], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_increasing_in_accuracy_and_below_one(self):
        acc = np.linspace(0.0, 1.0, 11).astype(np.float32)
        beta = np.asarray(self.variant(calibration.class_beta)(acc, 6.0, 0.5))
        self.assertTrue(np.all(np.diff(beta) > 0))
        self.assertTrue(np.all((beta > 0) & (beta < 1)))


class ClassAccuracyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_imbalanced_counts(self):
        # The paper's test split: normal 69, mild 90, moderate 66, severe 39 ("Ours" row of Table 1).
        acc = self.variant(calibration.class_accuracy)(
            np.array([66, 69, 51, 33]), np.array([69, 90, 66, 39]), np.zeros(4, np.float32)
        )
        np.testing.assert_allclose(acc, [66 / 69, 69 / 90, 51 / 66, 33 / 39], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_empty_class_keeps_previous(self):
        previous = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
        acc = self.variant(calibration.class_accuracy)(np.array([3, 0, 0, 2]), np.array([4, 0, 5, 2]), previous)
        np.testing.assert_allclose(acc, [0.75, 0.2, 0.0, 1.0], rtol=1e-6)
        self.assertTrue(np.all(np.isfinite(acc)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_feeds_eq1_with_an_empty_class(self):
        acc = calibration.class_accuracy(np.array([0, 5]), np.array([0, 10]), np.array([1.0, 0.0]))
        eps = self.variant(calibration.class_epsilon)(acc, 0.1, 0.5)
        np.testing.assert_allclose(eps, [0.15, 0.1], rtol=1e-6)

    def test_rejects_mismatched_shapes(self):
        with pytest.raises(ValueError, match="class_accuracy"):
            calibration.class_accuracy(np.array([1, 2]), np.array([1, 2, 3]), np.zeros(3))
