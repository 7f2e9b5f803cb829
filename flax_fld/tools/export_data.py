"""Write one split of any data source as plain files: ``OUT/<class>/<id>.png`` and ``OUT/labels.csv``.

So that anyone can look at the data, or train another framework's model on exactly what this project trains
on (``launch/export_data.py``). For a data source read from files, the PNGs are the prepared data set's
pixels, read back from it. For the simulator, each row's id is the simulator's example id and its image is
made again from that id (the same bytes the prepared set stores; tests/test_export_data.py checks), and
``labels.csv`` also carries what made it: the latent fat fraction and, for version 2, every scanner setting
and the body habitus.
"""

from __future__ import annotations

import csv
import os

import ml_collections
import numpy as np
import PIL.Image

from flax_fld.data import input_pipeline
from flax_fld.data.datasets import base, simulator, synthetic_fatty_liver

LABEL_FILENAME = "labels.csv"


def _write_png(path: str, image: np.ndarray) -> None:
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    PIL.Image.fromarray(pixels).save(path)


def _synthetic_rows(data_config: ml_collections.ConfigDict, split: str):
    """(id, grade, uint8 [H, W, C] image, latent values) of every example of a simulator split, in id order."""
    builder_config = synthetic_fatty_liver.builder_config(data_config)
    plan = simulator.split_plan(builder_config.num_examples, builder_config.seed)[split]
    for example_id, grade in plan:
        scan = synthetic_fatty_liver.simulate(builder_config, example_id, grade)
        pixels = np.repeat(np.round(scan.image * 255.0).astype(np.uint8)[..., None], builder_config.channels, -1)
        latent = {"simulator_version": builder_config.simulator_version, "fat_fraction": f"{scan.fat_fraction:.4f}"}
        if builder_config.simulator_version == 2:
            latent["site"] = builder_config.site
            latent.update({key: _format(value) for key, value in scan.settings.as_dict().items()})
            latent.update(subcutaneous_fat_cm=_format(scan.patient.subcutaneous_fat_cm),
                          muscle_cm=_format(scan.patient.muscle_cm),
                          hepatorenal_view=scan.patient.hepatorenal_view)
        yield str(example_id), grade, pixels, latent


def _format(value):
    return f"{value:.4f}" if isinstance(value, float) else value


def _source_rows(data_config: ml_collections.ConfigDict, data_dir: str, split: str):
    data = input_pipeline.prepare_data_source(data_config, data_dir)
    images, labels = input_pipeline.load_split(data, split)
    for index, (image, label) in enumerate(zip(images, labels)):
        pixels = np.round(image * 255.0).astype(np.uint8)
        yield f"{split}_{index:05d}", data.info.class_names[int(label)], pixels, {}


def export_split(data_config: ml_collections.ConfigDict, data_dir: str, split: str, out: str) -> tuple[int, str]:
    """Write ``split`` under ``out`` (which must be empty or absent); returns (images written, labels.csv path)."""
    if split not in base.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {base.SPLITS}")
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"{out} is not empty: export into a new folder")
    if data_config.name == "synthetic_fatty_liver":
        rows = _synthetic_rows(data_config, split)
    else:
        rows = _source_rows(data_config, data_dir, split)
    os.makedirs(out, exist_ok=True)
    records = []
    for example_id, grade, pixels, latent in rows:
        os.makedirs(os.path.join(out, grade), exist_ok=True)
        relative = os.path.join(grade, f"{example_id}.png")
        _write_png(os.path.join(out, relative), pixels)
        records.append({"id": example_id, "grade": grade, "path": relative, **latent})
    path = os.path.join(out, LABEL_FILENAME)
    fields = list(dict.fromkeys(key for record in records for key in record))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    return len(records), path
