"""Write a PNG grid of examples per class of a prepared data set (preparing it first if needed).

  python -m flax_fld.datasets.preview --data=synthetic_fatty_liver --out=preview.png
  python -m flax_fld.datasets.preview --data=class_folders --config.data.root=/path/to/scans --out=mine.png

Rows are classes in config order, columns are the first --per_class examples of that class in --split.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import PIL.Image
from absl import app, flags
from ml_collections import config_flags

from flax_fld import input_pipeline

_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "default.py"

config_flags.DEFINE_config_file("config", str(_DEFAULT_CONFIG), "Training config; only config.data is used.")
flags.DEFINE_string("data", None, "Overrides config.data.name.")
flags.DEFINE_string("data_dir", "tfds_data", "Where prepared data sets live (overridden by config.data.data_dir).")
flags.DEFINE_string("out", "preview.png", "Output PNG path.")
flags.DEFINE_string("split", "train", "Split to show.")
flags.DEFINE_integer("per_class", 6, "Examples per class (columns).")
FLAGS = flags.FLAGS


def example_grid(data_config, data_dir: str, split: str, per_class: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """uint8 [K*H, per_class*W, C] grid: row k shows examples of class k (black where a class runs short)."""
    info = input_pipeline.prepare_dataset(data_config, data_dir)
    height, width, channels = info.image_shape
    grid = np.zeros((len(info.class_names) * height, per_class * width, channels), np.uint8)
    filled = [0] * len(info.class_names)
    for batch in input_pipeline.eval_batches(
        data_config, data_dir, split=split, per_device_batch_size=64, local_device_count=1
    ):
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


def main(argv):
    del argv
    config = FLAGS.config
    if FLAGS.data:
        config.data.name = FLAGS.data
    data_dir = config.data.data_dir or FLAGS.data_dir
    grid, class_names = example_grid(config.data, data_dir, FLAGS.split, FLAGS.per_class)
    image = PIL.Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    zoom = max(1, 128 // (grid.shape[0] // len(class_names)))  # Small images are hard to judge unscaled.
    image = image.resize((image.width * zoom, image.height * zoom), PIL.Image.Resampling.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    image.save(FLAGS.out)
    print(f"wrote {FLAGS.out}: rows = {', '.join(class_names)} ({FLAGS.split} split)")


if __name__ == "__main__":
    app.run(main)
