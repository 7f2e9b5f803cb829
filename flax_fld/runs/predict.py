"""Grading new ultrasound images with a trained model (``launch/predict.py``).

``run`` prints, for each image, the predicted grade and the probability of every class. A DICOM file with
several frames (a cine loop) gets one such line per frame (``PATH frame 3/30: ...``) and then one for the file:
its majority grade over the frames and the mean probability of every class (``tables.format_file_summary``). With
``plot_dir``, it also writes DIR/<image name>.png (DIR/<name>_frame<k>.png per frame) showing the image, IC2's
reconstruction and a few decoupled feature maps of IC1 and IC2 (flax_fld.reporting.plots.plot_decoupling_grid). With
``explain`` too, beside each it writes DIR/<name>_saliency.png: where the model looks for the predicted grade,
integrated gradients of that grade's logit with respect to the image through the whole model (IC1, IC2, the
colour transform and the classifier; flax_fld.evaluation.saliency, whose docstring says why not Grad-CAM and why the
baseline is the image with its echo pattern flattened rather than black), drawn over the image
(flax_fld.reporting.plots.plot_saliency). Its title shows the completeness check: the attributions' sum against the
logit change they should add up to; a large gap means more ``explain_steps`` are needed.

Images: PNG, JPEG, BMP, TIFF or DICOM (.dcm, needs ``pip install 'flax-fld[dicom]'``), grayscale or RGB, any
size and bit depth. They are prepared exactly as the training data set prepares its images (integer images
scaled by their file's own range: flax_fld.data.datasets.base.image_to_uint8, flax_fld.data.datasets.dicom_files; then
flax_fld.data.datasets.base.fit_square: padded to a square with black so the depth axis is not stretched, bilinear
resize to the config's image size, converted to the model's channel count). An unreadable image raises
ValueError naming the file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

from flax_fld.data.datasets import base, dicom_files
from flax_fld.reporting import tables


def decode_image(path: str) -> PIL.Image.Image:
    """Fully decodes one (non-DICOM) image file: 8-bit L/RGB/RGBA/P... as is; 16/32-bit integer images scaled
    by their file's range (a 16-bit PNG/TIFF by 65535) and float images in [0, 1], both to 8-bit L.

    Raises:
        ValueError: ``cannot read image <path>: <reason>`` for a missing, corrupt, truncated or
        unsupported file.
    """
    try:
        with PIL.Image.open(path) as image:
            image.load()  # a full decode, so a truncated file fails here
            if image.mode in base.HIGH_DEPTH_MODES:
                return base.image_to_uint8(image, path)
            return image.copy()
    except (OSError, SyntaxError, PIL.UnidentifiedImageError, ValueError) as error:
        reason = str(error).replace(f"{path}: ", "")
        raise ValueError(f"cannot read image {path}: {reason}") from None


def decode_file(path: str) -> list[PIL.Image.Image]:
    """Every image of one file: each frame of a DICOM file (8-bit L or RGB), else ``[decode_image(path)]``.

    Raises:
        ValueError: one line naming the file (dicom_files' messages for a DICOM file, which say what to do).
    """
    if not dicom_files.is_dicom(path):
        return [decode_image(path)]
    return [PIL.Image.fromarray(base.array_to_uint8(frame, path)) for frame in dicom_files.iter_frames(path)]


def prepare_image(image: PIL.Image.Image, image_size: int, channels: int) -> np.ndarray:
    """A decoded image -> float32 ``[image_size, image_size, channels]`` in [0, 1], as the data sets do it."""
    return base.fit_square(image, image_size, channels).astype(np.float32) / 255.0


def read_images(paths: Sequence[str], image_size: int, channels: int) -> np.ndarray:
    """Image files -> float32 ``[N, image_size, image_size, channels]``, N = their images (every frame of a
    DICOM file, in order); stops at the first unreadable file."""
    return np.stack([prepare_image(image, image_size, channels) for path in paths for image in decode_file(path)])


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


def plot_paths(paths: Sequence[str], plot_dir: str, frames: Sequence[int | None] | None = None) -> list[str]:
    """One PNG per image named after it (``<name>_frame<k>`` for frame k of a multi-frame file, ``frames``
    giving k or None per entry); a repeated name gets its position appended."""
    seen: set[str] = set()
    outputs = []
    for index, path in enumerate(paths):
        stem = os.path.splitext(os.path.basename(path))[0] or f"image_{index}"
        if frames is not None and frames[index] is not None:
            stem = f"{stem}_frame{frames[index]}"
        name = stem if stem not in seen else f"{stem}_{index}"
        seen.add(name)
        outputs.append(os.path.join(plot_dir, f"{name}.png"))
    return outputs


def saliency_paths(decoupling_paths: Sequence[str]) -> list[str]:
    """``<name>_saliency.png`` beside each ``<name>.png`` of ``plot_paths``; a name another image's plot already
    has gets its position appended."""
    taken = set(decoupling_paths)
    outputs = []
    for index, path in enumerate(decoupling_paths):
        stem = os.path.splitext(path)[0]
        name = f"{stem}_saliency.png"
        if name in taken:
            name = f"{stem}_saliency_{index}.png"
        taken.add(name)
        outputs.append(name)
    return outputs


def run(workdir: str, image_paths: Sequence[str], *, which: str = "best", plot_dir: str = "",
        batch_size: int = 32, loaded: tuple | None = None, explain: bool = False,
        explain_steps: int | None = None) -> list[str]:
    """Loads the model, predicts every image, prints and returns one line per image; writes plots if asked.

    A file of several frames (DICOM) gives a line per frame and then its ``tables.format_file_summary`` line.
    ``loaded`` is an already loaded ``train.load_for_inference(workdir, which)`` result (skips loading).
    ``explain`` (needs ``plot_dir``) adds a saliency PNG per image, integrated gradients over
    ``explain_steps`` steps (None: ``flax_fld.evaluation.saliency.DEFAULT_STEPS``).
    """
    from flax_fld.evaluation import saliency
    from flax_fld.reporting import plots
    from flax_fld.training import train

    if explain and not plot_dir:
        raise ValueError("explain writes its saliency PNGs beside the decoupling plots: give plot_dir too")
    steps = saliency.DEFAULT_STEPS if explain_steps is None else int(explain_steps)
    if steps < 1:
        raise ValueError(f"explain_steps={steps}; must be >= 1")
    decoded = [decode_file(path) for path in image_paths]  # a bad file fails before the model is loaded
    if loaded is None:
        loaded = train.load_for_inference(workdir, which=which)
    _, model, variables, info = loaded
    image_size, _, channels = info.image_shape
    images = np.stack([prepare_image(image, image_size, channels) for frames in decoded for image in frames])
    probabilities, maps = predict(model, variables, images, batch_size=batch_size)
    lines, sources, frame_numbers, start = [], [], [], 0
    for path, frames in zip(image_paths, decoded):
        count, chosen = len(frames), probabilities[start:start + len(frames)]
        start += count
        sources += [path] * count
        frame_numbers += [None] if count == 1 else list(range(1, count + 1))
        if count == 1:
            lines.append(tables.format_prediction(path, chosen[0], info.class_names))
            continue
        lines += [tables.format_prediction(f"{path} frame {k}/{count}", p, info.class_names)
                  for k, p in enumerate(chosen, start=1)]
        lines.append(tables.format_file_summary(path, chosen, info.class_names))
    for line in lines:
        print(line)
    if plot_dir:
        predictions = probabilities.argmax(axis=-1)
        out_paths = plot_paths(sources, plot_dir, frame_numbers)
        explained = (saliency.explain(model, variables, images, predictions, steps=steps, batch_size=batch_size)
                     if explain else None)
        for index, (out_path, saliency_path) in enumerate(zip(out_paths, saliency_paths(out_paths))):
            pick = slice(index, index + 1)
            plots.plot_decoupling_grid(
                images[pick], *(None if maps[k] is None else maps[k][pick] for k in ("x_hat", "feat1", "feat2")),
                None, info.class_names, out_path, predictions=predictions[pick], probabilities=probabilities[pick])
            print(f"wrote {out_path}")
            if explained is None:
                continue
            grade = int(predictions[index])
            note = (f"completeness: attributions sum to {explained.attribution_sums[index]:.3f}, logit change "
                    f"{explained.logit_changes[index]:.3f} ({steps} steps from the flattened image)")
            plots.plot_saliency(images[index], explained.maps[index], info.class_names[grade], saliency_path,
                                probability=probabilities[index, grade], method=saliency.METHOD_NAME, note=note)
            print(f"wrote {saliency_path}")
    return lines
