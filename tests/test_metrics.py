"""Tests for flax_fld.evaluation.metrics: confusion matrix (eager, jit, pmap), class report and table layout."""

import chex
import jax
import numpy as np
import pytest

from flax_fld.evaluation import metrics
from flax_fld.reporting import tables

CLASS_NAMES = ("normal", "mild", "moderate", "severe")


def _numpy_confusion(labels, preds, num_classes, mask):
    counts = np.zeros((num_classes, num_classes), np.int64)
    for label, pred, keep in zip(labels, preds, mask):
        if keep:
            counts[label, pred] += 1
    return counts


class ConfusionMatrixTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.labels = rng.integers(0, 4, size=50)
        self.preds = rng.integers(0, 4, size=50)
        self.mask = rng.uniform(size=50) < 0.7

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_loop(self):
        confusion = self.variant(metrics.confusion_matrix, static_argnums=2)(self.labels, self.preds, 4)
        np.testing.assert_array_equal(confusion, _numpy_confusion(self.labels, self.preds, 4, np.ones(50, bool)))
        self.assertEqual(confusion.dtype, np.int32)
        self.assertEqual(int(confusion.sum()), 50)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_drops_padding(self):
        # Padded examples often carry an arbitrary (even invalid) label; they must not count or raise.
        labels = np.where(self.mask, self.labels, -1)
        confusion = self.variant(metrics.confusion_matrix, static_argnums=2)(labels, self.preds, 4, self.mask)
        np.testing.assert_array_equal(confusion, _numpy_confusion(self.labels, self.preds, 4, self.mask))

    def test_pmap_with_psum(self):
        devices = jax.local_device_count()
        labels = self.labels[:48].reshape(devices, -1)
        preds = self.preds[:48].reshape(devices, -1)
        mask = self.mask[:48].reshape(devices, -1)
        summed = jax.pmap(
            lambda l, p, m: jax.lax.psum(metrics.confusion_matrix(l, p, 4, m), "devices"), axis_name="devices"
        )(labels, preds, mask)
        expected = _numpy_confusion(self.labels[:48], self.preds[:48], 4, self.mask[:48])
        for device_result in summed:
            np.testing.assert_array_equal(device_result, expected)

    def test_rejects_out_of_range_and_shape_mismatch(self):
        with pytest.raises(ValueError, match="outside"):
            metrics.confusion_matrix(np.array([0, 4]), np.array([0, 1]), 4)
        with pytest.raises(ValueError, match="differ in shape"):
            metrics.confusion_matrix(np.array([0, 1]), np.array([0]), 4)
        with pytest.raises(ValueError, match="mask"):
            metrics.confusion_matrix(np.array([0, 1]), np.array([0, 1]), 4, np.array([True]))


def _confusion_from_correct(correct, support):
    """A confusion matrix with the given diagonal; misses go to the next class."""
    confusion = np.zeros((len(support), len(support)), np.int64)
    for index, (hit, count) in enumerate(zip(correct, support)):
        confusion[index, index] = hit
        confusion[index, (index + 1) % len(support)] = count - hit
    return confusion


def test_class_report_summary_values():
    confusion = _confusion_from_correct([9, 5, 2, 1], [10, 10, 4, 1])
    report = metrics.class_report(confusion, CLASS_NAMES)
    assert report["per_class_accuracy"] == {"normal": 90.0, "mild": 50.0, "moderate": 50.0, "severe": 100.0}
    assert report["average"] == pytest.approx(100 * 17 / 25)  # sample-weighted
    assert report["balanced_accuracy"] == pytest.approx(72.5)  # unweighted over classes
    assert report["best_worst"] == 50.0
    assert (report["best_class"], report["worst_class"]) == ("severe", "mild")
    assert report["num_examples"] == 25
    assert report["confusion_matrix"] == confusion.tolist()


def test_best_worst_is_difference_of_rounded_percentages():
    # Table 1 "Ours": normal 66/69 = 95.652..., mild 69/90 = 76.666...; 95.65 - 76.67 = 18.98 (unrounded 18.99).
    report = metrics.class_report(_confusion_from_correct([66, 69, 51, 33], [69, 90, 66, 39]), CLASS_NAMES)
    assert 100 * (66 / 69 - 69 / 90) == pytest.approx(18.9855, abs=1e-4)
    assert report["best_worst"] == 18.98


def test_empty_class_is_nan_and_ignored():
    confusion = _confusion_from_correct([3, 0, 1, 4], [4, 0, 2, 4])
    report = metrics.class_report(confusion, CLASS_NAMES)
    assert np.isnan(report["per_class_accuracy"]["mild"])
    assert report["best_worst"] == 50.0
    assert report["balanced_accuracy"] == pytest.approx((75 + 50 + 100) / 3)


def test_class_report_rejects_bad_input():
    with pytest.raises(ValueError, match="class names"):
        metrics.class_report(np.eye(4, dtype=int), CLASS_NAMES[:3])
    with pytest.raises(ValueError, match=r"\[K, K\]"):
        metrics.class_report(np.ones((4, 3), int), CLASS_NAMES)


def _paper_reports():
    ours = metrics.class_report(_confusion_from_correct([66, 69, 51, 33], [69, 90, 66, 39]), CLASS_NAMES)
    squeeze = metrics.class_report(_confusion_from_correct([64, 72, 38, 27], [69, 90, 66, 39]), CLASS_NAMES)
    return ours, squeeze


def test_table_has_paper_column_order_and_marks():
    ours, squeeze = _paper_reports()
    lines = tables.format_table([("SqueezeNet", squeeze), ("Ours", ours)]).strip().split("\n")
    assert lines[0] == "| Method | Mild% | Moderate% | Severe% | Normal% | Best-Worst% | Average% |"
    assert len(lines) == 4
    assert lines[2] == "| SqueezeNet | 80.00 | *57.58* | 69.23 | *92.75* | 35.17 | 76.14 |"
    assert lines[3] == "| Ours | *76.67* | 77.27 | 84.62 | *95.65* | **18.98** | **82.95** |"


def test_table_keeps_the_order_of_other_class_names():
    report = metrics.class_report(_confusion_from_correct([1, 2], [2, 2]), ("benign", "malignant"))
    table = tables.format_table([("m", report)])
    assert table.startswith("| Method | Benign% | Malignant% | Best-Worst% | Average% |")
    assert "| m | *50.00* | *100.00* | **50.00** | **75.00** |" in table


def test_table_rejects_mixed_classes():
    ours, _ = _paper_reports()
    other = metrics.class_report(_confusion_from_correct([1, 2], [2, 2]), ("benign", "malignant"))
    with pytest.raises(ValueError, match="classes"):
        tables.format_table([("Ours", ours), ("other", other)])
    with pytest.raises(ValueError, match="no rows"):
        tables.format_table([])


@pytest.mark.parametrize("correct, total, low, high", [
    # Hand-computed from (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96.
    (0, 10, 0.0, 0.27754),  # z^2 / (n + z^2)
    (10, 10, 0.72246, 1.0),  # n / (n + z^2)
    (5, 10, 0.23659, 0.76341),
    (33, 39, 0.70270, 0.92753),  # Table 1's severe class, 84.62 %
])
def test_wilson_interval_hand_computed(correct, total, low, high):
    got_low, got_high = metrics.wilson_interval(correct, total)
    assert (float(got_low), float(got_high)) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_contains_the_estimate_and_is_nan_for_no_examples():
    total = np.repeat(np.arange(1, 40), np.arange(2, 41))
    correct = np.concatenate([np.arange(n + 1) for n in range(1, 40)])
    low, high = metrics.wilson_interval(correct, total)
    estimate = correct / total
    assert np.all((low <= estimate) & (estimate <= high)) and np.all((low >= 0) & (high <= 1))
    assert np.all(high - low > 0)  # never the zero width of the Wald interval at 0/n or n/n
    assert np.isnan(metrics.wilson_interval(0, 0)).all()
    with pytest.raises(ValueError, match="correct <= total"):
        metrics.wilson_interval(11, 10)


def test_best_worst_interval_is_the_bonferroni_wilson_bound():
    # Two classes: z = Phi^-1(1 - 0.05 / 4) = 2.2414, z^2 = 5.0239. 100/100 gives [100 / 105.0239, 1] and 0/100
    # gives [0, 5.0239 / 105.0239]: the gap lies in [95.2166 - 4.7835, 100] percent points.
    assert metrics.best_worst_interval([100, 0], [100, 100]) == pytest.approx((90.433, 100.0), abs=2e-3)
    # Four equal classes, 10/10 each: z = Phi^-1(1 - 0.05 / 8) = 2.4977, z^2 = 6.2385; the gap may be 0 and at
    # most 1 - 10 / 16.2385.
    assert metrics.best_worst_interval([10] * 4, [10] * 4) == pytest.approx((0.0, 38.418), abs=2e-3)
    assert metrics.best_worst_interval([3, 0], [4, 0]) == (0.0, 0.0)  # one class with examples: no gap
    assert np.isnan(metrics.best_worst_interval([0, 0], [0, 0])).all()


def test_class_report_intervals_in_percent_around_the_point_estimates():
    ours, _ = _paper_reports()
    assert ours["per_class_interval"]["severe"] == pytest.approx([70.270, 92.753], abs=1e-3)
    for name, (low, high) in ours["per_class_interval"].items():
        assert low < ours["per_class_accuracy"][name] < high
    low, high = ours["average_interval"]
    assert low < ours["average"] < high and high - low < 10  # 264 images: about +-4.5 points
    low, high = ours["best_worst_interval"]
    assert 0.0 <= low <= ours["best_worst"] <= high
    empty = metrics.class_report(_confusion_from_correct([3, 0, 1, 4], [4, 0, 2, 4]), CLASS_NAMES)
    assert np.isnan(empty["per_class_interval"]["mild"]).all()
    assert np.isfinite(empty["per_class_interval"]["normal"]).all()


def test_table_with_intervals_keeps_the_marks_and_adds_one_decimal_bounds():
    ours, squeeze = _paper_reports()
    lines = tables.format_table([("SqueezeNet", squeeze), ("Ours", ours)], intervals=True).strip().split("\n")
    assert lines[0] == "| Method | Mild% | Moderate% | Severe% | Normal% | Best-Worst% | Average% |"
    assert lines[3] == ("| Ours | *76.67* [66.9, 84.2] | 77.27 [65.8, 85.7] | 84.62 [70.3, 92.8] | "
                        "*95.65* [88.0, 98.5] | **18.98** [0.0, 36.5] | **82.95** [78.0, 87.0] |")
    # A report from before the interval fields (an old eval.json) prints without them.
    old = {key: value for key, value in ours.items() if not key.endswith("_interval")}
    assert tables.format_table([("Ours", old)], intervals=True) == tables.format_table([("Ours", ours)])
