"""Evaluate a trained run (flax_fld/runs/evaluate_checkpoint.py).

  python launch/eval.py --workdir=DIR [--which=best|latest] [--split=test] [--robust=pgd|strong [--strong_epsilon=2]]
  python launch/eval.py --workdir=DIR --epsilons=1,2,4,8   # robust accuracy against the radius
  python launch/eval.py --workdir=DIR --shift               # accuracy under scanner shift, per class

Evaluates clean and PGD-CE robust per-class accuracy (with 95 % intervals) and the calibration of the clean
probabilities (ECE before and after temperature scaling) over every example of the split, writes DIR/eval.json
(and DIR/plots/confusion_matrix.png, DIR/plots/reliability_diagram.png) and prints the paper-style table. ``--robust=strong`` adds eval.json's
``strong_robust``: per-class accuracy under random-sign noise, PGD-20, an APGD-style attack and their
per-example worst case, with sanity checks (flax_fld/robustness/robust_eval.py; budget in ``adv.strong_*``).
``--epsilons`` instead adds PGD-CE at each listed radius (in 1/255) to the ``robust`` entries of the existing
eval.json, under the configured threat model, leaving its other fields as they are. ``--shift`` adds eval.json's
``shift`` the same way: the test split under ten ultrasound corruptions at five severities and, for simulator
version 2, imaged by the other site's scanners (flax_fld/robustness/shift_eval.py).
"""

import functools
import sys
from collections.abc import Sequence

from absl import app, flags

from flax_fld.reporting import tables
from flax_fld.runs import cli, evaluate_checkpoint

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by launch/train.py.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint slot (best falls back to latest).")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_ROBUST = flags.DEFINE_enum("robust", "pgd", ["pgd", "strong"],
                            "pgd: PGD-CE under both threat models (eval.json 'robust'). strong: also the worst case "
                            "of PGD-20 and a stronger attack, with sanity checks (eval.json 'strong_robust').")
_STRONG_EPSILON = flags.DEFINE_float("strong_epsilon", None, "With --robust=strong: the radius in 1/255 units "
                                     "(default: the run's adv.eval_epsilon), PGD step a quarter of it.")
_EPSILONS = flags.DEFINE_list("epsilons", [], "Radii in 1/255 units, e.g. 1,2,4,8: add PGD-CE at each to eval.json.")
_SHIFT = flags.DEFINE_bool("shift", False, "Add the test split under scanner shift to eval.json ('shift').")
flags.mark_flag_as_required("workdir")


def _radii(values: Sequence[str]) -> list[float]:
    try:
        radii = [float(value) / 255 for value in values]
    except ValueError:
        raise app.UsageError(f"--epsilons={','.join(values)}: expected numbers in 1/255 units, e.g. 1,2,4,8")
    if not all(0 < radius <= 1 for radius in radii):
        raise app.UsageError(f"--epsilons={','.join(values)}: each radius must lie in (0, 255]")
    return radii


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _STRONG_EPSILON.value is not None and _ROBUST.value != "strong":
        raise app.UsageError(f"--strong_epsilon={_STRONG_EPSILON.value:g} needs --robust=strong")
    if _SHIFT.value:
        try:
            report = evaluate_checkpoint.add_shift(_WORKDIR.value, which=_WHICH.value,
                                                   log=functools.partial(print, flush=True))
            evaluate_checkpoint.write_report_json(_WORKDIR.value, report)
        except ValueError as error:
            sys.exit(f"error: {error}")
        print(tables.format_shift(report["shift"], report.get("method", "model")))
        return
    if _EPSILONS.value:
        radii = _radii(_EPSILONS.value)
        try:
            report = evaluate_checkpoint.add_robust_curve(_WORKDIR.value, radii, which=_WHICH.value,
                                                          split=_SPLIT.value, log=functools.partial(print, flush=True))
            evaluate_checkpoint.write_report_json(_WORKDIR.value, report)
        except ValueError as error:
            sys.exit(f"error: {error}")
        return
    try:
        report, config = evaluate_checkpoint.evaluate_checkpoint(
            _WORKDIR.value, which=_WHICH.value, split=_SPLIT.value, strong=_ROBUST.value == "strong",
            strong_epsilon=None if _STRONG_EPSILON.value is None else _radii([str(_STRONG_EPSILON.value)])[0],
            log=functools.partial(print, flush=True))
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(evaluate_checkpoint.write_evaluation(_WORKDIR.value, report, config))


if __name__ == "__main__":
    cli.run_main(main)
