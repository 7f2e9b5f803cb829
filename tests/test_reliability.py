"""Calibration of the softmax probabilities (flax_fld/evaluation/reliability.py): ECE overall and per class against
hand-computed values, temperature scaling recovering a known temperature, the summary and the diagram."""

import numpy as np
import pytest

from flax_fld.evaluation import reliability
from flax_fld.reporting import plots


def _repeat(rows_and_labels):
    """(probabilities [N, K], labels [N]) from ``[(row, label, times), ...]``."""
    probabilities = np.asarray([row for row, _, times in rows_and_labels for _ in range(times)], np.float64)
    labels = np.asarray([label for _, label, times in rows_and_labels for _ in range(times)])
    return probabilities, labels


def test_ece_is_zero_when_confidence_matches_accuracy_in_every_bin():
    # 70 % confident and right 7 times in 10; 90 % confident and right 9 times in 10.
    probabilities, labels = _repeat([([0.7, 0.3], 0, 7), ([0.7, 0.3], 1, 3),
                                     ([0.1, 0.9], 1, 9), ([0.1, 0.9], 0, 1)])
    assert reliability.expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(reliability.per_class_expected_calibration_error(probabilities, labels), 0.0,
                               atol=1e-12)


def test_ece_of_a_hand_made_case():
    # Bin of 0.9: right 1 of 2 -> |0.5 - 0.9| = 0.4; bin of 0.65: right 2 of 2 -> |1 - 0.65| = 0.35.
    # ECE = 2/4 * 0.4 + 2/4 * 0.35 = 0.375 (one bin for all four would give |0.75 - 0.775| = 0.025).
    probabilities, labels = _repeat([([0.9, 0.1], 0, 1), ([0.9, 0.1], 1, 1), ([0.65, 0.35], 0, 2)])
    assert reliability.expected_calibration_error(probabilities, labels) == pytest.approx(0.375)
    # With two classes one-vs-rest is the same for both classes and equals the top-label figure here.
    np.testing.assert_allclose(reliability.per_class_expected_calibration_error(probabilities, labels),
                               [0.375, 0.375])


def test_per_class_ece_is_one_vs_rest_not_top_label():
    # Top label: 50 % confident, right 1 of 2 -> 0. Class 1: p = 0.3, frequency 1/2 -> 0.2; class 2: p = 0.2,
    # frequency 0 -> 0.2; class 0: p = 0.5, frequency 1/2 -> 0.
    probabilities, labels = _repeat([([0.5, 0.3, 0.2], 0, 1), ([0.5, 0.3, 0.2], 1, 1)])
    assert reliability.expected_calibration_error(probabilities, labels) == pytest.approx(0.0)
    np.testing.assert_allclose(reliability.per_class_expected_calibration_error(probabilities, labels),
                               [0.0, 0.2, 0.2], atol=1e-12)


def test_binned_puts_each_score_in_its_equal_width_bin_and_empty_bins_are_zero():
    bins = reliability.binned([0.0, 0.05, 0.5, 0.99, 1.0], [1, 0, 1, 1, 0], num_bins=10)
    assert bins["count"] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert bins["confidence"][0] == pytest.approx(0.025) and bins["accuracy"][0] == 0.5
    assert bins["confidence"][9] == pytest.approx(0.995) and bins["accuracy"][9] == 0.5
    assert bins["confidence"][1] == 0.0 and bins["accuracy"][1] == 0.0


def test_ece_rejects_mismatched_shapes_and_labels():
    with pytest.raises(ValueError, match="labels"):
        reliability.expected_calibration_error(np.full((3, 2), 0.5), np.asarray([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        reliability.expected_calibration_error(np.full((2, 2), 0.5), np.asarray([0, 2]))


def _synthetic(seed=0, count=2000, classes=4):
    """True logits [N, K] and labels drawn from their softmax: the true logits are calibrated."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.normal(size=(count, classes))
    cumulative = reliability.softmax(logits).cumsum(axis=1)
    labels = (rng.random((count, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_temperature_fit_recovers_a_known_temperature(true_temperature):
    logits, labels = _synthetic()
    # The model reports logits / T0 (over-confident for T0 < 1); dividing by the fitted T should undo it.
    reported = logits / true_temperature
    fitted = reliability.fit_temperature(reported, labels)
    assert fitted == pytest.approx(1.0 / true_temperature, rel=0.1)
    before = reliability.expected_calibration_error(reliability.softmax(reported), labels)
    after = reliability.expected_calibration_error(reliability.softmax(reported / fitted), labels)
    assert after < before and after < 0.05
    assert reliability.fit_temperature(reported, labels) == fitted  # deterministic


def test_temperature_fit_keeps_calibrated_logits_near_one_and_minimises_nll():
    logits, labels = _synthetic(seed=1)
    fitted = reliability.fit_temperature(logits, labels)
    assert fitted == pytest.approx(1.0, rel=0.1)
    best = reliability.negative_log_likelihood(logits, labels, fitted)
    for other in (fitted * 0.8, fitted * 1.25):
        assert best < reliability.negative_log_likelihood(logits, labels, other)


def test_negative_log_likelihood_of_a_hand_made_case():
    logits = np.asarray([[0.0, 0.0], [np.log(3.0), 0.0]])
    # -log(1/2) and -log(3/4), averaged; at T = 2 the second row is softmax([log 3 / 2, 0]).
    assert reliability.negative_log_likelihood(logits, [0, 0]) == pytest.approx((np.log(2) + np.log(4 / 3)) / 2)
    second = np.sqrt(3.0) / (np.sqrt(3.0) + 1.0)
    assert reliability.negative_log_likelihood(logits, [0, 0], 2.0) == pytest.approx(
        (np.log(2) - np.log(second)) / 2)


def test_summary_fields_with_and_without_temperature(tmp_path):
    logits, labels = _synthetic(count=600)
    validation_logits, validation_labels = _synthetic(seed=2, count=600)
    names = ["normal", "mild", "moderate", "severe"]
    summary = reliability.calibration_summary(logits / 0.5, labels, names, validation_logits=validation_logits / 0.5,
                                              validation_labels=validation_labels)
    assert list(summary["per_class_ece"]) == names and summary["num_bins"] == 15
    assert sum(summary["bins"]["count"]) == 600
    assert summary["temperature"] == pytest.approx(2.0, rel=0.15)
    assert summary["ece_after_temperature"] < summary["ece"]
    path = plots.plot_reliability_diagram(summary, str(tmp_path / "plots" / "reliability_diagram.png"))
    assert (tmp_path / "plots" / "reliability_diagram.png").stat().st_size > 0 and path.endswith(".png")

    plain = reliability.calibration_summary(logits, labels, names)
    assert plain["temperature"] is None and plain["ece_after_temperature"] is None
    assert plain["ece"] == pytest.approx(reliability.expected_calibration_error(reliability.softmax(logits), labels))
    plots.plot_reliability_diagram(plain, str(tmp_path / "plain.png"))
    with pytest.raises(ValueError, match="class names"):
        reliability.calibration_summary(logits, labels, names[:3])
