"""Evaluate a trained run: ``python launch/eval.py --workdir=DIR [--which=best|latest] [--split=test]
[--robust=pgd|strong]``.

Loads the checkpoint, evaluates clean and PGD-CE robust per-class accuracy over every example of the split,
writes DIR/eval.json (and DIR/plots/confusion_matrix.png) and prints the paper-style table. ``--robust=strong``
adds eval.json's ``strong_robust``: per-class accuracy under random-sign noise, PGD-20, an APGD-style attack
and their per-example worst case, with sanity checks (flax_fld/robust_eval.py; budget in ``adv.strong_*``).
"""

import sys
from collections.abc import Sequence

from absl import app, flags, logging

from flax_fld import config_files

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by launch/train.py.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint slot (best falls back to latest).")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_ROBUST = flags.DEFINE_enum("robust", "pgd", ["pgd", "strong"],
                            "pgd: PGD-CE under both threat models (eval.json 'robust'). strong: also the worst case "
                            "of PGD-20 and a stronger attack, with sanity checks (eval.json 'strong_robust').")
flags.mark_flag_as_required("workdir")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Orbax and TFDS log every file operation at INFO; the progress lines are what a user wants to see.
    logging.set_verbosity(logging.WARNING)
    from flax_fld import evaluate, input_pipeline, reporting, robust_eval, run_outputs, train

    try:
        config, model, variables, _ = train.load_for_inference(_WORKDIR.value, which=_WHICH.value)
        data = input_pipeline.prepare_data_source(
            config.data, input_pipeline.resolve_data_dir(config.data, _WORKDIR.value))
        report = evaluate.evaluate_split(model, variables, config, data, split=_SPLIT.value, robust=True,
                                         both_threat_models=True)
        if _ROBUST.value == "strong":
            report["strong_robust"] = robust_eval.evaluate_strong(model, variables, config, data,
                                                                  split=_SPLIT.value)
    except ValueError as error:
        sys.exit(f"error: {error}")
    report["checkpoint"] = f"{_WHICH.value} checkpoint"
    report["method"] = reporting.method_name(config)
    table = run_outputs.write_report(_WORKDIR.value, report, config)
    print(f"{_SPLIT.value} split, {_WHICH.value} checkpoint:\n{table}")
    if "strong_robust" in report:
        print(robust_eval.format_strong(report["strong_robust"], report["method"]))


if __name__ == "__main__":
    config_files.run_main(main)
