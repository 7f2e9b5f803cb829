"""The texture floor's features (flax_fld/evaluation/texture_features.py): GLCM against scikit-image, and a texture
difference that pixels at random positions cannot show but the features separate."""

import numpy as np
import pytest
from skimage.feature import graycomatrix, graycoprops

from flax_fld.evaluation import linear_probe, texture_features


@pytest.mark.parametrize("dy, dx", [(0, 1), (2, 0), (0, 4)])
def test_glcm_and_its_properties_match_scikit_image(dy, dx):
    rng = np.random.default_rng(0)
    levels = rng.integers(0, texture_features.GREY_LEVELS, (24, 24))
    distance, angle = (dx, 0.0) if dy == 0 else (dy, np.pi / 2)
    reference = graycomatrix(levels.astype(np.uint8), [distance], [angle], levels=texture_features.GREY_LEVELS,
                             symmetric=True, normed=True)
    glcm = texture_features.co_occurrence(levels, dy, dx)
    np.testing.assert_allclose(glcm, reference[:, :, 0, 0], atol=1e-12)
    expected = [graycoprops(reference, name)[0, 0] for name in texture_features.GLCM_PROPERTIES]
    np.testing.assert_allclose(texture_features.glcm_properties(glcm), expected, rtol=1e-9)


def test_features_have_a_fixed_width_and_a_constant_image_stays_finite():
    images = np.concatenate([np.full((1, 16, 16, 1), 0.5), np.random.default_rng(1).random((2, 16, 16, 1))])
    features = texture_features.texture_features(images)
    assert features.shape == (3, 50) and np.all(np.isfinite(features))
    rgb = texture_features.texture_features(np.repeat(images, 3, axis=-1))
    np.testing.assert_allclose(rgb, features, atol=1e-6)  # RGB is read as its grey average
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        texture_features.texture_features(images[..., 0])


def test_smooth_and_rough_speckle_of_equal_brightness_are_told_apart():
    """Two classes with the same intensity distribution, differing only in the speckle's grain size: the
    texture features separate them perfectly; the logistic regression is the one the floor uses."""
    rng = np.random.default_rng(2)
    fine = rng.random((40, 32, 32, 1))
    coarse = np.kron(rng.random((40, 8, 8, 1)), np.ones((1, 4, 4, 1)))  # same values, 4x4-pixel grains
    features = texture_features.texture_features(np.concatenate([fine, coarse]))
    labels = np.repeat([0, 1], 40)
    standardised = (features - features.mean(0)) / (features.std(0) + 1e-3)
    params = linear_probe.train_logistic_regression(standardised, labels, 2, l2=1e-2)
    assert np.mean(linear_probe.predict(params, standardised) == labels) == 1.0
