"""Paired comparison of ablation rows over the seeds they share (flax_fld/runs/ablation.py).

  python launch/compare_rows.py --first=workdir/ablation/squeezenet1_1/icfdnet \\
      --second=workdir/ablation/squeezenet1_1/icfdnet_at

With one --second row, prints for Average, Best-Worst and every robust entry both rows hold each row's mean
and the mean paired difference (second - first) with its 95 % t interval: an interval that excludes 0
separates the change from the seed-to-seed noise. With several (comma-separated), prints one line per row
against --first: the table of variants (mean ± std, paired differences, the training attack's clean -
adversarial gap, robust entries).
"""

import sys
from collections.abc import Sequence

from absl import app, flags

from flax_fld.reporting import tables
from flax_fld.runs import ablation, cli

_FIRST = flags.DEFINE_string("first", None, "Row directory WORKDIR/<backbone>/<row> holding seed_<s>/eval.json.")
_SECOND = flags.DEFINE_list("second", None, "Row(s) compared against --first, same layout; several: a variant table.")
flags.mark_flags_as_required(["first", "second"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if len(_SECOND.value) == 1:
            print(tables.format_paired_comparison(ablation.row_reports(_FIRST.value),
                                                    ablation.row_reports(_SECOND.value[0])))
        else:
            print(tables.format_variant_table(ablation.variant_rows(_FIRST.value, _SECOND.value)))
    except ValueError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    cli.run_main(main)
