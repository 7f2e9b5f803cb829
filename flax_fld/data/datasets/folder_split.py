"""Train/validation/test split of a user's images made by the project: stratified by class, grouped by patient.

Ultrasound sets hold many frames per patient. Frames of one patient in both train and test let a model
recognise the patient instead of the grade, which inflates every reported number, so a patient (a group of
images) always lies in one split. Patients are split per class so that each split holds about its fraction
(``data.split_fractions``) of every class's images. The assignment depends only on the listing, the
fractions and ``data.split_seed``, and is written as a CSV (path, class, patient, split, frames) for
inspection. A DICOM file may hold many frames (each an image, all in its split); its patient is a hash of its
PatientID or StudyInstanceUID (dicom_files.group_key), never the id itself.
"""

from __future__ import annotations

import collections
import csv
import math
import os
import re
import zlib
from typing import NamedTuple, Sequence

import numpy as np

from flax_fld.data.datasets import base


class Row(NamedTuple):
    """One image file of the listing: where it is, its label, its patient id ('' without a regex), its split,
    and how many images (frames) it holds: 1 except for a multi-frame DICOM."""

    path: str
    label: int
    patient: str
    split: str
    frames: int = 1


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """``data.split_fractions`` as (train, validation, test) floats, each > 0, summing to 1; else ValueError."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    if len(values) != len(base.SPLITS) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"data.split_fractions={fractions!r}: expected three numbers (train, validation, test)")
    if min(values) <= 0:
        empty = base.SPLITS[values.index(min(values))]
        raise ValueError(f"data.split_fractions={fractions!r} leaves the {empty} split empty (each must be > 0)")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"data.split_fractions={fractions!r} sums to {sum(values):.6g}; the fractions must sum to 1")
    return values


def compile_patient_regex(pattern: str) -> re.Pattern | None:
    """``data.patient_regex`` compiled (None when empty); ValueError naming it when it does not compile."""
    if not pattern:
        return None
    if not isinstance(pattern, str):
        raise ValueError(f"data.patient_regex={pattern!r}: expected a regular expression string")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"data.patient_regex='{pattern}' does not compile: {error}") from None


def patient_ids(paths: Sequence[str], regex: re.Pattern, root: str) -> list[str]:
    """The patient id of each image: first group of ``regex.search(file name)``, or the whole match.

    ValueError naming the regex and a file when a file name yields no id (every image needs a patient).
    """
    ids, missing = [], []
    for path in paths:
        match = regex.search(os.path.basename(path))
        patient = (match.group(1) if regex.groups else match.group(0)) if match else None
        ids.append(patient or "")
        if not patient:
            missing.append(os.path.basename(path))
    if len(missing) == len(paths):
        raise ValueError(f"data.patient_regex='{regex.pattern}' matches none of the {len(paths)} image file names "
                         f"under {root} (e.g. {missing[0]!r})")
    if missing:
        raise ValueError(f"data.patient_regex='{regex.pattern}' finds no patient id in {len(missing)} of the "
                         f"{len(paths)} image file names under {root}, e.g. {missing[0]!r}")
    return ids


def split_groups(group_sizes: Sequence[int], fractions: Sequence[float], rng: np.random.Generator) -> list[int]:
    """Split index (into ``fractions``) of each group, so each split's share of the images is near its fraction.

    Groups go largest first (random order among equal sizes), each to the split furthest below its target
    number of images; once the groups left are only enough to give each still-empty split one, they go there.
    Needs at least one group per split.
    """
    order = sorted(rng.permutation(len(group_sizes)).tolist(), key=lambda g: -group_sizes[g])
    targets = [f * sum(group_sizes) for f in fractions]
    images, groups = [0] * len(fractions), [0] * len(fractions)
    assignment = [0] * len(group_sizes)
    for position, group in enumerate(order):
        empty = [s for s in range(len(fractions)) if groups[s] == 0]
        candidates = empty if len(order) - position <= len(empty) else range(len(fractions))
        chosen = max(candidates, key=lambda s: targets[s] - images[s])
        assignment[group] = chosen
        images[chosen] += group_sizes[group]
        groups[chosen] += 1
    return assignment


def assign_splits(paths: Sequence[str], labels: Sequence[int], patients: Sequence[str], class_names: Sequence[str],
                  fractions: Sequence[float], seed: int, root: str, frames: Sequence[int] | None = None,
                  patient_source: str = "data.patient_regex") -> list[Row]:
    """Rows of the listing with a split: each patient (each file when ``patients`` are '') in one split.

    ``frames``: images in each file (default 1 each); the splits' shares count images, so a file counts with
    its frames. A patient with images in several classes is split with the class holding most of them. The
    random order is seeded by (seed, class name), so adding a class leaves the other classes' assignment
    unchanged. ``patient_source`` names the setting the patients come from in an error.
    """
    frames = [1] * len(paths) if frames is None else [int(f) for f in frames]
    members: dict[str, list[int]] = collections.defaultdict(list)
    for index, patient in enumerate(patients):
        members[patient or f"\0{paths[index]}"].append(index)
    by_class: dict[int, list[str]] = collections.defaultdict(list)
    for key in sorted(members):
        home = collections.Counter({label: 0 for label in sorted({labels[i] for i in members[key]})})
        for i in members[key]:
            home[labels[i]] += frames[i]
        home = home.most_common()
        by_class[min(label for label, count in home if count == home[0][1])].append(key)
    split_of = {}
    grouped = any(patients)
    for label, name in enumerate(class_names):
        keys = by_class[label]
        if len(keys) < len(fractions):
            unit = f"patients ({patient_source})" if grouped else "images" if max(frames) == 1 else "files"
            raise ValueError(f"class {name!r} under {root} has {len(keys)} {unit}; each of the {len(fractions)} "
                             "splits needs at least one: add images or use the root/{train,validation,test}/<class>/ "
                             "layout")
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        sizes = [sum(frames[i] for i in members[k]) for k in keys]
        for key, split in zip(keys, split_groups(sizes, fractions, rng)):
            split_of[key] = base.SPLITS[split]
    return [Row(path, label, patient, split_of[patient or f"\0{path}"], count)
            for path, label, patient, count in zip(paths, labels, patients, frames)]


def summary(rows: Sequence[Row], class_names: Sequence[str]) -> list[str]:
    """One line per class: images (and patients when grouped) in each split."""
    grouped = any(row.patient for row in rows)
    lines = []
    for label, name in enumerate(class_names):
        parts = []
        for split in base.SPLITS:
            chosen = [row for row in rows if row.label == label and row.split == split]
            count = len({row.patient or row.path for row in chosen})  # an ungrouped file is its own patient
            patients = f"{count} patient{'s' * (count != 1)} / " if grouped else ""
            parts.append(f"{split} {patients}{sum(row.frames for row in chosen)} images")
        lines.append(f"  {name}: {', '.join(parts)}")
    return lines


def write_record(path: str, rows: Sequence[Row], class_names: Sequence[str], root: str) -> None:
    """CSV with header path,class,patient,split,frames (paths relative to ``root``; frames: images the file
    holds), rows in split/class/path order."""
    order = sorted(rows, key=lambda row: (base.SPLITS.index(row.split), row.label, row.path))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "class", "patient", "split", "frames"))
        for row in order:
            writer.writerow((os.path.relpath(row.path, root), class_names[row.label], row.patient, row.split,
                             row.frames))
