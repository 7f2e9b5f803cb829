"""Real-image checks as class-folder sets, made from images that ship inside pip packages (no download).

The embedded simulator is our own model of the data, so a recipe tuned on it can fail on real images. These
two sets give the recipe real pixels to learn from, written in the `class_folders` layout
(``OUT/{train,validation,test}/<class>/*.png``) so they exercise the same path a user's folder takes:

- ``digits``: scikit-learn's handwritten digits 0-3 (UCI optdigits scans, 8x8, 16 grey levels; 720 images),
  upsampled to 32 px. Shapes, not textures: a linear model on the pixels is strong here (the floor a deep
  recipe must reach).
- ``textures``: scikit-image's brick, grass and gravel photographs and the moon surface (512x512 each),
  cut into 48 px patches, with a random gain/offset per patch so that the mean grey level alone does not
  name the class (as an ultrasound machine's gain does not). The split is spatial, by image row band (top
  60 % train, next 15 % validation, bottom 25 % test), so no test patch overlaps a training patch: the
  frames-of-one-patient leak of public liver sets, avoided.

    python launch/package_images.py --set=digits --out=/tmp/digits4
    python launch/train.py --config=configs/default.py --workdir=workdir/digits \
      --config.data.name=class_folders --config.data.root=/tmp/digits4 --config.data.image_size=32 \
      --config.data.class_names="('0','1','2','3')"

Needs the ``checks`` extra (``pip install -e ".[checks]"``: scikit-learn, scikit-image).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import PIL.Image

SPLIT_FRACTIONS = (("train", 0.60), ("validation", 0.15), ("test", 0.25))
SETS = ("digits", "textures")
CLASS_NAMES = {"digits": ("0", "1", "2", "3"), "textures": ("brick", "grass", "gravel", "moon")}


def _stratified_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Indices per split, 60/15/25 % of every class (the project's proportions), seeded."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {name: [] for name, _ in SPLIT_FRACTIONS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = int(round(0.60 * len(members)))
        n_val = int(round(0.15 * len(members)))
        parts["train"] += members[:n_train].tolist()
        parts["validation"] += members[n_train:n_train + n_val].tolist()
        parts["test"] += members[n_train + n_val:].tolist()
    return {name: np.asarray(sorted(indices)) for name, indices in parts.items()}


def digits_images(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn digits 0-3: split -> (uint8 images [N, 32, 32], labels [N])."""
    from sklearn.datasets import load_digits

    digits = load_digits(n_class=4)
    # 0..16 grey levels -> 0..255, nearest-neighbour upsampling keeps the scanned pixels as they are.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = images.repeat(4, axis=1).repeat(4, axis=2)
    labels = digits.target.astype(np.int64)
    return {name: (images[idx], labels[idx]) for name, idx in _stratified_split(labels, seed).items()}


def texture_images(seed: int = 0, patch: int = 48, stride: int = 24) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-image textures: split -> (uint8 patches [N, patch, patch], labels [N]); spatial split."""
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    sources = [skdata.brick(), skdata.grass(), skdata.gravel(), skdata.moon()]
    out: dict[str, tuple[list, list]] = {name: ([], []) for name, _ in SPLIT_FRACTIONS}
    for label, image in enumerate(sources):
        image = np.asarray(image, np.float32)
        height = image.shape[0]
        top = 0
        for split, fraction in SPLIT_FRACTIONS:
            bottom = height if split == "test" else top + int(round(fraction * height))
            band = image[top:bottom]
            for y in range(0, band.shape[0] - patch + 1, stride):
                for x in range(0, band.shape[1] - patch + 1, stride):
                    tile = band[y:y + patch, x:x + patch]
                    gain, offset = rng.uniform(0.6, 1.2), rng.uniform(-30.0, 30.0)
                    tile = np.clip((tile - tile.mean()) * gain + tile.mean() + offset, 0, 255)
                    out[split][0].append(tile.astype(np.uint8))
                    out[split][1].append(label)
            top = bottom
    return {split: (np.stack(images), np.asarray(labels)) for split, (images, labels) in out.items()}


def write_class_folders(name: str, out: str, seed: int = 0) -> dict[str, list[int]]:
    """Writes set `name` to `out` in the class_folders layout; returns split -> images per class.

    Written to a temporary sibling folder and renamed at the end, so an existing `out` is never half
    overwritten; ValueError if `out` exists and is not empty.
    """
    if name not in SETS:
        raise ValueError(f"package_images: --set={name!r}; expected one of {SETS}")
    out = os.path.abspath(out)
    if os.path.exists(out) and os.listdir(out):
        raise ValueError(f"package_images: --out={out} exists and is not empty")
    splits = digits_images(seed) if name == "digits" else texture_images(seed)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".package_images_", dir=parent)
    counts = {}
    try:
        for split, (images, labels) in splits.items():
            for class_index, class_name in enumerate(CLASS_NAMES[name]):
                folder = os.path.join(staging, split, class_name)
                os.makedirs(folder)
                members = np.flatnonzero(labels == class_index)
                for number, index in enumerate(members):
                    PIL.Image.fromarray(images[index]).save(os.path.join(folder, f"{number:04d}.png"))
            counts[split] = [int(np.sum(labels == k)) for k in range(len(CLASS_NAMES[name]))]
        if os.path.exists(out):
            os.rmdir(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts
