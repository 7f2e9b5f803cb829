"""The procedural B-mode simulator: determinism, class proportions, splits and grade-dependent cues."""

import numpy as np
import pytest

from flax_fld.data.datasets import simulator


def test_same_seed_same_scan_and_different_ids_differ():
    first = simulator.simulate_example(3, 17, "mild", 32)
    again = simulator.simulate_example(3, 17, "mild", 32)
    other = simulator.simulate_example(3, 18, "mild", 32)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.tissue, again.tissue)
    assert first.fat_fraction == again.fat_fraction
    assert not np.array_equal(first.image, other.image)


@pytest.mark.parametrize("size", [16, 40])
def test_scan_is_a_sector_image_in_unit_range(size):
    scan = simulator.simulate_example(0, 1, "moderate", size)
    assert scan.image.shape == (size, size) and scan.image.dtype == np.float32
    assert scan.image.min() >= 0.0 and scan.image.max() <= 1.0
    outside = scan.tissue == simulator.OUTSIDE
    # Corners at the top lie outside the sector; everything outside is black.
    assert outside[0, 0] and outside[0, -1] and not outside[size // 2, size // 2]
    assert np.all(scan.image[outside] == 0.0)
    assert scan.image[~outside].mean() > 0.2


def test_fat_fraction_lies_in_grade_range():
    for grade, (low, high) in simulator.FAT_FRACTION_RANGES.items():
        fats = [simulator.simulate_example(0, i, grade, 16).fat_fraction for i in range(10)]
        assert all(low <= fat <= high for fat in fats), grade


def test_grade_counts_follow_paper_proportions():
    assert simulator.grade_counts(264) == simulator.PAPER_TEST_COUNTS
    assert simulator.grade_counts(1056) == {g: 4 * n for g, n in simulator.PAPER_TEST_COUNTS.items()}
    for total in (4, 37, 100, 1000):
        counts = simulator.grade_counts(total)
        assert sum(counts.values()) == total
        for grade, count in counts.items():
            assert abs(count - total * simulator.PAPER_TEST_COUNTS[grade] / 264) < 1.0
    with pytest.raises(ValueError, match="num_examples=3"):
        simulator.grade_counts(3)


def test_split_plan_is_a_stratified_partition():
    plan = simulator.split_plan(1056, seed=5)
    ids = [i for entries in plan.values() for i, _ in entries]
    assert sorted(ids) == list(range(1056))
    test_counts = {g: sum(1 for _, grade in plan["test"] if grade == g) for g in simulator.GRADES}
    assert test_counts == simulator.PAPER_TEST_COUNTS  # The paper's test split, exactly.
    assert len(plan["train"]) == pytest.approx(0.6 * 1056, abs=4)
    assert len(plan["validation"]) == pytest.approx(0.15 * 1056, abs=4)
    assert simulator.split_plan(1056, seed=5) == plan
    assert simulator.split_plan(1056, seed=6) != plan


def _grade_statistics(grade, num_scans=24, size=48):
    """Mean hepato-renal brightness ratio (same depth band) and liver depth slope over scans of a grade."""
    ratios, slopes = [], []
    for example_id in range(num_scans):
        scan = simulator.simulate_example(11, example_id, grade, size)
        liver, cortex = scan.tissue == simulator.LIVER, scan.tissue == simulator.KIDNEY_CORTEX
        rows = np.nonzero(cortex.any(axis=1))[0]
        band = np.zeros_like(liver)
        band[rows.min() : rows.max() + 1] = True
        ratios.append(scan.image[liver & band].mean() / scan.image[cortex].mean())
        depth = np.nonzero(liver)[0] / size
        slopes.append(np.polyfit(depth, scan.image[liver], 1)[0])
    return np.mean(ratios), np.mean(slopes)


def test_cues_change_monotonically_with_grade():
    ratios, slopes = zip(*(_grade_statistics(grade) for grade in simulator.GRADES))
    # Liver brighter than kidney cortex with fat; deep liver darker with fat (posterior attenuation).
    assert np.all(np.diff(ratios) > 0), ratios
    assert np.all(np.diff(slopes) < 0), slopes
