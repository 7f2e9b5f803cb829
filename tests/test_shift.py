"""Scanner shift: the ultrasound corruptions (flax_fld/robustness/corruptions.py) and the shift evaluation
(flax_fld/robustness/shift_eval.py) on the tiny preset with simulator version 2, the other site's scanners
included; the table that prints it."""

import jax
import numpy as np
import pytest

from flax_fld.data import input_pipeline
from flax_fld.evaluation import evaluate
from flax_fld.models import fld
from flax_fld.reporting import tables
from flax_fld.robustness import corruptions, shift_eval
from flax_fld.runtime.config_files import load_config
from model_helpers import synthetic_fld_variables


def _images(count=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.2, 0.8, (count, size, size, 1)).astype(np.float32)
    images[:, :, :4] = 0.0  # a black margin outside the "sector"
    return images


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_every_corruption_keeps_shape_range_and_sector_and_grows_with_severity(name):
    images = _images()
    distances = []
    for severity in corruptions.SEVERITIES:
        corrupted = corruptions.corrupt(images, name, severity, seed=3)
        assert corrupted.shape == images.shape and corrupted.dtype == np.float32
        assert corrupted.min() >= 0.0 and corrupted.max() <= 1.0
        assert np.all(corrupted[:, :, :4] == 0.0), "the black outside of the sector stays black"
        np.testing.assert_array_equal(corrupted, corruptions.corrupt(images, name, severity, seed=3))
        distances.append(float(np.mean(np.abs(corrupted - images))))
    assert distances[0] > 0.0, "severity 1 changes the image"
    assert distances[-1] > distances[0], distances


def test_corrupt_rejects_unknown_names_and_severities():
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corruptions.corrupt(_images(), "fog", 1, seed=0)
    with pytest.raises(ValueError, match="severity 6"):
        corruptions.corrupt(_images(), "haze", 6, seed=0)


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory):
    config = load_config("tiny")
    config.model.use_decouplers = False  # the plumbing does not depend on the decouplers; compiles fastest
    config.data.simulator_version = 2
    config.data.simulator_site = "A"
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds_data"))
    data = input_pipeline.prepare_data_source(config.data, config.data.data_dir)
    model = fld.create_fld_model(config.model, len(data.info.class_names), data.info.image_shape[-1])
    variables = synthetic_fld_variables(model, data.info.image_shape)  # any weights: compiling init is test_fld's
    return config, data, model, variables


def test_array_logits_keep_the_order_and_match_a_direct_forward(tiny_v2):
    config, data, model, variables = tiny_v2
    images, _ = input_pipeline.load_split(data, "test")
    # The shift evaluation's batch size, so both tests share one compiled step; still several batches, the
    # last one padded.
    batch_size = int(config.train.eval_batch_size)
    per_step = jax.local_device_count() * batch_size
    assert len(images) > per_step and len(images) % per_step != 0
    logits = evaluate.array_logits(model, variables, images, per_device_batch_size=batch_size)
    expected = np.asarray(jax.jit(lambda v, x: fld.forward(model, v, x, train=False)[0])(variables, images))
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_shift_report_covers_every_corruption_severity_and_the_other_site(tiny_v2):
    config, data, model, variables = tiny_v2
    lines = []
    report = shift_eval.evaluate_shift(model, variables, config, data, data_dir=config.data.data_dir,
                                       log=lines.append)
    clean = evaluate.evaluate_split(model, variables, config, data, split="test", robust=False)
    assert report["clean"]["per_class_accuracy"] == clean["per_class_accuracy"]
    assert set(report["corruptions"]) == set(corruptions.CORRUPTIONS)
    for by_severity in report["corruptions"].values():
        assert sorted(by_severity) == ["1", "2", "3", "4", "5"]
        for entry in by_severity.values():
            assert entry["num_examples"] == data.info.num_examples["test"]
            assert entry["drop"] == pytest.approx(report["clean"]["average"] - entry["average"])
    mean = report["corruption_mean"]
    assert mean["num_evaluations"] == 50
    assert mean["average"] == pytest.approx(np.mean(
        [e["average"] for s in report["corruptions"].values() for e in s.values()]))
    site = report["site"]
    assert site["site"] == "B" and site["num_examples"] == data.info.num_examples["test"]
    assert any(line.startswith("shift, site B") for line in lines)
    large = report["large_test"]
    assert large["num_examples"] == 10 * data.info.num_examples["test"]
    assert large["average_interval"][0] <= large["average"] <= large["average_interval"][1]
    images, labels = shift_eval.large_test_split(config.data, multiplier=1)
    counts = np.bincount(labels, minlength=4)
    assert len(images) == data.info.num_examples["test"] and counts.min() > 0
    prepared, _ = input_pipeline.load_split(data, "test")
    assert not any(np.array_equal(images[0], image) for image in prepared), "new patients, not the test split"
    text = tables.format_shift(report, "tiny")
    assert "tiny (site B scanners)" in text and "| haze |" in text


def test_only_simulator_version_2_has_another_site():
    config = load_config("tiny")
    config.data.simulator_version = 1
    assert shift_eval.shifted_site_config(config.data) is None
    config.data.simulator_version, config.data.simulator_site = 2, "B"
    assert shift_eval.shifted_site_config(config.data).simulator_site == "A"
    config.data.simulator_site = "all"
    assert shift_eval.shifted_site_config(config.data) is None


def test_ablation_shift_table_has_a_line_per_row_and_shift_kind():
    def entry(average, **extra):
        return {"per_class_accuracy": {"normal": 80.0, "mild": 60.0, "moderate": 50.0, "severe": 70.0},
                "average": average, "best_worst": 30.0, **extra}

    runs = {str(seed): {"shift": {"large_test": entry(64.0 + seed, num_examples=2640),
                                  "site": entry(50.0 + seed, drop=10.0, site="B", num_examples=264),
                                  "corruption_mean": entry(40.0, drop=20.0 + seed)}} for seed in (0, 1)}
    results = [{"method": "floor", "class_names": ["normal", "mild", "moderate", "severe"]},
               {"method": "Net", "class_names": ["normal", "mild", "moderate", "severe"], "runs": runs}]
    lines = tables.format_ablation_shift_table(results).splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| Net | none, 2640 new test patients |") and "64.50 ± 0.71" in lines[2]
    assert lines[3].startswith("| Net | site B |") and lines[3].endswith("| 10.00 ± 0.00 |")
    assert lines[4].startswith("| Net | corruptions (mean) |") and "20.50 ± 0.71" in lines[4]
