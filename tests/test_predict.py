"""Tests for flax_fld/runs/predict.py and launch/predict.py on a configs/tiny.py run directory (32 px)."""

import os
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest
from model_helpers import untrained_run

from flax_fld.data import input_pipeline
from flax_fld.models import fld
from flax_fld.reporting import tables
from flax_fld.runs import predict
from flax_fld.runtime.config_files import load_config
from flax_fld.training import train

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(workdir, config, data_dir) of a configs/tiny.py run with a checkpoint of its initial state.

    Training is skipped (the train tests cover it): predict only needs a run directory that
    ``train.load_for_inference`` can read, and any weights give the same equalities checked here.
    """
    root = tmp_path_factory.mktemp("predict")
    config = load_config("tiny")
    config.data.data_dir = str(root / "tfds_data")
    workdir, _ = untrained_run(root, config)
    return workdir, config, config.data.data_dir


@pytest.fixture(scope="module")
def loaded(trained_run):
    return train.load_for_inference(trained_run[0])


def _test_images(config, data_dir, count):
    """The first ``count`` test images [N, H, W, C] and labels, as the evaluation sees them."""
    data = input_pipeline.prepare_data_source(config.data, data_dir)
    batch = next(iter(input_pipeline.eval_batches(data, split="test", per_device_batch_size=count,
                                                  local_device_count=1)))
    return batch["image"][0], batch["label"][0]


def _write_png(array, path):
    pixels = np.round(array[..., 0] * 255).astype(np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return str(path)


def test_predictions_equal_the_models_on_the_data_sets_own_images(trained_run, loaded, tmp_path, capsys):
    workdir, config, data_dir = trained_run
    images, _ = _test_images(config, data_dir, 4)
    paths = [_write_png(image, tmp_path / f"scan_{i}.png") for i, image in enumerate(images[:3])]
    plot_dir = str(tmp_path / "plots")
    lines = predict.run(workdir, paths, plot_dir=plot_dir, batch_size=2, loaded=loaded)  # batches of 2 + 1

    _, model, variables, info = loaded
    # The PNGs hold the data set's own 8-bit pixels at the model's size, so reading them back is exact.
    np.testing.assert_array_equal(predict.read_images(paths, 32, 1), images[:3])
    # Reference: the model on the data set's images in one batch, next to an image predict never saw
    # (eval mode: an example's output must not depend on its batch).
    # The softmax inside the jit: eagerly each of its ops would compile a program of its own.
    reference = jax.jit(lambda v, x: jax.nn.softmax(fld.forward(model, v, x, train=False)[0], -1))
    expected = np.asarray(reference(variables, images))[:3]
    probabilities, maps = predict.predict(model, variables, images[:3], batch_size=2)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert maps["feat1"].shape[:3] == (3, 32, 32) and maps["x_hat"].shape == (3, 32, 32, 1)

    printed = capsys.readouterr().out
    for path, line, p in zip(paths, lines, expected):
        assert line in printed and line.startswith(f"{path}: {info.class_names[int(p.argmax())]} (")
        shown = [float(token[:-1]) for token in line.split("|")[1].split() if token.endswith("%")]
        np.testing.assert_allclose(shown, 100 * p, atol=0.051)
    for name in ("scan_0.png", "scan_1.png", "scan_2.png"):
        with PIL.Image.open(os.path.join(plot_dir, name)) as image:
            image.verify()


def test_any_size_and_color_is_resized_to_the_model_input(trained_run, loaded, tmp_path):
    workdir, _, _ = trained_run
    rng = np.random.default_rng(0)
    rgb = tmp_path / "wide.jpg"
    PIL.Image.fromarray((rng.random((40, 90, 3)) * 255).astype(np.uint8)).save(rgb)
    gray = tmp_path / "tall.bmp"
    PIL.Image.fromarray((rng.random((120, 50)) * 255).astype(np.uint8)).save(gray)
    images = predict.read_images([str(rgb), str(gray)], 32, 1)
    assert images.shape == (2, 32, 32, 1) and 0.0 <= images.min() and images.max() <= 1.0
    lines = predict.run(workdir, [str(rgb), str(gray)], loaded=loaded, batch_size=2)
    assert [line.split(":")[0] for line in lines] == [str(rgb), str(gray)]


def test_cli_bad_image_is_one_line_naming_the_file_and_nonzero_exit(trained_run, tmp_path):
    workdir, config, data_dir = trained_run
    images, _ = _test_images(config, data_dir, 1)
    good = _write_png(images[0], tmp_path / "good.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    result = subprocess.run([sys.executable, os.path.join(_ROOT, "launch", "predict.py"), f"--workdir={workdir}",
                             good, str(bad)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot read image") and str(bad) in last
    assert "Traceback" not in result.stderr


def test_same_file_names_get_separate_plots(trained_run, loaded, tmp_path):
    workdir, config, data_dir = trained_run
    images, _ = _test_images(config, data_dir, 2)
    os.makedirs(tmp_path / "other")
    paths = [_write_png(images[0], tmp_path / "same.png"), _write_png(images[1], tmp_path / "other" / "same.png")]
    plot_dir = tmp_path / "plots"
    predict.run(workdir, paths, plot_dir=str(plot_dir), loaded=loaded, batch_size=2)
    assert sorted(os.listdir(plot_dir)) == ["same.png", "same_1.png"]
    for name in ("same.png", "same_1.png"):
        with PIL.Image.open(plot_dir / name) as image:
            assert image.format == "PNG" and image.size[0] > image.size[1]  # image + maps side by side


def test_plot_names_and_formatting_without_a_model():
    assert predict.plot_paths(["a/x.png", "b/x.jpg", "y.bmp"], "out") == ["out/x.png", "out/x_1.png", "out/y.png"]
    line = tables.format_prediction("s.png", np.array([0.05, 0.18, 0.71, 0.06]),
                                     ("normal", "mild", "moderate", "severe"))
    assert line == "s.png: moderate (71.0%) | normal 5.0% mild 18.0% moderate 71.0% severe 6.0%"
