"""Evaluate a trained run (flax_fld/evaluate_checkpoint.py).

  python launch/eval.py --workdir=DIR [--which=best|latest] [--split=test] [--robust=pgd|strong]

Evaluates clean and PGD-CE robust per-class accuracy over every example of the split, writes DIR/eval.json
(and DIR/plots/confusion_matrix.png) and prints the paper-style table. ``--robust=strong`` adds eval.json's
``strong_robust``: per-class accuracy under random-sign noise, PGD-20, an APGD-style attack and their
per-example worst case, with sanity checks (flax_fld/robust_eval.py; budget in ``adv.strong_*``).
"""

import functools
import sys
from collections.abc import Sequence

from absl import app, flags

from flax_fld import cli, evaluate_checkpoint

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
    try:
        _, text = evaluate_checkpoint.evaluate_checkpoint(
            _WORKDIR.value, which=_WHICH.value, split=_SPLIT.value, strong=_ROBUST.value == "strong",
            log=functools.partial(print, flush=True))
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(text)


if __name__ == "__main__":
    cli.run_main(main)
