"""launch/export_data.py (flax_fld/tools/export_data.py): a split as <class>/<id>.png plus labels.csv, for the
simulator (both versions, with the latent values) and for a class-folder data set; the exported pixels are
the prepared data set's."""

import csv
import hashlib
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from flax_fld.data import input_pipeline
from flax_fld.runtime.config_files import load_config
from flax_fld.tools import export_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(out):
    with open(os.path.join(out, "labels.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def _pixel_hashes_of_folder(out, rows):
    return sorted(hashlib.sha1(np.asarray(PIL.Image.open(os.path.join(out, row["path"]))).tobytes()).hexdigest()
                  for row in rows)


@pytest.mark.parametrize("version", [1, 2])
def test_simulator_export_has_the_prepared_pixels_and_the_latent_values(tmp_path, version):
    config = load_config("tiny")
    config.data.simulator_version = version
    data_dir = str(tmp_path / "tfds")
    out = str(tmp_path / "out")
    count, labels = export_data.export_split(config.data, data_dir, "test", out)
    rows = _rows(out)
    data = input_pipeline.prepare_data_source(config.data, data_dir)
    assert count == len(rows) == data.info.num_examples["test"]
    images, _ = input_pipeline.load_split(data, "test")
    prepared = sorted(hashlib.sha1(np.round(image[..., 0] * 255).astype(np.uint8).tobytes()).hexdigest()
                      for image in images)
    assert _pixel_hashes_of_folder(out, rows) == prepared
    for row in rows:
        assert row["path"] == os.path.join(row["grade"], f"{row['id']}.png")
        assert 0.0 <= float(row["fat_fraction"]) <= 1.0
    if version == 2:
        assert {"frequency_mhz", "depth_cm", "dynamic_range_db", "gain_mode", "tgc_mode", "noise_db",
                "subcutaneous_fat_cm", "site"} <= set(rows[0])
        assert all(2.0 <= float(row["frequency_mhz"]) <= 3.5 for row in rows)  # the default site A
    else:
        assert "frequency_mhz" not in rows[0]
    with pytest.raises(ValueError, match="is not empty"):
        export_data.export_split(config.data, data_dir, "test", out)


def test_class_folder_export_round_trips(tmp_path):
    root = tmp_path / "scans"
    rng = np.random.default_rng(0)
    for name in ("healthy", "fatty"):
        os.makedirs(root / name)
        for index in range(10):
            PIL.Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / name / f"{index}.png")
    config = load_config("tiny")
    config.data.name, config.data.root, config.data.class_names = "class_folders", str(root), ()
    out = str(tmp_path / "out")
    result = subprocess.run(
        [sys.executable, "launch/export_data.py", "--config=configs/tiny.py", "--data=class_folders",
         f"--config.data.root={root}", "--config.data.class_names=()", f"--config.data.data_dir={tmp_path / 'tfds'}",
         "--split=train", f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _rows(out)
    assert {row["grade"] for row in rows} == {"healthy", "fatty"}
    assert "wrote" in result.stdout and str(len(rows)) in result.stdout
    data = input_pipeline.prepare_data_source(config.data, str(tmp_path / "tfds"))
    assert len(rows) == data.info.num_examples["train"]
