"""flax_fld/tools/preview.py and launch/preview_data.py on the tiny synthetic data set."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image

from flax_fld.data import input_pipeline
from flax_fld.runtime.config_files import load_config
from flax_fld.tools import preview

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_each_row_shows_the_first_examples_of_its_class(tmp_path):
    config = load_config("tiny")
    data_dir = str(tmp_path / "tfds")
    out, class_names = preview.save_preview(config, data_dir, str(tmp_path / "png" / "grid.png"), split="test",
                                            per_class=2)
    assert class_names == tuple(config.data.class_names)
    with PIL.Image.open(out) as image:
        pixels = np.asarray(image)
    zoom = 128 // 32  # 32 px rows are shown at 128 px
    assert pixels.shape == (4 * 32 * zoom, 2 * 32 * zoom)
    data = input_pipeline.prepare_data_source(config.data, data_dir)
    batch = next(iter(input_pipeline.eval_batches(data, split="test", per_device_batch_size=64,
                                                  local_device_count=1)))
    labels, images = batch["label"][0][batch["mask"][0]], batch["image"][0][batch["mask"][0]]
    for label in range(4):
        first = images[np.flatnonzero(labels == label)[0], :, :, 0]
        shown = pixels[label * 32 * zoom:(label + 1) * 32 * zoom:zoom, 0:32 * zoom:zoom]
        np.testing.assert_array_equal(shown, np.round(first * 255).astype(np.uint8))


def test_the_launch_script_writes_the_png_and_names_the_rows(tmp_path):
    out = tmp_path / "preview.png"
    result = subprocess.run([sys.executable, "launch/preview_data.py", "--config=configs/tiny.py",
                             f"--config.data.data_dir={tmp_path / 'tfds'}", f"--out={out}", "--per_class=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # TFDS prints its own line while it prepares the data set; the script's line comes last.
    assert result.stdout.strip().splitlines()[-1] == f"wrote {out}: rows = normal, mild, moderate, severe (train split)"
    with PIL.Image.open(out) as image:
        assert image.size == (128, 4 * 128)
