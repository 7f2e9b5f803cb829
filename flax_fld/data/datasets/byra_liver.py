"""TFDS builder `byra_liver`: the public B-mode steatosis data set of Byra et al. 2018 (manual download).

The file `dataset_liver_bmodes_steatosis_assessment_IJCARS.mat` holds a struct array `data` [1, 55] with
fields id, class (0 normal / 1 fatty), fat (percent, from biopsy) and images (10 frames of 434 x 636).
With four class names the label is the steatosis grade from the fat percentage (S0 < 5, S1 5-33,
S2 34-66, S3 >= 67; thresholds from config.data.fat_thresholds); with two it is the `class` field.
Splits are stratified by label and made by patient, never by frame, so no patient leaks across splits.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from scipy import io as scipy_io

from flax_fld.data.datasets import base

DEFAULT_FAT_THRESHOLDS = (5.0, 34.0, 67.0)
SPLIT_FRACTIONS = (0.6, 0.15, 0.25)  # train / validation / test, by patient.
SPLIT_SEED = 0
REQUIRED_FIELDS = ("id", "class", "fat", "images")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download dataset_liver_bmodes_steatosis_assessment_IJCARS.mat (Byra et al. 2018, "Transfer learning with
deep convolutional neural network for liver steatosis assessment in ultrasound images", IJCARS; published
on Zenodo, record 1009146) and set --config.data.root=/path/to/that/file.mat.
"""


@dataclasses.dataclass(eq=False)
class ByraConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    channels: int = 1
    class_names: tuple[str, ...] = ()
    mat_path: str = ""
    fat_thresholds: tuple[float, ...] = DEFAULT_FAT_THRESHOLDS


def _scalar(value: np.ndarray, where: str) -> float:
    array = np.asarray(value, dtype=np.float64).ravel()
    if array.size != 1 or not np.isfinite(array[0]):
        raise ValueError(f"{where}: expected one finite number, got {np.asarray(value).ravel()[:4]}")
    return float(array[0])


def _frames(images: np.ndarray, where: str) -> np.ndarray:
    """The patient's frames as [F, H, W]; the frame axis is the shortest one of a 3-D array."""
    images = np.asarray(images)
    if images.ndim == 2:
        return images[None]
    if images.ndim != 3:
        raise ValueError(f"{where}: expected frames [F, H, W] or [H, W, F], got shape {images.shape}")
    return images if images.shape[0] <= images.shape[-1] else np.moveaxis(images, -1, 0)


def read_patients(path: str, num_classes: int, fat_thresholds) -> list[dict]:
    """Load and check the .mat file -> [{'id', 'label', 'frames' [F,H,W]}] (one entry per patient)."""
    if not path or not os.path.isfile(path):
        raise ValueError(f"byra_liver: data.root={path!r} is not a file; download the .mat first")
    try:
        contents = scipy_io.loadmat(path)
    except NotImplementedError:
        raise ValueError(f"{path}: MATLAB v7.3 file; re-save it with save(..., '-v7')") from None
    except Exception as error:  # scipy raises several types for damaged files.
        raise ValueError(f"{path}: cannot read .mat file ({type(error).__name__}: {error})") from None
    if "data" not in contents:
        raise ValueError(f"{path}: missing variable 'data' (found {sorted(k for k in contents if k[0] != '_')})")
    data = contents["data"]
    names = data.dtype.names or ()
    missing = [field for field in REQUIRED_FIELDS if field not in names]
    if missing:
        raise ValueError(f"{path}: struct 'data' is missing field(s) {missing}")
    patients = []
    for index, record in enumerate(data.ravel()):
        where = f"{path}: data[{index}]"
        if num_classes == 2:
            label = int(_scalar(record["class"], f"{where}.class"))
            if label not in (0, 1):
                raise ValueError(f"{where}.class must be 0 or 1, got {label}")
        else:
            fat = _scalar(record["fat"], f"{where}.fat")
            if not 0.0 <= fat <= 100.0:
                raise ValueError(f"{where}.fat must be a percentage in [0, 100], got {fat}")
            label = int(np.searchsorted(np.asarray(fat_thresholds), fat, side="right"))
        patients.append(
            {
                "id": str(np.asarray(record["id"]).ravel()[0]) if np.asarray(record["id"]).size else str(index),
                "label": label,
                "frames": _frames(record["images"], f"{where}.images"),
            }
        )
    if not patients:
        raise ValueError(f"{path}: struct 'data' holds no patients")
    return patients


def split_patients(labels: list[int], seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """Stratified patient-level split: split -> patient indices (every split gets >= 1 patient if possible)."""
    rng = np.random.default_rng(seed)
    splits = {split: [] for split in base.SPLITS}
    for label in sorted(set(labels)):
        members = rng.permutation([i for i, value in enumerate(labels) if value == label]).tolist()
        num_test = int(round(SPLIT_FRACTIONS[2] * len(members)))
        num_validation = int(round(SPLIT_FRACTIONS[1] * len(members)))
        splits["test"] += members[:num_test]
        splits["validation"] += members[num_test : num_test + num_validation]
        splits["train"] += members[num_test + num_validation :]
    # Tiny files (tests, subsets) can round a split to nothing; lend it a training patient.
    for split in ("validation", "test"):
        if not splits[split] and len(splits["train"]) > 1:
            splits[split].append(splits["train"].pop())
    return {split: sorted(indices) for split, indices in splits.items()}


class ByraLiver(base.ImageClassificationBuilder):
    """Byra et al. 2018 liver B-mode frames, graded by biopsy fat percentage (or the binary class)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _split_generators(self, dl_manager):
        del dl_manager  # The file path comes from config.data.root.
        config = self.builder_config
        patients = read_patients(config.mat_path, len(config.class_names), config.fat_thresholds)
        if max(p["label"] for p in patients) >= len(config.class_names):
            raise ValueError(f"{config.mat_path}: labels exceed data.class_names={config.class_names}")
        assignment = split_patients([p["label"] for p in patients])
        return {
            split: self._counted(split, self._generate_examples([patients[i] for i in assignment[split]]))
            for split in base.SPLITS
        }

    def _generate_examples(self, patients):
        config = self.builder_config
        for patient in patients:
            for frame_index, frame in enumerate(patient["frames"]):
                where = f"{config.mat_path}: patient {patient['id']} frame {frame_index}"
                pixels = base.array_to_square(frame, config.image_size, config.channels, where)
                yield f"{patient['id']}_{frame_index}", {"image": base.encode_png(pixels), "label": patient["label"]}


def make_builder(data_config: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builder for config.data (root = the .mat path, class_names of length 4 (grades) or 2 (class))."""
    size, channels = int(data_config.image_size), int(data_config.channels)
    base.check_image_format(size, channels)
    class_names = base.check_class_names(data_config.class_names, "data.class_names")
    if len(class_names) not in (2, 4):
        raise ValueError(f"byra_liver needs 4 class names (fat grades) or 2 (normal/fatty), got {class_names}")
    thresholds = tuple(float(t) for t in data_config.get("fat_thresholds", DEFAULT_FAT_THRESHOLDS))
    if len(thresholds) != 3 or list(thresholds) != sorted(thresholds):
        raise ValueError(f"data.fat_thresholds must be 3 increasing percentages, got {thresholds}")
    path = os.path.abspath(data_config.root) if data_config.root else ""
    if not os.path.isfile(path):
        raise ValueError(
            f"byra_liver: data.root={data_config.root!r} is not a file; "
            "download dataset_liver_bmodes_steatosis_assessment_IJCARS.mat and point data.root at it"
        )
    fingerprint = base.short_hash(base.file_fingerprint(path), class_names, thresholds)
    config = ByraConfig(
        name=f"{fingerprint}_s{size}_c{channels}",
        description=f"Byra et al. 2018 from {path}",
        image_size=size,
        channels=channels,
        class_names=class_names,
        mat_path=path,
        fat_thresholds=thresholds,
    )
    return ByraLiver(config=config, data_dir=data_dir, file_format="array_record")
