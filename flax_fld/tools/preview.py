"""A PNG grid of examples per class of a prepared data set, preparing it first if needed
(``launch/preview_data.py``). Rows are classes in config order, columns the first examples of each class.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import PIL.Image

from flax_fld.data import input_pipeline

# Small images are hard to judge unscaled: rows are zoomed (nearest neighbour) to at least this many pixels.
_MIN_ROW_PIXELS = 128


def example_grid(data_config, data_dir: str, split: str, per_class: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """uint8 [K*H, per_class*W, C] grid: row k shows examples of class k (black where a class runs short)."""
    data = input_pipeline.prepare_data_source(data_config, data_dir)
    info = data.info
    height, width, channels = info.image_shape
    grid = np.zeros((len(info.class_names) * height, per_class * width, channels), np.uint8)
    filled = [0] * len(info.class_names)
    for batch in input_pipeline.eval_batches(data, split=split, per_device_batch_size=64, local_device_count=1):
        for image, label, valid in zip(batch["image"][0], batch["label"][0], batch["mask"][0]):
            if valid and filled[label] < per_class:
                column = filled[label]
                grid[label * height : (label + 1) * height, column * width : (column + 1) * width] = np.round(
                    image * 255
                ).astype(np.uint8)
                filled[label] += 1
        if min(filled) >= per_class:
            break
    return grid, info.class_names


def save_preview(config: ml_collections.ConfigDict, data_dir: str, out: str, *, split: str = "train",
                 per_class: int = 6) -> tuple[str, tuple[str, ...]]:
    """Writes ``example_grid`` of ``config`` (a training config or its ``data`` section) as the PNG ``out``.

    Returns ``(out, class names)``, the names being the grid's rows from the top.
    """
    data_config = config.data if "data" in config else config
    grid, class_names = example_grid(data_config, data_dir, split, per_class)
    image = PIL.Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    zoom = max(1, _MIN_ROW_PIXELS // (grid.shape[0] // len(class_names)))
    image = image.resize((image.width * zoom, image.height * zoom), PIL.Image.Resampling.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    image.save(out)
    return out, class_names
