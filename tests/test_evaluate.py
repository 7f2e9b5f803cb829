"""Evaluation: every example counted once (padding masked), confusion matches a direct forward pass, the test
report's intervals and calibration (eval.json, reliability diagram); the launch/train.py and launch/eval.py
command lines end to end on the tiny preset."""

import functools
import json
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from flax_fld.data import input_pipeline
from flax_fld.evaluation import evaluate, reliability
from flax_fld.models import fld
from flax_fld.reporting import run_outputs
from flax_fld.runtime.config_files import load_config
from model_helpers import synthetic_fld_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT_FIELDS = ("per_class_accuracy", "average", "best_worst", "balanced_accuracy", "confusion_matrix", "robust",
                 "class_names", "split")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny config and data; the baseline model (counting and plumbing do not depend on the decouplers, and it
    compiles in a fraction of the full model's time) with numpy-filled variables (the equalities checked here
    hold for any weights; compiling init is test_fld's)."""
    config = load_config("tiny")
    config.model.use_decouplers = False
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds_data"))
    data = input_pipeline.prepare_data_source(config.data, config.data.data_dir)
    model = fld.create_fld_model(config.model, len(data.info.class_names), data.info.image_shape[-1])
    variables = synthetic_fld_variables(model, data.info.image_shape)
    return config, data, model, variables


DIRECT_FORWARD_ROWS = 64  # at least any split of the tiny data set


@functools.lru_cache(maxsize=4)
def _jitted_forward_logits(model):
    return jax.jit(lambda variables, images: fld.forward(model, variables, images, train=False)[0])


def direct_forward_logits(model, variables, images: np.ndarray) -> np.ndarray:
    """``fld.forward``'s logits of ``images``, run outside the evaluation code: one jitted program that every
    test's images share, zero padded to DIRECT_FORWARD_ROWS rows (eval mode sees each image on its own)."""
    padded = np.zeros((DIRECT_FORWARD_ROWS, *images.shape[1:]), np.float32)
    padded[:len(images)] = images
    return np.asarray(_jitted_forward_logits(model)(variables, padded))[:len(images)]


def test_every_example_counted_once_clean_and_robust(tiny):
    config, data, model, variables = tiny
    info = data.info
    global_batch = config.train.eval_batch_size * jax.local_device_count()
    assert info.num_examples["test"] % global_batch != 0, "the tiny test split should need a padded batch"
    calls = []
    report = evaluate.evaluate_split(model, variables, config, data, split="test", robust=True,
                                     on_batch=lambda *call: calls.append(call))
    batches = -(-info.num_examples["test"] // global_batch)
    attack = evaluate.attack_name(config.adv)
    assert calls == [(attack, done, batches) for done in range(batches + 1)]  # one pass: clean and PGD together
    for field in REPORT_FIELDS:
        assert field in report, field
    expected_rows = np.asarray(info.class_counts["test"])
    np.testing.assert_array_equal(np.asarray(report["confusion_matrix"]).sum(axis=1), expected_rows)
    (robust,) = report["robust"].values()
    np.testing.assert_array_equal(np.asarray(robust["confusion_matrix"]).sum(axis=1), expected_rows)
    assert report["split"] == "test" and report["class_names"] == list(info.class_names)


def test_clean_confusion_matches_direct_forward(tiny):
    config, data, model, variables = tiny
    # robust=True shares the compiled step with the test above.
    report = evaluate.evaluate_split(model, variables, config, data, split="validation", robust=True)
    batches = input_pipeline.eval_batches(data, split="validation", per_device_batch_size=64, local_device_count=1)
    expected = np.zeros((len(data.info.class_names),) * 2, np.int64)
    for batch in batches:
        mask = batch["mask"][0]
        logits = direct_forward_logits(model, variables, batch["image"][0][mask])
        np.add.at(expected, (batch["label"][0][mask], np.argmax(logits, -1)), 1)
    np.testing.assert_array_equal(np.asarray(report["confusion_matrix"]), expected)


def test_robust_curve_reproduces_the_configured_attack_and_a_vanishing_radius_is_clean(tiny):
    config, data, model, variables = tiny
    report = evaluate.evaluate_split(model, variables, config, data, split="test", robust=True)
    configured = evaluate.attack_name(config.adv)
    curve = evaluate.robust_curve(model, variables, config, data, split="test",
                                  epsilons=(1e-7, float(config.adv.eval_epsilon)))
    assert len(curve) == 2 and configured in curve
    np.testing.assert_array_equal(curve[configured]["confusion_matrix"],
                                  report["robust"][configured]["confusion_matrix"])
    (vanishing,) = (name for name in curve if name != configured)
    np.testing.assert_array_equal(curve[vanishing]["confusion_matrix"], report["confusion_matrix"])


CALIBRATION_FIELDS = ("ece", "per_class_ece", "temperature", "ece_after_temperature")


def test_split_logits_drop_the_padding_and_match_a_direct_forward(tiny):
    config, data, model, variables = tiny
    logits, labels = evaluate.split_logits(model, variables, config, data, split="test")
    images, expected_labels = input_pipeline.load_split(data, "test")
    expected = direct_forward_logits(model, variables, images)
    assert logits.shape == expected.shape  # the padded zero images of the last batch are gone
    # Examples come grouped by device, not in data set order: compare them as sets of rows.
    order, expected_order = np.lexsort(logits.T[::-1]), np.lexsort(expected.T[::-1])
    np.testing.assert_allclose(logits[order], expected[expected_order], atol=1e-4)
    np.testing.assert_array_equal(labels[order], expected_labels[expected_order])


def test_test_report_has_intervals_calibration_and_a_reliability_diagram(tiny, tmp_path):
    config, data, model, variables = tiny
    report = evaluate.evaluate_split(model, variables, config, data, split="test", robust=True)
    report["calibration"] = evaluate.calibration_report(model, variables, config, data, split="test")
    report["checkpoint"] = "initial weights"
    text = run_outputs.write_report(str(tmp_path), report, config)
    with open(tmp_path / "eval.json", encoding="utf-8") as handle:
        written = json.load(handle)
    names = list(data.info.class_names)
    calibration = written["calibration"]
    for field in CALIBRATION_FIELDS:
        assert field in calibration, field
    assert list(calibration["per_class_ece"]) == names and 0.0 <= calibration["ece"] <= 1.0
    assert calibration["temperature"] > 0 and calibration["temperature_fitted_on"] == "validation"
    assert sum(calibration["bins"]["count"]) == data.info.num_examples["test"]
    logits, labels = evaluate.split_logits(model, variables, config, data, split="test")
    assert calibration["ece"] == pytest.approx(
        reliability.expected_calibration_error(reliability.softmax(logits), labels))
    validation_logits, validation_labels = evaluate.split_logits(model, variables, config, data, split="validation")
    assert calibration["temperature"] == pytest.approx(
        reliability.fit_temperature(validation_logits, validation_labels))
    assert set(written["per_class_interval"]) == set(names) and len(written["average_interval"]) == 2
    assert written["average_interval"][0] <= written["average"] <= written["average_interval"][1]
    assert "best_worst_interval" in written
    assert (tmp_path / "plots" / "reliability_diagram.png").stat().st_size > 0
    assert "ECE" in text and "95 % intervals" in text
    assert re.search(rf"\| \**{report['average']:.2f}\** \[\d+\.\d, \d+\.\d\] \|", text)  # Average [lo, hi]

    # eval.temperature_scaling=False reports the ECE alone; a config from before the key scales.
    off = ml_collections.ConfigDict(config.to_dict())
    off.eval.temperature_scaling = False
    plain = evaluate.calibration_report(model, variables, off, data, split="test")
    assert plain["temperature"] is None and plain["ece_after_temperature"] is None
    assert plain["ece"] == calibration["ece"]
    del off["eval"]
    assert evaluate.temperature_scaling_enabled(off)


def _run(args: list[str], cwd: str, cache_dir: str) -> subprocess.CompletedProcess:
    # A compilation cache shared by the two commands: eval.py reuses the evaluation step train.py compiled.
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
    result = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow  # minutes of end-to-end training: make test-slow
def test_launch_train_then_eval_command_lines(tiny, tmp_path):
    config = tiny[0]
    workdir, cache_dir = str(tmp_path / "run"), str(tmp_path / "jax_cache")
    # The command-line plumbing does not depend on the model; the baseline variant compiles fastest (the full
    # model is trained in-process by tests/test_train.py).
    trained = _run(["launch/train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
                    "--config.train.num_epochs=1", "--config.model.use_decouplers=False",
                    f"--config.data.data_dir={config.data.data_dir}"], REPO, cache_dir)
    assert "Best-Worst%" in trained.stdout and "ETA" in trained.stdout
    with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as handle:
        train_report = json.load(handle)
    for name in ("config.json", "metrics.jsonl", "checkpoints", "checkpoints_best", "tensorboard", "plots"):
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as handle:
        kinds = {json.loads(line)["kind"] for line in handle}
    assert kinds == {"train", "epoch", "eval", "time"}

    os.remove(os.path.join(workdir, "eval.json"))
    evaluated = _run(["launch/eval.py", f"--workdir={workdir}", "--which=best"], REPO, cache_dir)
    assert "Best-Worst%" in evaluated.stdout
    with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as handle:
        eval_report = json.load(handle)
    # Same checkpoint, same batches, same attack key: the command line reproduces the training's report.
    for field in ("confusion_matrix", "per_class_accuracy", "robust", "per_class_interval"):
        assert eval_report[field] == train_report[field], field
    for field in CALIBRATION_FIELDS:
        assert eval_report["calibration"][field] == pytest.approx(train_report["calibration"][field]), field
    assert os.path.exists(os.path.join(workdir, "plots", "reliability_diagram.png"))
    assert "ECE" in trained.stdout and "ECE" in evaluated.stdout

    # --epsilons adds a radius to the robust entries and keeps every other field of eval.json.
    _run(["launch/eval.py", f"--workdir={workdir}", "--epsilons=2"], REPO, cache_dir)
    with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as handle:
        with_curve = json.load(handle)
    added = set(with_curve["robust"]) - set(eval_report["robust"])
    assert added == {f"pgd{config.adv.eval_steps}_linf_2/255"}
    assert {key: value for key, value in with_curve.items() if key != "robust"} == {
        key: value for key, value in eval_report.items() if key != "robust"}
    # --shift adds eval.json's shift (the other site, the corruptions, the large test split) and keeps the rest.
    shifted = _run(["launch/eval.py", f"--workdir={workdir}", "--shift"], REPO, cache_dir)
    with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as handle:
        with_shift = json.load(handle)
    assert {"clean", "corruptions", "corruption_mean", "site", "large_test"} <= set(with_shift["shift"])
    assert with_shift["shift"]["clean"]["per_class_accuracy"] == with_curve["per_class_accuracy"]
    assert {key: value for key, value in with_shift.items() if key != "shift"} == with_curve
    assert "site B scanners" in shifted.stdout
    bad = subprocess.run([sys.executable, "launch/eval.py", f"--workdir={workdir}", "--epsilons=two"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--epsilons=two" in bad.stderr.strip().splitlines()[-1]
