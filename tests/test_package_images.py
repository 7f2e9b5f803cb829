"""Real-image checks written as class folders (flax_fld/tools/package_images.py)."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from flax_fld.data.datasets import class_folders
from flax_fld.tools import package_images


def test_digits_are_written_stratified_and_read_back_by_class_folders(tmp_path):
    out = tmp_path / "digits"
    counts = package_images.write_class_folders("digits", str(out))
    assert sum(map(sum, counts.values())) == 720  # scikit-learn's digits 0-3
    for k in range(4):  # 60/15/25 % of every class
        total = sum(counts[split][k] for split in counts)
        assert abs(counts["train"][k] - 0.6 * total) <= 1 and abs(counts["validation"][k] - 0.15 * total) <= 1
    rows = class_folders.list_images(str(out), package_images.CLASS_NAMES["digits"]).rows
    assert [sum(row.split == s for row in rows) for s in ("train", "validation", "test")] == [
        sum(counts[s]) for s in ("train", "validation", "test")]
    image = np.asarray(PIL.Image.open(next(row.path for row in rows if row.split == "test")))
    assert image.shape == (32, 32) and image.dtype == np.uint8 and image.max() > 200


def test_texture_split_is_spatial_and_gain_varies(tmp_path):
    splits = package_images.texture_images()
    train, test = splits["train"], splits["test"]
    assert set(np.unique(train[1])) == {0, 1, 2, 3}
    assert train[0].shape[1:] == (48, 48) and len(train[0]) > len(test[0]) > len(splits["validation"][0])
    # No test patch equals any training patch (disjoint row bands of each photograph).
    train_set = {patch.tobytes() for patch in train[0]}
    assert not any(patch.tobytes() in train_set for patch in test[0])
    means = [patch.mean() for patch, label in zip(train[0], train[1]) if label == 0]
    assert np.std(means) > 5  # the per-patch gain/offset moves the mean grey level


def test_existing_output_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty"):
        package_images.write_class_folders("digits", str(out))
    assert os.listdir(out) == ["keep.txt"]
    with pytest.raises(ValueError, match="--set='mnist'"):
        package_images.write_class_folders("mnist", str(tmp_path / "new"))


def test_the_command_line_writes_a_set_and_refuses_a_taken_folder_in_one_line(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, os.path.join(repo, "launch", "package_images.py"), "--set=digits"]
    done = subprocess.run(command + [f"--out={tmp_path / 'digits'}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and len(os.listdir(tmp_path / "digits" / "test")) == 4
    refused = subprocess.run(command + [f"--out={tmp_path / 'digits'}"], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ") and "exists and is not empty" in refused.stderr
