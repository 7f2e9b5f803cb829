"""Shared pieces of the TFDS builders: PNG encoding, image checks and resizing, the builder base class.

The data sets are written as array_record and read with `builder.as_data_source()`, which works without
TensorFlow as long as images reach `tfds.features.Image` as PNG bytes (numpy input would need TF).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
from typing import Any, Iterable, Sequence

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# CSV (path, class, patient, split) written into a prepared data set whose split the project made.
SPLIT_RECORD_FILENAME = "split_assignment.csv"
VERSION = tfds.core.Version("1.0.0")


def short_hash(*parts: Any) -> str:
    """8 hex digits identifying the inputs of a preparation (part of the builder config name)."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:8]


def name_stem(text: str, fallback: str = "data") -> str:
    """``text`` reduced to at most 32 alphanumerics/underscores: a readable part of a builder config name."""
    return "".join(c if c.isalnum() else "_" for c in text)[:32] or fallback


def file_fingerprint(path: str) -> tuple[str, int, int]:
    """(absolute path, size, mtime): changes when the user replaces or edits the file."""
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] (C in {1, 3}) -> PNG bytes."""
    pil = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=1)  # Speed over size: these files are small.
    return buffer.getvalue()


def array_to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Validate raw pixel values and return uint8.

    Integer images must lie in [0, 255]; float images must be finite and in [0, 1] (scaled by 255).
    `where` names the file/key for the error message.
    """
    array = np.asarray(array)
    if array.size == 0:
        raise ValueError(f"{where}: empty image array")
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"{where}: integer pixel values must lie in [0, 255], got [{low}, {high}]")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{where}: image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{where}: float pixel values must lie in [0, 1], got [{low:.4g}, {high:.4g}]"
                " (divide 0-255 data by 255 or store it as uint8)"
            )
        return np.round(array * 255.0).astype(np.uint8)
    raise ValueError(f"{where}: unsupported pixel dtype {array.dtype}")


# PIL modes of more than 8 bits per sample (single channel): 16-bit, 32-bit integer and 32-bit float images.
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def integer_range(image: PIL.Image.Image) -> tuple[int, int]:
    """The values a 16- or 32-bit integer PIL image's file can hold: its own range, not the values it holds.

    I;16*: [0, 65535]. I: a 16-bit PNG (older Pillow opens those as I) [0, 65535]; a TIFF by its
    BitsPerSample and SampleFormat (2 = signed); anything else as 32-bit signed.
    """
    if image.mode.startswith("I;16"):
        return 0, 2**16 - 1
    if image.format == "PNG":
        return 0, 2**16 - 1
    tags = getattr(image, "tag_v2", None) or {}
    bits = tags.get(258, (32,))
    bits = int(bits[0] if isinstance(bits, (tuple, list)) else bits)
    sample_format = tags.get(339, (2,) if image.format != "TIFF" else (1,))
    signed = int(sample_format[0] if isinstance(sample_format, (tuple, list)) else sample_format) == 2
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def image_to_uint8(image: PIL.Image.Image, where: str) -> PIL.Image.Image:
    """A decoded PIL image with 8-bit samples (L, RGB, P, ...; returned as is) or of a ``HIGH_DEPTH_MODES`` mode.

    16/32-bit integer images are scaled by ``integer_range`` (a 16-bit PNG or TIFF by 65535) to [0, 1] and
    then to 8 bits, as every image reaches the model; float images (F) must already lie in [0, 1]
    (``array_to_uint8``). Returns an L or the input image; ValueError naming ``where`` on bad values.
    """
    if image.mode not in HIGH_DEPTH_MODES:
        return image
    array = np.asarray(image)
    if image.mode != "F":
        low, high = integer_range(image)
        found_low, found_high = int(array.min()), int(array.max())
        if found_low < low or found_high > high:
            raise ValueError(f"{where}: integer pixel values must lie in [{low}, {high}] (the file's {image.mode} "
                             f"range), got [{found_low}, {found_high}]")
        array = ((array.astype(np.float64) - low) / (high - low)).astype(np.float32)
    return PIL.Image.fromarray(array_to_uint8(array, where))


def fit_square(image: PIL.Image.Image, size: int, channels: int) -> np.ndarray:
    """PIL image of any size/mode -> uint8 [size, size, channels].

    Pads to a square with black before resizing, so the sector geometry (and the physical depth axis)
    is not stretched.
    """
    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    side = max(width, height)
    canvas = PIL.Image.new(image.mode, (side, side))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    resized = np.asarray(canvas.resize((size, size), PIL.Image.Resampling.BILINEAR, reducing_gap=2.0))
    return resized.reshape(size, size, channels)


def array_to_square(array: np.ndarray, size: int, channels: int, where: str) -> np.ndarray:
    """Raw frame [H, W] or [H, W, C] -> validated uint8 [size, size, channels]."""
    pixels = array_to_uint8(array, where)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        raise ValueError(f"{where}: expected an image [H, W] or [H, W, 3], got shape {pixels.shape}")
    return fit_square(PIL.Image.fromarray(pixels), size, channels)


def check_class_names(class_names: Sequence[str], where: str) -> tuple[str, ...]:
    names = tuple(str(name) for name in class_names)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"{where}: class_names must hold at least two distinct names, got {names}")
    return names


def check_image_format(image_size: int, channels: int) -> None:
    if int(image_size) < 8:
        raise ValueError(f"data.image_size must be >= 8, got {image_size}")
    if int(channels) not in (1, 3):
        raise ValueError(f"data.channels must be 1 or 3, got {channels}")


class ImageClassificationBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the flax_fld builders: features {'image': uint8 [S,S,C] PNG, 'label': ClassLabel}.

    The builder config carries image_size, channels and class_names. Per-split class counts are stored in
    the data set's metadata so DatasetInfo needs no pass over the images.
    """

    VERSION = VERSION

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup imports `importlib_resources`, which it does not declare for Python >= 3.9.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        shape = (config.image_size, config.image_size, config.channels)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=shape, encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=list(config.class_names)),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _counted(self, split: str, examples: Iterable[tuple[Any, dict]]):
        """Pass examples through, recording the split's per-class counts in the metadata."""
        counts = [0] * len(self.builder_config.class_names)
        for key, example in examples:
            counts[example["label"]] += 1
            yield key, example
        if sum(counts) == 0:
            raise ValueError(f"{self.name}: split {split!r} is empty")
        self.info.metadata.setdefault("class_counts", {})[split] = counts
