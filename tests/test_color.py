"""Tests for flax_fld.models.color: reference values, agreement with colorsys and PIL, and finite gradients."""

import colorsys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from flax_fld.models import color


def _pixels(rgb_list):
    return np.asarray(rgb_list, np.float32).reshape(1, 1, -1, 3)


def _random_rgb(seed, shape=(2, 6, 5, 3)):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _padded_pixels(rgb_list, seed=9):
    """The pixels first, then random ones, in an image of _random_rgb's default shape: at one shape, the eager
    variants' per-op programs compile once for the whole file (read the pixels back with reshape(-1, 3))."""
    pixels = np.asarray(rgb_list, np.float32)
    return np.concatenate([pixels, _random_rgb(seed, (60 - len(pixels), 3))]).reshape(2, 6, 5, 3)


@pytest.mark.parametrize("space, channels", [("gray", 1), ("ycbcr", 3), ("hsv", 3), ("lab", 3), ("rgb", 3)])
def test_num_color_channels(space, channels):
    assert color.num_color_channels(space) == channels
    for in_channels in (1, 3):
        # Only the shape is asserted: eval_shape traces the transform, where an eager call compiles each op.
        shape = jax.eval_shape(lambda x: color.color_transform(x, space), np.zeros((1, 4, 4, in_channels))).shape
        assert shape == (1, 4, 4, channels)


def test_rejects_unknown_space_and_channel_count():
    with pytest.raises(ValueError, match="'luv'"):
        color.num_color_channels("luv")
    with pytest.raises(ValueError, match="'luv'"):
        color.color_transform(np.zeros((1, 4, 4, 3)), "luv")
    with pytest.raises(ValueError, match="C in"):
        color.color_transform(np.zeros((1, 4, 4, 2)), "hsv")
    with pytest.raises(ValueError, match="rgb_to_lab"):
        color.rgb_to_lab(np.zeros((1, 4, 4, 1)))


class LabTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_reference_values(self):
        # CIE L*a*b* (D65) of the sRGB primaries, white and black (standard published values).
        rgb = _padded_pixels([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
        expected = [
            [53.24, 80.09, 67.20],
            [87.73, -86.18, 83.18],
            [32.30, 79.19, -107.86],
            [100.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
        ]
        lab = np.asarray(self.variant(color.rgb_to_lab)(rgb)).reshape(-1, 3)  # numpy: slicing a jax.Array compiles
        np.testing.assert_allclose(lab[:5], expected, atol=0.02)

    @chex.variants(with_jit=True, without_jit=True)
    def test_network_scaling(self):
        pixels = _padded_pixels([[1, 0, 0], [0.5, 0.5, 0.5]])
        lab = np.asarray(self.variant(lambda x: color.color_transform(x, "lab"))(pixels)).reshape(-1, 3)
        np.testing.assert_allclose(lab[0], [0.5324, (80.09 + 128) / 255, (67.20 + 128) / 255], atol=1e-3)
        np.testing.assert_allclose(lab[1, 1:], 128 / 255, atol=1e-4)  # gray is neutral


class HsvTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_colorsys(self):
        rgb = _random_rgb(0).reshape(1, 1, -1, 3)
        # Gray, black, white, primaries and ties between two maxima, where colorsys's tie-break matters.
        special = _pixels([[0.3, 0.3, 0.3], [0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0],
                           [0, 1, 1], [1, 0, 1], [0.8, 0.2, 0.8]])
        rgb = np.concatenate([rgb, special], axis=2)
        hsv = np.asarray(self.variant(color.rgb_to_hsv)(rgb))[0, 0]
        expected = np.array([colorsys.rgb_to_hsv(*map(float, pixel)) for pixel in rgb[0, 0]])
        hue_gap = np.abs(hsv[:, 0] - expected[:, 0])
        np.testing.assert_allclose(np.minimum(hue_gap, 1.0 - hue_gap), 0.0, atol=1e-5)  # hue is circular
        np.testing.assert_allclose(hsv[:, 1:], expected[:, 1:], atol=1e-5)
        self.assertTrue(np.all((hsv[:, 0] >= 0.0) & (hsv[:, 0] < 1.0)))


class YCbCrAndGrayTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_pil(self):
        rgb8 = np.random.default_rng(1).integers(0, 256, size=(1, 12, 10, 3), dtype=np.uint8)
        ycbcr = 255.0 * np.asarray(self.variant(color.rgb_to_ycbcr)(rgb8.astype(np.float32) / 255))
        gray = 255.0 * np.asarray(self.variant(color.rgb_to_gray)(rgb8.astype(np.float32) / 255))
        image = Image.fromarray(rgb8[0])
        # PIL works in 8-bit integer arithmetic: agree up to its rounding.
        np.testing.assert_allclose(ycbcr[0], np.asarray(image.convert("YCbCr"), np.float32), atol=1.01)
        np.testing.assert_allclose(gray[0, ..., 0], np.asarray(image.convert("L"), np.float32), atol=1.01)


class GrayscaleInputTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_one_channel_handling(self):
        x = _random_rgb(2, (2, 6, 5, 1))  # the other tests' 2x6x5 images: the eager variant shares their programs
        variant = self.variant(color.color_transform, static_argnums=1)
        transform = lambda x, space: np.asarray(variant(x, space))  # noqa: E731  indexed in numpy
        np.testing.assert_array_equal(transform(x, "gray"), x)
        np.testing.assert_array_equal(transform(x, "rgb"), np.repeat(x, 3, axis=-1))
        ycbcr = transform(x, "ycbcr")
        np.testing.assert_allclose(ycbcr[..., :1], x, atol=1e-6)
        np.testing.assert_allclose(ycbcr[..., 1:], 0.5, atol=1e-6)
        hsv = transform(x, "hsv")
        np.testing.assert_allclose(hsv[..., :2], 0.0)
        np.testing.assert_allclose(hsv[..., 2:], x)
        lab = transform(x, "lab")
        np.testing.assert_allclose(lab[..., 1:], 128 / 255, atol=1e-4)
        np.testing.assert_allclose(lab, transform(np.repeat(x, 3, axis=-1), "lab"), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_rgb_outputs_lie_in_unit_range(self):
        x = _random_rgb(3)
        for space in color.COLOR_SPACES:
            out = np.asarray(self.variant(color.color_transform, static_argnums=1)(x, space))
            self.assertTrue(np.all((out >= -1e-6) & (out <= 1 + 1e-6)), msg=space)


class GradientTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients_are_finite_everywhere(self):
        rgb = _padded_pixels([[0, 0, 0], [1, 1, 1], [0.4, 0.4, 0.4], [0.02, 0.02, 0.02], [1, 0, 0], [0.5, 0.5, 0.2]],
                             seed=4)
        # Gray at the same size: replicated to RGB, it reuses rgb's per-op programs in the eager variant.
        gray = np.concatenate([[[0.0], [1.0], [0.01], [0.5]], _random_rgb(5, (56, 1))]).astype(np.float32)
        gray = gray.reshape(2, 6, 5, 1)
        for space in color.COLOR_SPACES:
            for x in (rgb, gray):
                grad_fn = self.variant(jax.grad(lambda x, space=space: jnp.sum(color.color_transform(x, space))))
                grad = np.asarray(grad_fn(x))
                self.assertEqual(grad.shape, x.shape)
                self.assertTrue(np.all(np.isfinite(grad)), msg=f"{space} {x.shape[-1]}-channel: {grad}")
                self.assertTrue(np.any(grad != 0.0), msg=space)
