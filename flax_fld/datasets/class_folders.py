"""TFDS builder `class_folders`: the user's own images in `root/{train,validation,test}/<class name>/`.

Images may be PNG, JPEG or BMP, grayscale or RGB, of any size; each is padded to a square with black and
resized to config.data.image_size. Class names and their order (= label index) come from the config.
The config name hashes the folder listing (paths, sizes, mtimes), so editing the folders triggers a fresh
preparation instead of silently reusing a stale one.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import PIL.Image
import tensorflow_datasets as tfds

from flax_fld.datasets import base

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    channels: int = 1
    class_names: tuple[str, ...] = ()
    # split -> ((path, label), ...); kept out of repr, which TFDS logs.
    files: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = dataclasses.field(default=(), repr=False)


def list_images(root: str, class_names: tuple[str, ...]) -> dict[str, list[tuple[str, int]]]:
    """Scan the folder tree: split -> sorted [(image path, label)]; ValueError on a bad layout."""
    if not root or not os.path.isdir(root):
        raise ValueError(f"data.root={root!r} is not a folder with train/validation/test subfolders")
    listing = {}
    for split in base.SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise ValueError(f"missing split folder {split_dir}")
        found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
        missing = [name for name in class_names if name not in found]
        unknown = [name for name in found if name not in class_names]
        if missing or unknown:
            raise ValueError(
                f"class folders in {split_dir} do not match data.class_names: missing {missing}, unknown {unknown}"
            )
        entries = []
        for label, name in enumerate(class_names):
            class_dir = os.path.join(split_dir, name)
            for file_name in sorted(os.listdir(class_dir)):
                if file_name.lower().endswith(IMAGE_EXTENSIONS) and not file_name.startswith("."):
                    entries.append((os.path.join(class_dir, file_name), label))
        if not entries:
            raise ValueError(f"empty split: no {'/'.join(IMAGE_EXTENSIONS)} images under {split_dir}")
        listing[split] = entries
    return listing


def load_image(path: str, size: int, channels: int) -> bytes:
    """Decode, check and resize one image file -> PNG bytes of uint8 [size, size, channels]."""
    try:
        with PIL.Image.open(path) as image:
            image.load()  # Forces a full decode so truncated files fail here, not later.
            if image.mode in ("F", "I", "I;16", "I;16B", "I;16L"):
                pixels = base.array_to_uint8(image, path)
                image = PIL.Image.fromarray(pixels)
            return base.encode_png(base.fit_square(image, size, channels))
    except (OSError, SyntaxError, PIL.UnidentifiedImageError) as error:
        raise ValueError(f"corrupt or truncated image {path}: {error}") from None


class ClassFolders(base.ImageClassificationBuilder):
    """Images sorted into class folders by the user (see module docstring for the layout)."""

    def _split_generators(self, dl_manager):
        del dl_manager
        files = dict(self.builder_config.files)
        return {split: self._counted(split, self._generate_examples(files[split])) for split in base.SPLITS}

    def _generate_examples(self, entries):
        config = self.builder_config
        for index, (path, label) in enumerate(entries):
            yield index, {"image": load_image(path, config.image_size, config.channels), "label": label}


def make_builder(data_config: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builder for config.data (root, image_size, channels, class_names)."""
    size, channels = int(data_config.image_size), int(data_config.channels)
    base.check_image_format(size, channels)
    class_names = base.check_class_names(data_config.class_names, "data.class_names")
    root = os.path.abspath(data_config.root) if data_config.root else ""
    listing = list_images(root, class_names)
    fingerprint = base.short_hash(
        class_names, [(split, [base.file_fingerprint(path) for path, _ in listing[split]]) for split in base.SPLITS]
    )
    folder = base.name_stem(os.path.basename(root.rstrip("/")), fallback="root")
    config = FolderConfig(
        name=f"{folder}_{fingerprint}_s{size}_c{channels}",
        description=f"class folders under {root}",
        image_size=size,
        channels=channels,
        class_names=class_names,
        files=tuple((split, tuple(listing[split])) for split in base.SPLITS),
    )
    return ClassFolders(config=config, data_dir=data_dir, file_format="array_record")
