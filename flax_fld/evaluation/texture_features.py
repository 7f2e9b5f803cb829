"""Hand-made texture features of an image: the classical baseline of ultrasound grading.

Fatty liver raises the echogenicity of the parenchyma and changes its speckle texture, so ultrasound papers
compare against intensity statistics, grey-level co-occurrence (GLCM, Haralick et al. 1973) measures and
gradient statistics fed to a linear model. ``texture_features`` computes, per image (grayscale; RGB is
averaged over channels):

- the intensity histogram (16 bins over [0, 1]) and mean, std, skewness, kurtosis;
- GLCM contrast, homogeneity, energy and correlation on 16 grey levels at distances 1, 2 and 4 pixels,
  horizontally and vertically (kept apart: depth is a physical direction in B-mode);
- the mean and std of the horizontal and vertical gradient magnitude and of the Laplacian.

Numpy only; ``[N, H, W, C]`` images in [0, 1] -> ``[N, 50]`` float32.
"""

import numpy as np

HISTOGRAM_BINS = 16
GREY_LEVELS = 16
DISTANCES = (1, 2, 4)
GLCM_PROPERTIES = ("contrast", "homogeneity", "energy", "correlation")


def co_occurrence(levels: np.ndarray, dy: int, dx: int, num_levels: int = GREY_LEVELS) -> np.ndarray:
    """Normalised symmetric GLCM ``[L, L]`` of one ``[H, W]`` integer image for the offset ``(dy, dx) >= 0``."""
    height, width = levels.shape
    first = levels[: height - dy, : width - dx].ravel()
    second = levels[dy:, dx:].ravel()
    counts = np.bincount(first * num_levels + second, minlength=num_levels * num_levels).reshape(num_levels, -1)
    counts = counts + counts.T  # symmetric: the pair (a, b) is also (b, a)
    return counts / max(counts.sum(), 1)


def glcm_properties(glcm: np.ndarray) -> np.ndarray:
    """``[contrast, homogeneity, energy, correlation]`` of a normalised ``[L, L]`` GLCM (scikit-image's
    definitions; correlation is 1 for a constant image, whose variance is 0)."""
    i, j = np.indices(glcm.shape)
    contrast = np.sum(glcm * (i - j) ** 2)
    homogeneity = np.sum(glcm / (1.0 + (i - j) ** 2))
    energy = np.sqrt(np.sum(glcm ** 2))
    mean_i, mean_j = np.sum(i * glcm), np.sum(j * glcm)
    std_i = np.sqrt(np.sum(glcm * (i - mean_i) ** 2))
    std_j = np.sqrt(np.sum(glcm * (j - mean_j) ** 2))
    if std_i < 1e-12 or std_j < 1e-12:
        correlation = 1.0
    else:
        correlation = np.sum(glcm * (i - mean_i) * (j - mean_j)) / (std_i * std_j)
    return np.asarray([contrast, homogeneity, energy, correlation])


def _moments(values: np.ndarray) -> np.ndarray:
    mean, std = values.mean(), values.std()
    centred = (values - mean) / (std + 1e-8)
    return np.asarray([mean, std, np.mean(centred ** 3), np.mean(centred ** 4)])


def image_features(image: np.ndarray) -> np.ndarray:
    """The features of one ``[H, W]`` grayscale image in [0, 1] (see the module docstring)."""
    histogram = np.histogram(image, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0] / image.size
    levels = np.minimum((image * GREY_LEVELS).astype(np.int64), GREY_LEVELS - 1)
    glcm = [glcm_properties(co_occurrence(levels, dy, dx))
            for distance in DISTANCES for dy, dx in ((0, distance), (distance, 0))]
    gradient_y, gradient_x = np.abs(np.diff(image, axis=0)), np.abs(np.diff(image, axis=1))
    laplacian = (image[:-2, 1:-1] + image[2:, 1:-1] + image[1:-1, :-2] + image[1:-1, 2:] - 4 * image[1:-1, 1:-1])
    gradients = [gradient_x.mean(), gradient_x.std(), gradient_y.mean(), gradient_y.std(),
                 np.abs(laplacian).mean(), laplacian.std()]
    return np.concatenate([histogram, _moments(image), np.concatenate(glcm), gradients]).astype(np.float32)


def texture_features(images: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` images in [0, 1] -> ``[N, D]`` texture features (D = 50)."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"texture_features: expected [N, H, W, C] images, got shape {images.shape}")
    gray = np.clip(images.mean(axis=-1), 0.0, 1.0)
    return np.stack([image_features(image) for image in gray]) if len(gray) else np.zeros((0, 50), np.float32)
