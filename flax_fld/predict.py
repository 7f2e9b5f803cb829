"""Grading new ultrasound images with a trained model (``launch/predict.py``).

``run`` prints, for each image, the predicted grade and the probability of every class. With ``plot_dir``,
it also writes DIR/<image name>.png showing the image, IC2's reconstruction and a few decoupled feature maps of
IC1 and IC2 (flax_fld.plots.plot_decoupling_grid).

Images: PNG, JPEG or BMP, grayscale or RGB, any size. They are prepared exactly as the training data set
prepares its images (flax_fld.datasets.base.fit_square: padded to a square with black so the depth axis
is not stretched, bilinear resize to the config's image size, converted to the model's channel count).
An unreadable image raises ValueError naming the file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

from flax_fld.datasets import base

# 8-bit modes that PIL converts to L/RGB without losing range; 16-bit and float images go through the
# same value check the data set builders use (values must already lie in 0..255 or [0, 1]).
_HIGH_DEPTH_MODES = ("F", "I", "I;16", "I;16B", "I;16L")


def decode_image(path: str) -> PIL.Image.Image:
    """Fully decodes one image file (8-bit L/RGB/RGBA/P..., or 16-bit/float holding 0..255 values).

    Raises:
        ValueError: ``cannot read image <path>: <reason>`` for a missing, corrupt, truncated or
        unsupported file.
    """
    try:
        with PIL.Image.open(path) as image:
            image.load()  # a full decode, so a truncated file fails here
            if image.mode in _HIGH_DEPTH_MODES:
                return PIL.Image.fromarray(base.array_to_uint8(np.asarray(image), path))
            return image.copy()
    except (OSError, SyntaxError, PIL.UnidentifiedImageError, ValueError) as error:
        reason = str(error).replace(f"{path}: ", "")
        raise ValueError(f"cannot read image {path}: {reason}") from None


def prepare_image(image: PIL.Image.Image, image_size: int, channels: int) -> np.ndarray:
    """A decoded image -> float32 ``[image_size, image_size, channels]`` in [0, 1], as the data sets do it."""
    return base.fit_square(image, image_size, channels).astype(np.float32) / 255.0


def read_images(paths: Sequence[str], image_size: int, channels: int) -> np.ndarray:
    """Image files -> float32 ``[N, image_size, image_size, channels]``; stops at the first unreadable one."""
    return np.stack([prepare_image(decode_image(path), image_size, channels) for path in paths])


@functools.lru_cache(maxsize=4)
def _jitted_forward(model: Any):
    """``fld.forward`` in eval mode, jitted once per (hashable) model so repeated calls reuse the compile."""
    import jax

    from flax_fld.models import fld

    return jax.jit(lambda variables, x: fld.forward(model, variables, x, train=False))


def predict(model: Any, variables: dict, images: np.ndarray, *,
            batch_size: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
    """Class probabilities ``[N, K]`` and the decoupled maps of ``images [N, H, W, C]`` (eval mode).

    The intermediates are ``fld.forward``'s (``feat1``, ``feat2`` ``[N, H, W, F]``, ``x_hat``
    ``[N, H, W, C]``; None in the baseline without decouplers), gathered over batches as numpy.
    """
    import jax

    forward = _jitted_forward(model)
    probabilities, gathered = [], {"feat1": [], "feat2": [], "x_hat": []}
    for start in range(0, len(images), batch_size):
        logits, intermediates = forward(variables, images[start:start + batch_size])
        probabilities.append(np.asarray(jax.nn.softmax(logits, axis=-1)))
        for key in gathered:
            value = intermediates.get(key)
            gathered[key].append(None if value is None else np.asarray(value))
    maps = {key: None if any(v is None for v in values) else np.concatenate(values)
            for key, values in gathered.items()}
    return np.concatenate(probabilities), maps


def format_prediction(path: str, probabilities: np.ndarray, class_names: Sequence[str]) -> str:
    """``path: moderate (71.0%) | normal 5.0% mild 18.0% moderate 71.0% severe 6.0%``."""
    best = int(np.argmax(probabilities))
    spread = " ".join(f"{name} {100 * p:.1f}%" for name, p in zip(class_names, probabilities))
    return f"{path}: {class_names[best]} ({100 * probabilities[best]:.1f}%) | {spread}"


def plot_paths(paths: Sequence[str], plot_dir: str) -> list[str]:
    """One PNG per image named after it; a repeated name gets its position appended."""
    seen: set[str] = set()
    outputs = []
    for index, path in enumerate(paths):
        stem = os.path.splitext(os.path.basename(path))[0] or f"image_{index}"
        name = stem if stem not in seen else f"{stem}_{index}"
        seen.add(name)
        outputs.append(os.path.join(plot_dir, f"{name}.png"))
    return outputs


def run(workdir: str, image_paths: Sequence[str], *, which: str = "best", plot_dir: str = "",
        batch_size: int = 32, loaded: tuple | None = None) -> list[str]:
    """Loads the model, predicts every image, prints and returns one line per image; writes plots if asked.

    ``loaded`` is an already loaded ``train.load_for_inference(workdir, which)`` result (skips loading).
    """
    from flax_fld import plots, train

    decoded = [decode_image(path) for path in image_paths]  # a bad file fails before the model is loaded
    if loaded is None:
        loaded = train.load_for_inference(workdir, which=which)
    _, model, variables, info = loaded
    image_size, _, channels = info.image_shape
    images = np.stack([prepare_image(image, image_size, channels) for image in decoded])
    probabilities, maps = predict(model, variables, images, batch_size=batch_size)
    lines = [format_prediction(path, p, info.class_names) for path, p in zip(image_paths, probabilities)]
    for line in lines:
        print(line)
    if plot_dir:
        predictions = probabilities.argmax(axis=-1)
        for index, out_path in enumerate(plot_paths(image_paths, plot_dir)):
            pick = slice(index, index + 1)
            plots.plot_decoupling_grid(
                images[pick], *(None if maps[k] is None else maps[k][pick] for k in ("x_hat", "feat1", "feat2")),
                None, info.class_names, out_path, predictions=predictions[pick], probabilities=probabilities[pick])
            print(f"wrote {out_path}")
    return lines
