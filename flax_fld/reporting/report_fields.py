"""Report dicts (``evaluate.evaluate_split``'s, the fields of eval.json) shaped for people and for decisions.

Pure functions of host values: per-class lists, the paper-style table rows and row labels, the key that ranks
epochs for the best checkpoint, the metrics.jsonl validation fields, and the warnings a run prints.
"""

import ml_collections
import numpy as np

from flax_fld.reporting import names


def class_accuracies(report: dict) -> list[float]:
    """Per-class accuracies (percent) of a report in label order."""
    return [float(report["per_class_accuracy"][name]) for name in report["class_names"]]


def table_rows(report: dict, method: str) -> list[tuple[str, dict]]:
    """``tables.format_table`` rows: the clean report and one row per robust attack."""
    rows = [(method, report)]
    for name, robust_report in report.get("robust", {}).items():
        rows.append((f"{method} ({name})", robust_report))
    return rows


INTERVAL_NOTE = ("[low, high]: 95 % intervals (Wilson per class and for Average; for Best-Worst a conservative "
                 "bound that holds for all classes at once)")


def calibration_line(report: dict) -> str:
    """One line on eval.json's ``calibration`` (ECE in percent, before and after temperature); '' without it."""
    calibration = report.get("calibration")
    if not calibration:
        return ""
    line = (f"{report['split']} calibration: top-label ECE {100 * calibration['ece']:.2f} % "
            f"({calibration['num_bins']} bins)")
    if calibration.get("temperature") is not None:
        line += (f", {100 * calibration['ece_after_temperature']:.2f} % after temperature scaling "
                 f"(T = {calibration['temperature']:.3f}, fitted on {calibration['temperature_fitted_on']}; "
                 "accuracy unchanged)")
    return line


def selection_value(report: dict, best_metric: str) -> float:
    """The validation figure named by ``config.train.best_metric`` (higher is better) of a report."""
    source = report
    if best_metric.startswith("robust_"):
        if not report["robust"]:
            raise ValueError(f"config.train.best_metric={best_metric!r} needs config.train.validate_robust=True")
        source = next(iter(report["robust"].values()))
        best_metric = best_metric[len("robust_"):]
    if best_metric == "worst_class":
        return float(np.nanmin(list(source["per_class_accuracy"].values())))
    if best_metric in ("average", "balanced_accuracy"):
        return float(source[best_metric])
    raise ValueError(
        f"config.train.best_metric={best_metric!r}; expected average | balanced_accuracy | worst_class | "
        "robust_average | robust_worst_class"
    )


def selection_key(report: dict, best_metric: str) -> list[float]:
    """What ranks epochs for the best checkpoint: ``best_metric`` first, ties broken by the clean balanced
    accuracy, then the clean average (compare lists lexicographically; higher is better).

    Without the tie-breakers a figure that stays flat (a worst class at 0 % for every epoch of a short run)
    would keep the first epoch's model.
    """
    return [selection_value(report, best_metric), float(report["balanced_accuracy"]), float(report["average"])]


def collapse_warning(report: dict) -> str:
    """A line for the log when the clean predictions collapsed or a class is never recognised; else ''."""
    if report["collapsed"]:
        return (f"WARNING: the model predicts one class for every {report['split']} image (collapsed): it has "
                "learned only a class prior; this table does not measure the method")
    if report["classes_at_zero"]:
        return f"WARNING: no {report['split']} image of {', '.join(report['classes_at_zero'])} is recognised (0 %)"
    return ""


def unsettled_classes(class_curves: list[list[float]], class_names: list[str], last: int = 3) -> list[str]:
    """Classes whose validation accuracy is 0 in one of the last ``last`` epochs after >= 50 % in an earlier one
    of them.

    ``class_curves``: per epoch, the per-class validation accuracies in percent (``val_clean_class_acc`` of
    metrics.jsonl). A class that swings like that means the chosen epoch is luck, not a trained model.
    """
    window = np.asarray(class_curves[-last:], np.float64)
    if len(window) < 2:
        return []
    # Highest accuracy before each epoch of the window, so 60 -> 30 -> 0 counts as a fall, not only 60 -> 0.
    best_before = np.maximum.accumulate(window, axis=0)[:-1]
    falls = (best_before >= 50.0) & (window[1:] == 0.0)
    return [name for name, fell in zip(class_names, falls.any(axis=0)) if fell]


def validation_record(report: dict) -> dict:
    """The ``val_*`` fields of an ``epoch`` record of metrics.jsonl (per-class lists in percent)."""
    record = {
        "val_average": report["average"],
        "val_balanced_accuracy": report["balanced_accuracy"],
        "val_best_worst": report["best_worst"],
        "val_worst_class": float(np.nanmin(class_accuracies(report))),
        "val_collapsed": bool(report["collapsed"]),
        "val_clean_class_acc": class_accuracies(report),
    }
    for robust_report in report["robust"].values():
        robust_report = dict(robust_report, class_names=report["class_names"])
        record["val_robust_average"] = robust_report["average"]
        record["val_robust_worst_class"] = float(np.nanmin(class_accuracies(robust_report)))
        record["val_robust_class_acc"] = class_accuracies(robust_report)
    return record


def method_name(config: ml_collections.ConfigDict) -> str:
    """The paper's row label of a config, e.g. ``SqueezeNet+ICFDNet+AT`` (Tables 1 and 2)."""
    return names.method_name(config.model.classifier, config.model.use_decouplers, config.adv.enabled)
