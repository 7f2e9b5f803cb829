"""TFDS builder `class_folders`: the user's own images, sorted into one folder per class.

Two layouts of config.data.root:

- ``root/<class>/*.png``: the folder as it usually comes. The project makes the split (folder_split.py):
  stratified by class with ``data.split_fractions`` and ``data.split_seed``, and with ``data.patient_regex``
  every patient's frames in one split.
- ``root/{train,validation,test}/<class>/*.png``: the user's own split, used as it is.

Class names and their order (= label index) come from ``data.class_names``; when it is empty, from the class
folders, sorted by name (printed). Images may be PNG, JPEG, BMP, TIFF or DICOM (.dcm, needs
``pip install 'flax-fld[dicom]'``), grayscale or RGB, of any size and bit depth; each is padded to a square with
black and resized to ``data.image_size``. Integer images are scaled by their file's own range (8 bits by 255,
16-bit PNG/TIFF by 65535, DICOM by its BitsStored or its VOI window: dicom_files.py) to [0, 1], then stored
as 8 bits like every image. Every frame of a DICOM file is an example, and all of them go to the file's split;
with ``data.dicom_group_by`` ('patient', the default, or 'study') all files of one PatientID (or
StudyInstanceUID) go to one split, like the patients of ``data.patient_regex`` (which groups the other images).
The builder config name hashes the listing (paths, sizes, mtimes), the labels, patients and splits, so editing
the folders or changing the split settings triggers a fresh preparation instead of silently reusing a stale
one. Every preparation writes ``split_assignment.csv`` (path, class, patient, split, frames) next to the
prepared data; a DICOM file's patient there is a hash, never its PatientID.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import ml_collections
import PIL.Image
import tensorflow_datasets as tfds

from flax_fld.data.datasets import base, dicom_files, folder_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff") + dicom_files.DICOM_EXTENSIONS
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
_LAYOUTS = "root/<class>/ or root/{train,validation,test}/<class>/"


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    channels: int = 1
    class_names: tuple[str, ...] = ()
    root: str = ""
    # Every image with its label, patient and split; kept out of repr, which TFDS logs.
    rows: tuple[folder_split.Row, ...] = dataclasses.field(default=(), repr=False)


def _subfolders(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith(".") and os.path.isdir(os.path.join(folder, n)))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def has_split_folders(root: str) -> bool:
    """Whether ``root`` holds train/validation/test folders (else class folders); ValueError on a mixed layout."""
    if not root or not os.path.isdir(root):
        raise ValueError(f"data.root={root!r} is not a folder; expected {_LAYOUTS}")
    found = _subfolders(root)
    splits = [name for name in found if name in base.SPLITS]
    if not splits:
        return False
    others = [name for name in found if name not in base.SPLITS]
    if others:
        raise ValueError(f"{root} mixes split folders {splits} with other folders {others}; expected {_LAYOUTS}")
    missing = [split for split in base.SPLITS if split not in splits]
    if missing:
        raise ValueError(f"missing split folder {os.path.join(root, missing[0])} (found {splits}); expected {_LAYOUTS}")
    return True


def class_names_in(folder: str, class_names: Sequence[str], source: str) -> tuple[str, ...]:
    """The class folders of ``folder`` checked against ``class_names`` (from ``source``); sorted when empty."""
    found = _subfolders(folder)
    loose = [name for name in sorted(os.listdir(folder)) if _is_image(name)]
    if loose:
        raise ValueError(f"image {os.path.join(folder, loose[0])} lies outside a class folder; expected {_LAYOUTS}")
    if not found:
        raise ValueError(f"no class folders in {folder}; expected {_LAYOUTS}")
    if len(found) == 1:
        raise ValueError(f"{folder} holds one class folder {found}; a classifier needs at least two")
    if not class_names:
        return tuple(found)
    missing = [name for name in class_names if name not in found]
    unknown = [name for name in found if name not in class_names]
    if missing or unknown:
        raise ValueError(f"class folders in {folder} do not match {source}: missing {missing}, unknown {unknown}")
    return tuple(class_names)


def image_files(class_dir: str) -> list[str]:
    """Sorted image paths directly inside one class folder; ValueError on a subfolder or no image."""
    names = sorted(os.listdir(class_dir))
    nested = [name for name in names if not name.startswith(".") and os.path.isdir(os.path.join(class_dir, name))]
    if nested:
        raise ValueError(f"unexpected folder {os.path.join(class_dir, nested[0])}: images must lie directly in "
                         f"the class folder {class_dir}")
    paths = [os.path.join(class_dir, name) for name in names if _is_image(name)]
    if not paths:
        raise ValueError(f"empty class: no {'/'.join(IMAGE_EXTENSIONS)} images in {class_dir}")
    return paths


@dataclasses.dataclass(frozen=True)
class Listing:
    class_names: tuple[str, ...]  # label order
    rows: list[folder_split.Row]  # every image file with its label, patient ('' if ungrouped), split, frames
    split_given: bool  # True: the split folders' split; False: made by folder_split


def list_images(root: str, class_names: Sequence[str] = (), *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                seed: int = 0, patient_regex: str = "", dicom_group_by: str = "patient") -> Listing:
    """Scan ``root`` (either layout) into a Listing.

    ``class_names`` empty: taken from the class folders, sorted. ``fractions``/``seed`` only matter for the
    plain layout; ``patient_regex`` (on the file names of the non-DICOM images) and ``dicom_group_by`` (on
    the headers of the DICOM files: 'patient', 'study' or 'file') keep a patient in one split there, and are
    checked against the given split folders otherwise. Every DICOM header is read (and checked: decodable
    pixel data) here, before any preparation. ValueError with one line naming the folder/file/key/value on
    any bad input.
    """
    regex = folder_split.compile_patient_regex(patient_regex)
    fractions = folder_split.check_fractions(fractions)
    split_given = has_split_folders(root)
    if split_given:
        first = os.path.join(root, base.SPLITS[0])
        names = class_names_in(first, class_names, "data.class_names")
        source = "data.class_names" if class_names else f"the class folders of {first}"
        entries = []
        for split in base.SPLITS:
            folder = os.path.join(root, split)
            class_names_in(folder, names, source)
            entries += [(path, label, split) for label, name in enumerate(names)
                        for path in image_files(os.path.join(folder, name))]
    else:
        names = class_names_in(root, class_names, "data.class_names")
        entries = [(path, label, "") for label, name in enumerate(names)
                   for path in image_files(os.path.join(root, name))]
    paths = [path for path, _, _ in entries]
    patients, frames = _patients_and_frames(paths, regex, root, dicom_group_by)
    if split_given:
        rows = [folder_split.Row(path, label, patient, split, count)
                for (path, label, split), patient, count in zip(entries, patients, frames)]
        _check_patients_in_one_split(rows, patient_regex, dicom_group_by)
    else:
        dicom_grouped = any(patient.startswith(_DICOM_GROUP) for patient in patients)
        source = " / ".join(([f"data.dicom_group_by='{dicom_group_by}'"] if dicom_grouped else [])
                            + (["data.patient_regex"] if regex else []))
        rows = folder_split.assign_splits(paths, [label for _, label, _ in entries], patients, names, fractions,
                                          seed, root, frames=frames, patient_source=source or "data.patient_regex")
    return Listing(names, rows, split_given)


_DICOM_GROUP = "dicom-"  # prefix of dicom_files.group_key's ids


def _patients_and_frames(paths: Sequence[str], regex, root: str, dicom_group_by: str) -> tuple[list[str], list[int]]:
    """Patient (split group; '' = the file alone) and frame count of each file: DICOM files from their header
    (``dicom_group_by``), the other images from ``regex`` on their file names (1 frame each)."""
    if dicom_group_by not in dicom_files.GROUP_BY:
        raise ValueError(f"data.dicom_group_by={dicom_group_by!r}: expected one of {dicom_files.GROUP_BY}")
    patients, frames = [""] * len(paths), [1] * len(paths)
    others = [i for i, path in enumerate(paths) if not dicom_files.is_dicom(path)]
    if regex and others:
        for i, patient in zip(others, folder_split.patient_ids([paths[i] for i in others], regex, root)):
            patients[i] = patient
    for i, path in enumerate(paths):
        if dicom_files.is_dicom(path):
            header = dicom_files.read_header(path)
            patients[i], frames[i] = dicom_files.group_key(header, dicom_group_by, path), header.frames
    return patients, frames


def _check_patients_in_one_split(rows: Sequence[folder_split.Row], patient_regex: str,
                                 dicom_group_by: str = "patient") -> None:
    first_seen: dict[str, folder_split.Row] = {}
    for row in rows:
        if not row.patient:
            continue
        seen = first_seen.setdefault(row.patient, row)
        if seen.split != row.split:
            source = (f"data.dicom_group_by='{dicom_group_by}'" if row.patient.startswith(_DICOM_GROUP)
                      else f"data.patient_regex='{patient_regex}'")
            raise ValueError(f"patient {row.patient!r} ({source}) has images in both "
                             f"{seen.split} and {row.split}: {seen.path} and {row.path}")


def load_image(path: str, size: int, channels: int) -> bytes:
    """Decode, check and resize one (non-DICOM) image file -> PNG bytes of uint8 [size, size, channels]."""
    try:
        with PIL.Image.open(path) as image:
            image.load()  # Forces a full decode so truncated files fail here, not later.
            return base.encode_png(base.fit_square(base.image_to_uint8(image, path), size, channels))
    except (OSError, SyntaxError, PIL.UnidentifiedImageError) as error:
        raise ValueError(f"corrupt or truncated image {path}: {error}") from None


def load_frames(path: str, size: int, channels: int):
    """Every image of one file (a DICOM file's frames, else the one image) as PNG bytes of uint8
    [size, size, channels], in order."""
    if not dicom_files.is_dicom(path):
        yield load_image(path, size, channels)
        return
    for frame in dicom_files.iter_frames(path):
        yield base.encode_png(base.array_to_square(frame, size, channels, path))


class ClassFolders(base.ImageClassificationBuilder):
    """Images sorted into class folders by the user (see module docstring for the layouts)."""

    def _split_generators(self, dl_manager):
        del dl_manager
        config = self.builder_config
        # Inside TFDS's temporary folder, renamed with the data on success: the record never outlives its data.
        folder_split.write_record(os.path.join(self.data_dir, base.SPLIT_RECORD_FILENAME), config.rows,
                                  config.class_names, config.root)
        return {split: self._counted(split, self._generate_examples([r for r in config.rows if r.split == split]))
                for split in base.SPLITS}

    def _generate_examples(self, rows):
        config = self.builder_config
        index = 0
        for row in rows:
            for image in load_frames(row.path, config.image_size, config.channels):
                yield index, {"image": image, "label": row.label}
                index += 1


def make_builder(data_config: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builder for config.data (root, image_size, channels, class_names, split_fractions, split_seed, patient_regex,
    dicom_group_by).

    Prints the class order when it comes from the folders, and the images (and patients) of each split per class.
    """
    size, channels = int(data_config.image_size), int(data_config.channels)
    base.check_image_format(size, channels)
    given = tuple(data_config.class_names)
    if given:
        base.check_class_names(given, "data.class_names")
    root = os.path.abspath(data_config.root) if data_config.root else ""
    fractions = tuple(data_config.get("split_fractions", DEFAULT_FRACTIONS))
    seed, patient_regex = int(data_config.get("split_seed", 0)), data_config.get("patient_regex", "")
    dicom_group_by = data_config.get("dicom_group_by", "patient")
    listing = list_images(root, given, fractions=fractions, seed=seed, patient_regex=patient_regex,
                          dicom_group_by=dicom_group_by)
    class_names, rows = listing.class_names, listing.rows
    if not given:
        order = ", ".join(f"{label}={name}" for label, name in enumerate(class_names))
        print(f"class_folders: class names from the folders of {root}, sorted by name: {order}", flush=True)
    made = ("split by its train/validation/test folders" if listing.split_given
            else f"split made with data.split_fractions={fractions}, data.split_seed={seed}")
    grouped = f", patients from data.patient_regex='{patient_regex}'" if patient_regex else ""
    dicom = [row for row in rows if dicom_files.is_dicom(row.path)]
    if dicom:
        grouped += (f", {len(dicom)} DICOM files ({sum(row.frames for row in dicom)} frames) grouped by "
                    + ("file" if dicom_group_by == "file" else dicom_files.GROUP_TAGS[dicom_group_by])
                    + f" (data.dicom_group_by='{dicom_group_by}')")
    print("\n".join([f"class_folders: {root}: {made}{grouped}"] + folder_split.summary(rows, class_names)),
          flush=True)
    fingerprint = base.short_hash(
        class_names, [(base.file_fingerprint(row.path), row.label, row.patient, row.split) for row in rows])
    folder = base.name_stem(os.path.basename(root.rstrip("/")), fallback="root")
    config = FolderConfig(
        name=f"{folder}_{fingerprint}_s{size}_c{channels}",
        description=f"class folders under {root}",
        image_size=size,
        channels=channels,
        class_names=class_names,
        root=root,
        rows=tuple(rows),
    )
    return ClassFolders(config=config, data_dir=data_dir, file_format="array_record")
