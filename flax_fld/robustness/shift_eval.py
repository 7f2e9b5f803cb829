"""Accuracy under scanner shift, per class: another site's scanners, and ultrasound corruptions.

The robustness a clinician asks about is to another scanner, preset or operator. ``evaluate_shift`` reports,
for a trained model and its test split:

- ``site``: the same test patients imaged by the other site's scanners (simulator version 2 only: a model
  trained at site A is tested at site B, whose frequencies and TGC presets it never saw; absent otherwise);
- ``corruptions``: every corruption of ``corruptions.CORRUPTIONS`` at severities 1-5 on the test split;
- ``corruption_mean``: per-class accuracy and Average averaged over all corruptions and severities, and the
  Best-Worst of those averaged per-class accuracies;
- ``clean``: the uncorrupted test split through the same path, and each entry's ``drop`` from it (points of
  Average; positive = worse under shift);
- ``large_test`` (simulator only, not a shift): ten times as many new test patients from the same site and
  simulator, in the same grade proportions, with 95 % intervals: it narrows the test-sampling part of an
  interval that the 264-image split leaves wide.

Evaluators only compute: the caller writes the report (eval.json's ``shift``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from flax_fld.data import input_pipeline
from flax_fld.evaluation import evaluate, metrics
from flax_fld.models import fld
from flax_fld.robustness import corruptions

OTHER_SITE = {"A": "B", "B": "A"}
SUMMARY_FIELDS = ("per_class_accuracy", "average", "best_worst", "balanced_accuracy", "worst_class", "num_examples")
INTERVAL_FIELDS = ("per_class_interval", "average_interval", "best_worst_interval")
LARGE_TEST_MULTIPLIER = 10


def _summary(logits: np.ndarray, labels: np.ndarray, class_names, fields=SUMMARY_FIELDS) -> dict:
    confusion = np.zeros((len(class_names), len(class_names)), np.int64)
    np.add.at(confusion, (labels, np.argmax(logits, axis=-1)), 1)
    report = metrics.class_report(confusion, list(class_names))
    return {key: report[key] for key in fields}


def large_test_split(data_config: ml_collections.ConfigDict, multiplier: int = LARGE_TEST_MULTIPLIER):
    """(images float32 [M, H, W, C], labels int [M]) of ``multiplier`` x the test split's size in new simulated
    patients (ids after the data set's), grade proportions as the data set's; None for other data sources.

    Pixels are quantised to 8 bits as the prepared data set's are."""
    if data_config.get("name") != "synthetic_fatty_liver":
        return None
    from flax_fld.data.datasets import simulator, synthetic_fatty_liver

    config = synthetic_fatty_liver.builder_config(data_config)
    test_size = len(simulator.split_plan(config.num_examples, config.seed)["test"])
    images, labels, example_id = [], [], config.num_examples
    for grade, count in simulator.grade_counts(multiplier * test_size).items():
        for _ in range(count):
            scan = synthetic_fatty_liver.simulate(config, example_id, grade)
            example_id += 1
            pixels = np.round(scan.image * 255.0) / 255.0
            images.append(np.repeat(pixels[..., None], config.channels, axis=-1).astype(np.float32))
            labels.append(config.class_names.index(grade))
    return np.stack(images), np.asarray(labels)


def shifted_site_config(data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """config.data of the same simulated patients at the other site; None when the data has no sites."""
    if data_config.name != "synthetic_fatty_liver" or int(data_config.get("simulator_version", 1)) != 2:
        return None
    site = str(data_config.get("simulator_site", "all"))
    if site not in OTHER_SITE:
        return None
    other = ml_collections.ConfigDict(data_config.to_dict())
    other.simulator_site = OTHER_SITE[site]
    return other


def mean_over_corruptions(reports: dict[str, dict[str, dict]], class_names) -> dict:
    """Per-class accuracy and Average averaged over every corruption and severity; Best-Worst of the averages."""
    entries = [report for by_severity in reports.values() for report in by_severity.values()]
    per_class = {name: float(np.mean([entry["per_class_accuracy"][name] for entry in entries])) for name in class_names}
    values = list(per_class.values())
    return {"per_class_accuracy": per_class, "average": float(np.mean([entry["average"] for entry in entries])),
            "best_worst": float(max(values) - min(values)), "num_evaluations": len(entries)}


def evaluate_shift(model: fld.FLDModel, variables: dict, config: ml_collections.ConfigDict,
                   data: input_pipeline.DataSource, *, data_dir: str,
                   log: Callable[[str], Any] = lambda line: None) -> dict:
    """The report of the module docstring for the test split of ``data`` (and, where it exists, the other site)."""
    batch_size = int(config.train.eval_batch_size)
    class_names = data.info.class_names
    images, labels = input_pipeline.load_split(data, "test")
    clean = _summary(evaluate.array_logits(model, variables, images, batch_size), labels, class_names)
    report: dict[str, Any] = {"clean": clean, "corruptions": {}}
    for name in sorted(corruptions.CORRUPTIONS):
        report["corruptions"][name] = {}
        for severity in corruptions.SEVERITIES:
            corrupted = corruptions.corrupt(images, name, severity, seed=int(config.seed))
            entry = _summary(evaluate.array_logits(model, variables, corrupted, batch_size), labels, class_names)
            entry["drop"] = clean["average"] - entry["average"]
            report["corruptions"][name][str(severity)] = entry
        log(f"shift, {name}: average " + ", ".join(
            f"{report['corruptions'][name][str(s)]['average']:.1f}%" for s in corruptions.SEVERITIES) + " (severity 1-5)")
    mean = mean_over_corruptions(report["corruptions"], class_names)
    mean["drop"] = clean["average"] - mean["average"]
    report["corruption_mean"] = mean
    other = shifted_site_config(config.data)
    if other is not None:
        site_data = input_pipeline.prepare_data_source(other, data_dir)
        site_images, site_labels = input_pipeline.load_split(site_data, "test")
        site = _summary(evaluate.array_logits(model, variables, site_images, batch_size), site_labels, class_names)
        site["site"] = other.simulator_site
        site["drop"] = clean["average"] - site["average"]
        report["site"] = site
        log(f"shift, site {other.simulator_site}: average {site['average']:.2f}% (clean {clean['average']:.2f}%)")
    large = large_test_split(config.data)
    if large is not None:
        report["large_test"] = _summary(evaluate.array_logits(model, variables, large[0], batch_size), large[1],
                                        class_names, SUMMARY_FIELDS + INTERVAL_FIELDS)
        interval = report["large_test"]["average_interval"]
        log(f"large test split ({len(large[1])} new patients): average {report['large_test']['average']:.2f}% "
            f"[{interval[0]:.1f}, {interval[1]:.1f}]")
    return report
