"""Evaluating a saved run (``launch/eval.py``): load a checkpoint, evaluate one split clean and under PGD-CE,
optionally under the strong attacks, write eval.json, and say how far it got with the time elapsed."""

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from flax_fld.progress import format_duration


def evaluate_checkpoint(workdir: str, *, which: str = "best", split: str = "test", strong: bool = False,
                        strong_epsilon: float | None = None, log: Callable[[str], Any] = print,
                        clock: Callable[[], float] = time.monotonic) -> tuple[dict, str]:
    """Evaluates WORKDIR's ``which`` checkpoint on ``split``; returns ``(report, text to print)``.

    The report (written to WORKDIR/eval.json, or eval_<split>.json) holds the clean per-class accuracy with
    95 % intervals, PGD-CE under both threat models (``robust``), ``calibration`` (ECE before and after a
    temperature fitted on the validation split, ``evaluate.calibration_report``) and, with ``strong``,
    ``strong_robust`` (flax_fld/robust_eval.py).
    ``strong_epsilon`` runs the strong attacks at that radius (PGD step a quarter of it) instead of the run's
    ``adv.eval_epsilon``: to compare rows trained at different radii at one radius.
    ``log`` gets a line per evaluated part (clean and each attack) with the time elapsed.
    ValueError: a missing or unreadable run directory or checkpoint.
    """
    from flax_fld import evaluate, input_pipeline, reporting, robust_eval, run_outputs, train

    started = clock()

    def elapsed() -> str:
        return f"{format_duration(clock() - started)} elapsed"

    config, model, variables, _ = train.load_for_inference(workdir, which=which)
    data = input_pipeline.prepare_data_source(config.data, input_pipeline.resolve_data_dir(config.data, workdir))
    log(f"loaded the {which} checkpoint of {workdir} | {elapsed()}")
    report = evaluate.evaluate_split(model, variables, config, data, split=split, robust=True,
                                     both_threat_models=True)
    log(f"{split} split, clean: average {report['average']:.2f}% over {report['num_examples']} examples "
        f"| {elapsed()}")
    for attack, robust in report["robust"].items():  # evaluated in the same pass as the clean accuracy
        log(f"{split} split, {attack}: average {robust['average']:.2f}% | {elapsed()}")
    report["calibration"] = evaluate.calibration_report(model, variables, config, data, split=split)
    log(f"{split} split, calibration: ECE {100 * report['calibration']['ece']:.2f}% | {elapsed()}")
    if strong:
        if strong_epsilon is not None:
            config.adv.eval_epsilon, config.adv.eval_step_size = float(strong_epsilon), float(strong_epsilon) / 4
        report["strong_robust"] = robust_eval.evaluate_strong(model, variables, config, data, split=split)
        averages = ", ".join(f"{name} {attack_report['average']:.2f}%"
                             for name, attack_report in report["strong_robust"]["attacks"].items())
        log(f"{split} split, strong attacks: {averages} | {elapsed()}")
    report["checkpoint"] = f"{which} checkpoint"
    report["method"] = reporting.method_name(config)
    _keep_earlier_entries(workdir, report)
    text = f"{split} split, {which} checkpoint:\n{run_outputs.write_report(workdir, report, config)}"
    if "strong_robust" in report:
        text += "\n" + robust_eval.format_strong(report["strong_robust"], report["method"])
    return report, text


def _keep_earlier_entries(workdir: str, report: dict) -> None:
    """Carries over from the existing report of the same checkpoint slot what this evaluation did not recompute
    (robust-curve radii, an earlier strong evaluation, the epoch training selected), so that re-evaluating
    never loses a result. The training run's report names its slot ``best checkpoint (epoch N)``."""
    path = os.path.join(workdir, "eval.json" if report["split"] == "test" else f"eval_{report['split']}.json")
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


def add_robust_curve(workdir: str, epsilons: Sequence[float], *, which: str = "best", split: str = "test",
                     log: Callable[[str], Any] = print) -> dict:
    """Adds PGD-CE at each radius of ``epsilons`` to the ``robust`` entries of WORKDIR's existing report.

    The report (eval.json, or eval_<split>.json) keeps every other field (the selected epoch, the strong
    evaluation); each radius is one entry named by ``evaluate.attack_name`` (``evaluate.robust_curve``).
    Returns the updated report. ValueError: no report yet, or a missing or unreadable checkpoint.
    """
    from flax_fld import evaluate, input_pipeline, train
    from flax_fld.atomic_files import write_json_atomically

    path = os.path.join(workdir, "eval.json" if split == "test" else f"eval_{split}.json")
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
    write_json_atomically(path, report)
    return report
