"""Data sources as TFDS builders (array_record, read without TensorFlow), keyed by config.data.name."""

from __future__ import annotations

from typing import Callable

import ml_collections
import tensorflow_datasets as tfds

from flax_fld.data.datasets import byra_liver, class_folders, medmnist_npz, synthetic_fatty_liver

BuilderFactory = Callable[[ml_collections.ConfigDict, str], tfds.core.DatasetBuilder]

BUILDERS: dict[str, BuilderFactory] = {
    "synthetic_fatty_liver": synthetic_fatty_liver.make_builder,
    "class_folders": class_folders.make_builder,
    "byra_liver": byra_liver.make_builder,
    "medmnist_npz": medmnist_npz.make_builder,
}


def get_builder(data_config: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
    """The TFDS builder for config.data (prepared or not) with its data under `data_dir`."""
    name = data_config.name
    if name not in BUILDERS:
        raise ValueError(f"unknown data.name={name!r}; expected one of {sorted(BUILDERS)}")
    if not data_dir:
        raise ValueError("data_dir is empty: pass the folder where prepared data sets live")
    return BUILDERS[name](data_config, data_dir)
