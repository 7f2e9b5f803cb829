"""Evaluating a saved run (``launch/eval.py``): load a checkpoint, evaluate one split clean and under PGD-CE,
optionally under the strong attacks, and say how far it got with the time elapsed. The evaluations return the
report; ``write_evaluation`` and ``write_report_json`` are the writes, left to the caller."""

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from flax_fld.reporting import tables
from flax_fld.reporting.progress import BatchProgress, format_duration
from flax_fld.runtime.atomic_files import write_json_atomically


def evaluate_checkpoint(workdir: str, *, which: str = "best", split: str = "test", strong: bool = False,
                        strong_epsilon: float | None = None, log: Callable[[str], Any] = print,
                        clock: Callable[[], float] = time.monotonic) -> tuple[dict, ml_collections.ConfigDict]:
    """Evaluates WORKDIR's ``which`` checkpoint on ``split``; returns ``(report, the run's config)``.

    The report (for ``write_evaluation``) holds the clean per-class accuracy with
    95 % intervals, PGD-CE under both threat models (``robust``), ``calibration`` (ECE before and after a
    temperature fitted on the validation split, ``evaluate.calibration_report``) and, with ``strong``,
    ``strong_robust`` (flax_fld/robustness/robust_eval.py).
    ``strong_epsilon`` runs the strong attacks at that radius (PGD step a quarter of it) instead of the run's
    ``adv.eval_epsilon``: to compare rows trained at different radii at one radius.
    ``log`` gets a line per evaluated part (clean and each attack) with the time elapsed. What this evaluation
    did not recompute is carried over from the slot's earlier report (``_keep_earlier_entries``).
    ValueError: a missing or unreadable run directory or checkpoint.
    """
    from flax_fld.data import input_pipeline
    from flax_fld.evaluation import evaluate
    from flax_fld.reporting import report_fields
    from flax_fld.robustness import robust_eval
    from flax_fld.training import train

    started = clock()

    def elapsed() -> str:
        return f"{format_duration(clock() - started)} elapsed"

    config, model, variables, _ = train.load_for_inference(workdir, which=which)
    data = input_pipeline.prepare_data_source(config.data, input_pipeline.resolve_data_dir(config.data, workdir))
    log(f"loaded the {which} checkpoint of {workdir} | {elapsed()}")
    report = evaluate.evaluate_split(model, variables, config, data, split=split, robust=True,
                                     both_threat_models=True, on_batch=BatchProgress(log, f"{split} split", clock=clock))
    log(f"{split} split, clean: average {report['average']:.2f}% over {report['num_examples']} examples "
        f"| {elapsed()}")
    for attack, robust in report["robust"].items():  # evaluated in the same pass as the clean accuracy
        log(f"{split} split, {attack}: average {robust['average']:.2f}% | {elapsed()}")
    report["calibration"] = evaluate.calibration_report(model, variables, config, data, split=split)
    log(f"{split} split, calibration: ECE {100 * report['calibration']['ece']:.2f}% | {elapsed()}")
    if strong:
        if strong_epsilon is not None:
            config.adv.eval_epsilon, config.adv.eval_step_size = float(strong_epsilon), float(strong_epsilon) / 4
        strong_progress = BatchProgress(log, f"{split} split", every_seconds=0, clock=clock)  # a line per batch
        strong_progress("strong attacks", 0, 0)  # the pass starts now
        report["strong_robust"] = robust_eval.evaluate_strong(
            model, variables, config, data, split=split,
            on_batch=lambda done, total: strong_progress("strong attacks", done, total))
        averages = ", ".join(f"{name} {attack_report['average']:.2f}%"
                             for name, attack_report in report["strong_robust"]["attacks"].items())
        log(f"{split} split, strong attacks: {averages} | {elapsed()}")
    report["checkpoint"] = f"{which} checkpoint"
    report["method"] = report_fields.method_name(config)
    _keep_earlier_entries(workdir, report)
    return report, config


def write_evaluation(workdir: str, report: dict, config: ml_collections.ConfigDict) -> str:
    """Writes ``evaluate_checkpoint``'s report (eval.json or eval_<split>.json, the confusion matrix and the
    reliability diagram); returns the text to print: the paper-style table and the strong-attack table."""
    from flax_fld.reporting import run_outputs

    text = f"{report['split']} split, {report['checkpoint']}:\n{run_outputs.write_report(workdir, report, config)}"
    if "strong_robust" in report:
        text += "\n" + tables.format_strong(report["strong_robust"], report["method"])
    return text


def report_path(workdir: str, split: str) -> str:
    """WORKDIR/eval.json for the test split, WORKDIR/eval_<split>.json for another."""
    return os.path.join(workdir, "eval.json" if split == "test" else f"eval_{split}.json")


def write_report_json(workdir: str, report: dict) -> str:
    """Writes ``report`` (``add_robust_curve``'s) to its ``report_path``; returns the path."""
    path = report_path(workdir, report["split"])
    write_json_atomically(path, report)
    return path


def _keep_earlier_entries(workdir: str, report: dict) -> None:
    """Carries over from the existing report of the same checkpoint slot what this evaluation did not recompute
    (robust-curve radii, an earlier strong evaluation, the epoch training selected), so that re-evaluating
    never loses a result. The training run's report names its slot ``best checkpoint (epoch N)``."""
    path = report_path(workdir, report["split"])
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        earlier = json.load(handle)
    if str(earlier.get("checkpoint", "")).split(" (")[0] != report["checkpoint"]:
        return
    report["robust"] = {**earlier.get("robust", {}), **report.get("robust", {})}
    for key in ("strong_robust", "epoch", "last_epoch"):
        if key in earlier and key not in report:
            report[key] = earlier[key]


def add_shift(workdir: str, *, which: str = "best", log: Callable[[str], Any] = print) -> dict:
    """WORKDIR's existing eval.json with ``shift`` (``shift_eval.evaluate_shift``) added or replaced, for
    ``write_report_json``; every other field is kept. ValueError: no eval.json yet, or no checkpoint."""
    from flax_fld.data import input_pipeline
    from flax_fld.robustness import shift_eval
    from flax_fld.training import train

    path = report_path(workdir, "test")
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist: evaluate the run first (launch/eval.py without --shift)")
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    config, model, variables, _ = train.load_for_inference(workdir, which=which)
    data_dir = input_pipeline.resolve_data_dir(config.data, workdir)
    data = input_pipeline.prepare_data_source(config.data, data_dir)
    report["shift"] = shift_eval.evaluate_shift(model, variables, config, data, data_dir=data_dir, log=log)
    return report


def add_robust_curve(workdir: str, epsilons: Sequence[float], *, which: str = "best", split: str = "test",
                     log: Callable[[str], Any] = print) -> dict:
    """WORKDIR's existing report (eval.json, or eval_<split>.json) with PGD-CE at each radius of ``epsilons``
    added to its ``robust`` entries, for ``write_report_json``.

    Every other field is kept (the selected epoch, the strong evaluation); each radius is one entry named by
    ``evaluate.attack_name`` (``evaluate.robust_curve``). ValueError: no report yet, or a missing or unreadable
    checkpoint.
    """
    from flax_fld.data import input_pipeline
    from flax_fld.evaluation import evaluate
    from flax_fld.training import train

    path = report_path(workdir, split)
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist: evaluate the run first (launch/eval.py without --epsilons)")
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    config, model, variables, _ = train.load_for_inference(workdir, which=which)
    data = input_pipeline.prepare_data_source(config.data, input_pipeline.resolve_data_dir(config.data, workdir))
    started = time.monotonic()
    curve = evaluate.robust_curve(model, variables, config, data, split=split, epsilons=epsilons)
    for attack, attack_report in curve.items():
        log(f"{split} split, {attack}: average {attack_report['average']:.2f}% "
            f"| {format_duration(time.monotonic() - started)} elapsed")
    report["robust"] = {**report.get("robust", {}), **curve}
    return report
