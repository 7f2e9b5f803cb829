"""Tests for flax_fld/runs/ablation.py: run variants, resumability and the Table 2 mean ± std layout.

Training is replaced by a fake ``train_fn`` that writes an eval.json whose numbers depend on the run's
config, so the table arithmetic can be checked by hand; the real training path is covered by train's tests.
"""

import json
import os

import ml_collections
import numpy as np
import pytest

from flax_fld.evaluation import across_seeds, metrics
from flax_fld.reporting import tables
from flax_fld.runs import ablation
from flax_fld.runtime.config_files import load_config

CLASS_NAMES = ("normal", "mild", "moderate", "severe")


def _config(seeds=(0, 1), rows=("baseline", "icfdnet", "icfdnet_at")):
    config = ml_collections.ConfigDict()
    config.seed = 123
    config.data = ml_collections.ConfigDict({"data_dir": "", "class_names": CLASS_NAMES})
    config.model = ml_collections.ConfigDict({"classifier": "resnet18", "use_decouplers": True})
    config.adv = ml_collections.ConfigDict({"enabled": True})
    config.ablation = ml_collections.ConfigDict(
        {"backbones": ("squeezenet1_1", "resnet18"), "seeds": seeds, "rows": rows, "linear_floor": False,
         "texture_floor": False})
    return config


def _fake_train(calls):
    """A train_fn whose per-class correct counts depend on (decouplers, adv, seed); writes eval.json."""

    def train_fn(config, workdir):
        calls.append((config.model.classifier, config.model.use_decouplers, config.adv.enabled, config.seed,
                      config.data.data_dir, "ablation" in config))
        bonus = 5 * int(config.model.use_decouplers) + 5 * int(config.adv.enabled) + config.seed
        confusion = np.diag([40 + bonus, 30 + bonus, 20 + bonus, 50]) + 10 - np.diag([10] * 4)
        report = metrics.class_report(confusion, CLASS_NAMES)
        report["robust"] = {"pgd_ce": metrics.class_report(np.eye(4, dtype=int) * 10 + 1, CLASS_NAMES)}
        report["class_names"] = list(CLASS_NAMES)
        report["epoch"] = 7 + config.seed
        report["last_epoch"] = 8  # seed 1's best epoch is its last: still improving
        report["collapsed"] = config.model.classifier == "resnet18" and not config.model.use_decouplers
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "eval.json"), "w") as handle:
            json.dump(report, handle)
        return report

    return train_fn


def test_rows_switch_decouplers_and_attack_and_share_one_data_dir(tmp_path):
    calls = []
    ablation.run_ablation(_config(), str(tmp_path), train_fn=_fake_train(calls), log=lambda _: None)
    assert len(calls) == 2 * 3 * 2
    data_dirs = {call[4] for call in calls}
    assert data_dirs == {os.path.join(os.path.dirname(str(tmp_path)), "tfds_data")}
    assert not any(call[5] for call in calls)  # the ablation section is not passed to training
    squeeze = [call[:4] for call in calls if call[0] == "squeezenet1_1"]
    assert squeeze == [("squeezenet1_1", False, False, 0), ("squeezenet1_1", False, False, 1),
                       ("squeezenet1_1", True, False, 0), ("squeezenet1_1", True, False, 1),
                       ("squeezenet1_1", True, True, 0), ("squeezenet1_1", True, True, 1)]


def test_table_has_mean_and_std_per_cell_and_resumes_without_retraining(tmp_path):
    calls = []
    results = ablation.run_ablation(_config(), str(tmp_path), train_fn=_fake_train(calls), log=lambda _: None)
    markdown = (tmp_path / "ablation.md").read_text()
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    # Paper column order, whatever the label order.
    assert lines[0].startswith("| Method | Mild% | Moderate% | Severe% | Normal% | Average% | Best-Worst%")
    assert lines[0].endswith("| Epoch (per seed) |")
    full = next(line for line in lines if line.startswith("| SqueezeNet+ICFDNet+AT |"))
    # The mild cell is the mean ± sample std of the two seeds' reports.
    mild = [r["per_class_accuracy"]["mild"] for r in
            (json.load(open(tmp_path / "squeezenet1_1" / "icfdnet_at" / f"seed_{s}" / "eval.json"))
             for s in (0, 1))]
    assert f"| {np.mean(mild):.2f} ± {np.std(mild, ddof=1):.2f} |" in full
    assert "↑" in full and "**" in full  # best of its group, above its baseline
    assert full.endswith("| 7, 8* |")  # each seed's best epoch; * the run's last (still improving)
    baseline = next(line for line in lines if line.startswith("| SqueezeNet |"))
    assert "↑" not in baseline and "↓" not in baseline
    assert "collapsed" not in baseline
    assert next(line for line in lines if line.startswith("| ResNet (collapsed to one class in 2 run(s)) |"))
    assert len(lines) == 2 + 2 * 3
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["method"] for r in saved["results"]] == [r["method"] for r in results]
    assert saved["results"][0]["summary"]["average"]["n"] == 2

    # A second invocation reuses every eval.json and trains nothing.
    again = []
    ablation.run_ablation(_config(), str(tmp_path), train_fn=_fake_train(again), log=lambda _: None)
    assert again == []
    assert (tmp_path / "ablation.md").read_text().split("Each cell")[1] == markdown.split("Each cell")[1]


def test_aggregate_uses_sample_std_and_single_seed_prints_plain_mean():
    reports = [metrics.class_report(np.diag([n, 10, 10, 10]) + 0, CLASS_NAMES) for n in (10, 10)]
    summary = across_seeds.aggregate_reports(reports)
    assert summary["average"] == {"mean": 100.0, "std": 0.0, "n": 2}
    one = across_seeds.aggregate_reports(reports[:1])
    assert tables._cell(one["average"]) == "100.00"
    assert tables._cell({"mean": 76.5, "std": 1.234, "n": 3}) == "76.50 ± 1.23"


@pytest.mark.parametrize("section, message", [
    ({"backbones": (), "seeds": 1}, "backbones is empty"),
    ({"backbones": ("resnet18",), "seeds": ()}, "seeds is empty"),
    ({"backbones": ("resnet18",), "seeds": 1, "rows": ("baseline", "at_only")}, r"unknown rows \['at_only'\]"),
])
def test_bad_ablation_section_is_refused_with_the_key(section, message):
    config = _config()
    config.ablation = ml_collections.ConfigDict(section)
    with pytest.raises(ValueError, match=message):
        ablation.ablation_settings(config)


def test_integer_seed_count_means_range():
    config = _config(seeds=3)
    assert ablation.ablation_settings(config)[1] == (0, 1, 2)


def test_the_two_floors_are_the_first_rows_and_are_reused(tmp_path):
    config = load_config("tiny")
    config.ablation = ml_collections.ConfigDict(
        {"backbones": ("squeezenet1_1",), "seeds": 1, "rows": ("baseline",), "linear_floor": True})
    config.data.data_dir = str(tmp_path / "tfds")
    logged = []
    results = ablation.run_ablation(config, str(tmp_path), train_fn=_fake_train([]), log=logged.append)
    assert [r["method"] for r in results[:2]] == [ablation.LINEAR_METHOD, ablation.TEXTURE_METHOD]
    for kind in ("linear", "texture"):
        floor = json.loads((tmp_path / kind / "eval.json").read_text())
        assert floor["l2"] in (1e-4, 1e-3, 1e-2, 1e-1) and floor["split"] == "test"
    lines = [line for line in (tmp_path / "ablation.md").read_text().splitlines() if line.startswith("| ")]
    assert lines[2].startswith(f"| {ablation.LINEAR_METHOD} |")
    assert lines[3].startswith(f"| {ablation.TEXTURE_METHOD} |")
    ablation.run_ablation(config, str(tmp_path), train_fn=_fake_train([]), log=logged.append)
    assert any("reusing" in line and "texture" in line for line in logged)
    config.ablation.texture_floor = False
    results = ablation.run_ablation(config, str(tmp_path), train_fn=_fake_train([]), log=logged.append)
    assert ablation.TEXTURE_METHOD not in [r["method"] for r in results]


def test_progress_counts_the_whole_ablation_and_estimates_from_the_trained_runs(tmp_path):
    config = _config(seeds=(0, 1), rows=("baseline",))  # 2 backbones x 1 row x 2 seeds = 4 runs
    # One run finished earlier: it is reused, counted in "done", and neither in the mean nor in what is left.
    _fake_train([])(ablation.variant_config(config, "squeezenet1_1", "baseline", 0, ""),
                    ablation.run_directory(str(tmp_path), "squeezenet1_1", "baseline", 0))
    now, durations = [1000.0], iter([60.0, 180.0, 30.0])
    fake = _fake_train([])

    def timed_train(variant, workdir):
        now[0] += next(durations)
        return fake(variant, workdir)

    logged = []
    ablation.run_ablation(config, str(tmp_path), train_fn=timed_train, log=logged.append, clock=lambda: now[0])
    assert logged[0].startswith("[1/4] SqueezeNet seed 0: reusing")
    assert logged[1].startswith("[2/4] SqueezeNet seed 1: training in")
    assert logged[1].endswith("| 0.0s elapsed, ETA unknown until the first run finishes")
    # The fake's seed 1 kept its last epoch, which the line says.
    assert logged[2] == ("[2/4] SqueezeNet seed 1: finished in 1m00s (best epoch was the last: still improving) | "
                         "1m00s elapsed, ETA 2m00s (1m00s per run, 2 runs left)")
    assert logged[3].endswith("| 1m00s elapsed, ETA 2m00s (1m00s per run, 2 runs left)")
    # Mean of 60 s and 180 s = 2 minutes per run, one run left.
    assert logged[4] == "[3/4] ResNet seed 0: finished in 3m00s | 4m00s elapsed, ETA 2m00s (2m00s per run, 1 run left)"
    assert logged[6] == ("[4/4] ResNet seed 1: finished in 30s (best epoch was the last: still improving) | "
                         "4m30s elapsed, no runs left")
    assert len(logged) == 7


def _robust_report(averages: dict) -> dict:
    """An eval.json-like report whose end-to-end PGD entries have the given Averages ({radius: average})."""
    report = {"average": 80.0, "best_worst": 10.0, "robust": {}}
    for radius, average in averages.items():
        report["robust"][f"pgd5_linf_{radius:g}/255"] = {"average": average, "best_worst": 0.0}
        report["robust"][f"pgd5_linf_{radius:g}/255 fixed-features"] = {"average": 99.0, "best_worst": 0.0}
    return report


def test_robust_curves_take_the_end_to_end_entries_and_write_a_table_and_plot(tmp_path):
    reports = [_robust_report({1: 60.0, 2: 40.0, 8: 0.0}), _robust_report({1: 50.0, 2: 30.0, 8: 0.0})]
    results = [{"backbone": "squeezenet1_1", "row": "icfdnet_at", "method": "SqueezeNet+ICFDNet+AT",
                "class_names": [], "summary": across_seeds.aggregate_reports(
                    [dict(r, per_class_accuracy={"a": 1.0}, balanced_accuracy=1.0) for r in reports])},
               {"backbone": "squeezenet1_1", "row": "icfdnet", "method": "SqueezeNet+ICFDNet", "class_names": [],
                "summary": across_seeds.aggregate_reports([dict(_robust_report({8: 0.0}), per_class_accuracy={"a": 1.0},
                                                            balanced_accuracy=1.0)])}]
    curves = ablation.robust_curves(results)
    assert list(curves) == ["SqueezeNet+ICFDNet+AT"]  # a single radius is no curve
    assert list(curves["SqueezeNet+ICFDNet+AT"]) == [1.0, 2.0, 8.0]  # fixed-features entries are not on it
    assert curves["SqueezeNet+ICFDNet+AT"][1.0]["mean"] == 55.0
    table = tables.format_robust_curve_table(curves)
    assert "| SqueezeNet+ICFDNet+AT | 55.00 ± 7.07 | 35.00 ± 7.07 | 0.00 ± 0.00 |" in table
    ablation.write_outputs(str(tmp_path), results, (0, 1), "cmd")
    assert os.path.getsize(tmp_path / "robust_curves.png") > 1000
    assert "1/255 | 2/255 | 8/255" in (tmp_path / "ablation.md").read_text()


def test_paired_difference_is_the_mean_of_per_seed_differences_with_a_t_interval():
    first = {"0": 70.0, "1": 80.0, "2": 75.0, "3": 1.0}  # seed 3 has no partner and is ignored
    second = {"0": 72.0, "1": 83.0, "2": 76.0}
    result = across_seeds.paired_difference(first, second)
    assert result["n"] == 3 and result["seeds"] == ["0", "1", "2"]
    assert result["mean"] == pytest.approx(2.0)
    # differences 2, 3, 1: std 1, t(0.975, df=2) = 4.3027
    assert result["high"] - result["mean"] == pytest.approx(4.3027 / np.sqrt(3), rel=1e-4)
    assert np.isnan(across_seeds.paired_difference({"0": 1.0}, {"0": 2.0})["low"])
    with pytest.raises(ValueError, match="share no seed"):
        across_seeds.paired_difference({"0": 1.0}, {"1": 2.0})


def test_paired_comparison_reads_row_directories(tmp_path):
    for row, shift in (("icfdnet", 0.0), ("icfdnet_at", 5.0)):
        for seed in range(2):
            report = _robust_report({8: shift + seed})
            report["average"] += shift + seed
            os.makedirs(tmp_path / row / f"seed_{seed}")
            (tmp_path / row / f"seed_{seed}" / "eval.json").write_text(json.dumps(report))
    first, second = (ablation.row_reports(str(tmp_path / row)) for row in ("icfdnet", "icfdnet_at"))
    table = tables.format_paired_comparison(first, second)
    assert "| average | 80.50 | 85.50 | +5.00 [+5.00, +5.00] | 0, 1 |" in table
    assert "| robust:pgd5_linf_8/255 | 0.50 | 5.50 | +5.00" in table
    with pytest.raises(ValueError, match="no seed_<s>/eval.json"):
        ablation.row_reports(str(tmp_path / "missing"))


def _variant_row(root, row: str, averages: list[float], adversarial: bool, gaps: list[float]) -> str:
    """A row directory of seed_<s> runs with eval.json, config.json and metrics.jsonl (one AT epoch each)."""
    for seed, (average, gap) in enumerate(zip(averages, gaps)):
        run = root / row / f"seed_{seed}"
        os.makedirs(run)
        report = _robust_report({2: average / 2})
        report["average"], report["best_worst"] = average, 100.0 - average
        (run / "eval.json").write_text(json.dumps(report))
        (run / "config.json").write_text(json.dumps({"adv": {"enabled": adversarial}}))
        epochs = [{"kind": "epoch", "step": 1, "epoch": 1, "class_beta": [0.0] * 4, "train_clean_acc": 0.5, "train_adv_acc": 0.1},
                  {"kind": "epoch", "step": 2, "epoch": 2, "class_beta": [0.5] * 4, "train_clean_acc": 0.8,
                   "train_adv_acc": 0.8 - gap / 100}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in epochs))
    return str(root / row)


def test_variant_table_pairs_every_row_with_the_reference(tmp_path):
    reference = _variant_row(tmp_path, "icfdnet", [80.0, 70.0, 75.0], False, [0.0] * 3)
    variant = _variant_row(tmp_path, "icfdnet_at", [82.0, 73.0, 76.0], True, [4.0, 6.0, 5.0])
    assert np.isnan(ablation.adversarial_training_gap(os.path.join(reference, "seed_0")))
    # Only epochs with the TRADES term on count: epoch 1's 40-point gap (beta 0) is left out.
    assert ablation.adversarial_training_gap(os.path.join(variant, "seed_1")) == pytest.approx(6.0)
    lines = tables.format_variant_table(ablation.variant_rows(reference, [variant])).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith(f"| {reference} | 0, 1, 2 | 75.00 ± 5.00 | 25.00 ± 5.00 | – | – | – |")
    # Paired differences 2, 3, 1: mean 2, half-width t(0.975, 2) * 1 / sqrt(3) = 2.48.
    assert f"| {variant} | 0, 1, 2 | 77.00 ± 4.58 | 23.00 ± 4.58 | +2.00 [-0.48, +4.48] | -2.00 [-4.48, +0.48] | " \
           "5.00 ± 1.00 | pgd5_linf_2/255: 38.50 ± 2.29;" in lines[3]
