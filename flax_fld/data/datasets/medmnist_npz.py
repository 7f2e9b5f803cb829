"""TFDS builder `medmnist_npz`: a MedMNIST-format `.npz` on disk (e.g. breastmnist.npz).

Keys: train_images, train_labels, val_images, val_labels, test_images, test_labels; images uint8
[N, H, W] or [N, H, W, 3] (or floats in [0, 1]); labels [N] or [N, 1] integers indexing
config.data.class_names (for BreastMNIST: ("malignant", "normal_benign")).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from flax_fld.data.datasets import base

SPLIT_PREFIX = {"train": "train", "validation": "val", "test": "test"}


@dataclasses.dataclass(eq=False)
class NpzConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    channels: int = 1
    class_names: tuple[str, ...] = ()
    npz_path: str = ""


def read_split(arrays, path: str, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Check one split of the archive -> (images [N, ...], labels int [N])."""
    prefix = SPLIT_PREFIX[split]
    images_key, labels_key = f"{prefix}_images", f"{prefix}_labels"
    missing = [key for key in (images_key, labels_key) if key not in arrays.files]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing} (found {sorted(arrays.files)})")
    images, labels = arrays[images_key], np.asarray(arrays[labels_key])
    if images.ndim not in (3, 4):
        raise ValueError(f"{path}: {images_key} must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{path}: {labels_key} must be [N] or [N, 1] (single-label), got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{path}: {images_key} has {len(images)} entries but {labels_key} has {len(labels)}")
    if len(images) == 0:
        raise ValueError(f"{path}: empty split {split!r} ({images_key} has no entries)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {labels_key} must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"{path}: {labels_key} values must lie in [0, {num_classes - 1}] (data.class_names has {num_classes}"
            f" names), got [{labels.min()}, {labels.max()}]"
        )
    base.array_to_uint8(images, f"{path}: {images_key}")  # Range / NaN check of the whole split up front.
    return images, labels.astype(np.int64)


class MedmnistNpz(base.ImageClassificationBuilder):
    """A MedMNIST-layout .npz archive, resized to the configured image size."""

    def _split_generators(self, dl_manager):
        del dl_manager
        config = self.builder_config
        path = config.npz_path
        try:
            arrays = np.load(path, allow_pickle=False)
            splits = {split: read_split(arrays, path, split, len(config.class_names)) for split in base.SPLITS}
        except (OSError, zipfile.BadZipFile, EOFError) as error:
            raise ValueError(f"{path}: cannot read .npz archive ({type(error).__name__}: {error})") from None
        return {
            split: self._counted(split, self._generate_examples(split, *splits[split])) for split in base.SPLITS
        }

    def _generate_examples(self, split, images, labels):
        config = self.builder_config
        for index, (image, label) in enumerate(zip(images, labels)):
            where = f"{config.npz_path}: {SPLIT_PREFIX[split]}_images[{index}]"
            pixels = base.array_to_square(image, config.image_size, config.channels, where)
            yield index, {"image": base.encode_png(pixels), "label": int(label)}


def make_builder(data_config: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builder for config.data (root = the .npz path, class_names, image_size, channels)."""
    size, channels = int(data_config.image_size), int(data_config.channels)
    base.check_image_format(size, channels)
    class_names = base.check_class_names(data_config.class_names, "data.class_names")
    path = os.path.abspath(data_config.root) if data_config.root else ""
    if not os.path.isfile(path):
        raise ValueError(f"medmnist_npz: data.root={data_config.root!r} is not a .npz file")
    stem = base.name_stem(os.path.splitext(os.path.basename(path))[0])
    fingerprint = base.short_hash(base.file_fingerprint(path), class_names)
    config = NpzConfig(
        name=f"{stem}_{fingerprint}_s{size}_c{channels}",
        description=f"MedMNIST-format archive {path}",
        image_size=size,
        channels=channels,
        class_names=class_names,
        npz_path=path,
    )
    return MedmnistNpz(config=config, data_dir=data_dir, file_format="array_record")
