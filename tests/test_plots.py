"""Tests for flax_fld.reporting.plots: every figure is a valid, non-empty PNG; bad shapes are refused clearly."""

import os

import numpy as np
import pytest
from PIL import Image

from flax_fld.reporting import metric_writers, plots

CLASS_NAMES = ("normal", "mild", "moderate", "severe")


def _assert_png(path):
    assert os.path.isfile(path) and os.path.getsize(path) > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert width > 50 and height > 50
    assert pixels.std() > 0  # something was drawn
    return width, height


def _epoch_record(epoch, *, robust=True):
    record = {"kind": "epoch", "step": 10 * (epoch + 1), "epoch": epoch,
              "class_epsilon": [(0.5 + 0.1 * k + 0.05 * epoch) * 8 / 255 for k in range(4)],
              "class_beta": [0.7 + 0.02 * k for k in range(4)],
              "train_adv_class_acc": [0.2 + 0.1 * k for k in range(4)],
              "val_clean_class_acc": [50.0 + 5 * k + epoch for k in range(4)]}
    if robust:
        record["val_robust_class_acc"] = [20.0 + 5 * k for k in range(4)]
    return record


def test_class_curves_from_a_written_metrics_file(tmp_path):
    workdir = str(tmp_path)
    with metric_writers.MetricWriter(workdir, enable_tensorboard=False) as writer:
        for step in range(1, 31):
            writer.write("train", step, {"epoch": step // 10, "total": 2.0 / step, "Lc": 0.1, "Lat": 1.0 / step})
        for epoch in range(3):
            record = _epoch_record(epoch)
            writer.write("epoch", record.pop("step"), {k: v for k, v in record.items() if k != "kind"})
    paths = plots.plot_class_curves(metric_writers.read_metrics(workdir), CLASS_NAMES, str(tmp_path / "plots"))
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["class_accuracy.png", "class_calibration.png", "training_losses.png"]
    for path in paths:
        _assert_png(path)


def test_class_curves_skip_missing_figures_and_fewer_panels_make_narrower_plots(tmp_path):
    full = plots.plot_class_curves([_epoch_record(e) for e in range(2)], CLASS_NAMES, str(tmp_path / "a"))
    no_robust = plots.plot_class_curves([_epoch_record(e, robust=False) for e in range(2)], CLASS_NAMES,
                                        str(tmp_path / "b"))
    # No "train" records: no loss figure.
    assert [os.path.basename(p) for p in full] == ["class_accuracy.png", "class_calibration.png"]
    width_full, _ = _assert_png(full[0])
    width_fewer, _ = _assert_png(no_robust[0])
    assert width_fewer < width_full  # two accuracy panels instead of three
    assert plots.plot_class_curves([], CLASS_NAMES, str(tmp_path / "c")) == []


def test_class_curves_refuse_a_list_of_the_wrong_length(tmp_path):
    record = _epoch_record(0)
    record["class_beta"] = [0.5, 0.5]
    with pytest.raises(ValueError, match=r"'class_beta' at epoch 0 has shape \(2,\), expected \(4,\)"):
        plots.plot_class_curves([record], CLASS_NAMES, str(tmp_path))


def test_resumed_run_duplicate_epoch_uses_the_later_record():
    first, second = _epoch_record(1), _epoch_record(1)
    second["class_beta"] = [0.1] * 4
    selected = plots._last_record_per_epoch([_epoch_record(0), first, second], "epoch")
    assert [r["epoch"] for r in selected] == [0, 1] and selected[1]["class_beta"] == [0.1] * 4


def test_confusion_matrix_png(tmp_path):
    confusion = np.array([[60, 5, 3, 1], [10, 70, 8, 2], [0, 9, 50, 7], [0, 0, 4, 35]])
    path = plots.plot_confusion_matrix(confusion, CLASS_NAMES, str(tmp_path / "sub" / "confusion.png"))
    _assert_png(path)
    # A class with no examples (a zero row) must not divide by zero.
    confusion[3] = 0
    _assert_png(plots.plot_confusion_matrix(confusion, CLASS_NAMES, str(tmp_path / "zero_row.png")))
    with pytest.raises(ValueError, match=r"shape \(4, 4\), expected \(3, 3\)"):
        plots.plot_confusion_matrix(confusion, CLASS_NAMES[:3], str(tmp_path / "bad.png"))


@pytest.mark.parametrize("channels", [1, 3])
def test_decoupling_grid_png(tmp_path, channels):
    rng = np.random.default_rng(0)
    images = rng.random((3, 24, 24, channels), dtype=np.float32)
    feat = rng.normal(size=(3, 24, 24, 4)).astype(np.float32)
    feat[0, ..., 0] = 1.0  # a constant channel must not break the min-max scaling
    full = plots.plot_decoupling_grid(images, images[::-1], feat, -feat, [0, 1, 3], CLASS_NAMES,
                                      str(tmp_path / "full.png"), num_channels=2,
                                      predictions=[0, 2, 3], probabilities=rng.random((3, 4)))
    baseline = plots.plot_decoupling_grid(images, None, None, None, None, CLASS_NAMES,
                                          str(tmp_path / "baseline.png"))
    width_full, height_full = _assert_png(full)
    width_base, height_base = _assert_png(baseline)
    # image + reconstruction + 2 + 2 feature columns vs the image column alone, same number of rows.
    assert width_full > 3 * width_base
    assert height_full == height_base


def test_decoupling_grid_refuses_mismatched_shapes(tmp_path):
    images = np.zeros((2, 16, 16, 1), np.float32)
    with pytest.raises(ValueError, match=r"feat1 must be \[N, H, W, \*\] matching"):
        plots.plot_decoupling_grid(images, None, np.zeros((2, 8, 8, 4)), None, None, CLASS_NAMES,
                                   str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"images must be \[N, H, W, 1 or 3\]"):
        plots.plot_decoupling_grid(np.zeros((16, 16, 1)), None, None, None, None, CLASS_NAMES,
                                   str(tmp_path / "y.png"))
