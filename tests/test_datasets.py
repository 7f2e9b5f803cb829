"""The TFDS builders: each prepares and reads a small data set in its real on-disk format; bad inputs fail
with one clear line and leave nothing half-written (class_folders: tests/test_class_folders.py)."""

import os
import pathlib

import numpy as np
import pytest
from scipy import io as scipy_io

from flax_fld.data import datasets, input_pipeline
from flax_fld.data.datasets import simulator
from flax_fld.runtime.config_files import load_config


def data_config(**overrides):
    config = load_config("default").data
    config.update(overrides)
    return config


def read_split(config, data_dir, split):
    source = datasets.get_builder(config, data_dir).as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def prepare(config, data_dir):
    """Prepare (or reuse) the data set of ``config`` under ``data_dir``; its DatasetInfo."""
    return input_pipeline.prepare_data_source(config, data_dir).info


def prepared_dirs(data_dir):
    """Every file and folder under data_dir except TFDS's (empty) downloads folder."""
    root = pathlib.Path(data_dir)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "downloads" not in p.relative_to(root).parts)


# --- synthetic_fatty_liver ---------------------------------------------------------------------------------


def test_synthetic_prepares_stratified_splits(tmp_path):
    config = data_config(image_size=16, num_examples=60)
    info = prepare(config, str(tmp_path))
    assert info.class_names == simulator.GRADES and info.image_shape == (16, 16, 1)
    assert sum(info.num_examples.values()) == 60
    totals = np.sum([info.class_counts[s] for s in ("train", "validation", "test")], axis=0)
    assert tuple(totals) == tuple(simulator.grade_counts(60)[g] for g in simulator.GRADES)
    test = read_split(config, str(tmp_path), "test")
    assert len(test) == info.num_examples["test"]
    assert np.bincount([e["label"] for e in test], minlength=4).tolist() == list(info.class_counts["test"])
    assert test[0]["image"].shape == (16, 16, 1) and test[0]["image"].dtype == np.uint8
    # Idempotent: a second call reuses the prepared files untouched.
    files = {p: os.stat(tmp_path / p).st_mtime_ns for p in prepared_dirs(tmp_path)}
    assert prepare(config, str(tmp_path)) == info
    assert {p: os.stat(tmp_path / p).st_mtime_ns for p in prepared_dirs(tmp_path)} == files


def test_synthetic_rgb_and_class_order(tmp_path):
    order = ("severe", "moderate", "mild", "normal")
    config = data_config(image_size=16, num_examples=40, channels=3, class_names=order)
    info = prepare(config, str(tmp_path))
    assert info.class_names == order and info.image_shape == (16, 16, 3)
    counts = simulator.grade_counts(40)
    assert sum(info.class_counts[s][0] for s in info.class_counts) == counts["severe"]
    with pytest.raises(ValueError, match="must be an ordering of"):
        prepare(data_config(class_names=("a", "b")), str(tmp_path))


# --- byra_liver --------------------------------------------------------------------------------------------


def write_byra_mat(path, fats=(1.0, 3.0, 10.0, 20.0, 40.0, 50.0, 70.0, 90.0), frames=3, drop_field=None, image_dtype=np.uint8):
    fields = [f for f in ("id", "class", "fat", "images") if f != drop_field]
    data = np.empty((1, len(fats)), dtype=[(f, object) for f in fields])
    for i, fat in enumerate(fats):
        record = {"id": np.array([[i + 1]]), "class": np.array([[int(fat >= 5)]]), "fat": np.array([[fat]])}
        # Every frame of patient i is the constant 20 * (i + 1): the split test can tell patients apart.
        images = np.full((frames, 22, 32), 20 * (i + 1), dtype=np.uint8).astype(image_dtype)
        record["images"] = images / 255.0 if np.issubdtype(image_dtype, np.floating) else images
        for field in fields:
            data[0, i][field] = record[field]
    scipy_io.savemat(path, {"data": data})
    return path


def test_byra_grades_by_fat_and_splits_by_patient(tmp_path):
    mat = write_byra_mat(tmp_path / "byra.mat")
    config = data_config(name="byra_liver", root=str(mat), image_size=16)
    info = prepare(config, str(tmp_path / "data"))
    assert sum(info.num_examples.values()) == 8 * 3
    totals = np.sum([info.class_counts[s] for s in info.class_counts], axis=0)
    assert totals.tolist() == [6, 6, 6, 6]  # Two patients per grade, three frames each.
    patients_by_split = {}
    for split in ("train", "validation", "test"):
        examples = read_split(config, str(tmp_path / "data"), split)
        # The centre pixel identifies the patient; its grade follows from the fat percentage.
        patients = {int(round(e["image"][8, 8, 0] / 20.0)) for e in examples}
        for e in examples:
            patient = int(round(e["image"][8, 8, 0] / 20.0))
            assert e["label"] == (patient - 1) // 2
        patients_by_split[split] = patients
    assert set.union(*patients_by_split.values()) == set(range(1, 9))
    assert sum(len(p) for p in patients_by_split.values()) == 8  # No patient in two splits.

    binary = data_config(name="byra_liver", root=str(mat), image_size=16, class_names=("normal", "fatty"))
    binary_info = prepare(binary, str(tmp_path / "data"))
    assert np.sum([binary_info.class_counts[s] for s in binary_info.class_counts], axis=0).tolist() == [6, 18]


def test_byra_bad_inputs(tmp_path):
    data_dir = str(tmp_path / "data")
    missing = write_byra_mat(tmp_path / "nofat.mat", drop_field="fat")
    with pytest.raises(ValueError, match=r"nofat.mat: struct 'data' is missing field\(s\) \['fat'\]"):
        prepare(data_config(name="byra_liver", root=str(missing)), data_dir)
    nan_mat = tmp_path / "nan.mat"
    write_byra_mat(nan_mat, image_dtype=np.float64)
    contents = scipy_io.loadmat(nan_mat)
    contents["data"][0, 2]["images"][1, 3, 4] = np.nan
    scipy_io.savemat(nan_mat, {"data": contents["data"]})
    with pytest.raises(ValueError, match="nan.mat: patient 3 frame 1: image contains NaN"):
        prepare(data_config(name="byra_liver", root=str(nan_mat)), data_dir)
    with pytest.raises(ValueError, match="is not a file"):
        prepare(data_config(name="byra_liver", root=str(tmp_path / "absent.mat")), data_dir)
    assert prepared_dirs(data_dir) == []


# --- medmnist_npz ------------------------------------------------------------------------------------------


def medmnist_arrays(n=(6, 3, 4), size=28):
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, count in zip(("train", "val", "test"), n):
        arrays[f"{prefix}_images"] = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
        arrays[f"{prefix}_labels"] = (np.arange(count) % 2)[:, None].astype(np.uint8)
    return arrays


def test_medmnist_npz_reads_splits(tmp_path):
    np.savez(tmp_path / "breastmnist.npz", **medmnist_arrays())
    config = data_config(name="medmnist_npz", root=str(tmp_path / "breastmnist.npz"), class_names=("malignant", "benign"), image_size=16)
    info = prepare(config, str(tmp_path / "data"))
    assert info.num_examples == {"train": 6, "validation": 3, "test": 4}
    assert info.class_counts == {"train": (3, 3), "validation": (2, 1), "test": (2, 2)}
    examples = read_split(config, str(tmp_path / "data"), "validation")
    assert [e["image"].shape for e in examples] == [(16, 16, 1)] * 3


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.pop("val_labels"), r"missing key\(s\) \['val_labels'\]"),
        (lambda a: a.update(test_labels=a["test_labels"][:2]), "test_images has 4 entries but test_labels has 2"),
        (lambda a: a.update(train_images=a["train_images"] / 100.0), r"train_images: float pixel values must lie in \[0, 1\]"),
        (lambda a: a.update(train_labels=a["train_labels"] + 5), r"train_labels values must lie in \[0, 1\]"),
        (lambda a: a.update(val_images=a["val_images"][:0], val_labels=a["val_labels"][:0]), "empty split 'validation'"),
    ],
    ids=["missing_key", "length_mismatch", "out_of_range", "bad_label", "empty_split"],
)
def test_medmnist_npz_bad_inputs(tmp_path, edit, message):
    arrays = medmnist_arrays()
    edit(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    config = data_config(name="medmnist_npz", root=str(tmp_path / "bad.npz"), class_names=("a", "b"), image_size=16)
    with pytest.raises(ValueError, match=message) as error:
        prepare(config, str(tmp_path / "data"))
    assert "\n" not in str(error.value) and "bad.npz" in str(error.value)
    assert prepared_dirs(tmp_path / "data") == []


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="unknown data.name='imagenet'"):
        prepare(data_config(name="imagenet"), str(tmp_path))
