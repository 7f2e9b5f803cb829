"""Paired comparison of two ablation rows over the seeds both ran (flax_fld/ablation.py).

  python launch/compare_rows.py --first=workdir/ablation/squeezenet1_1/icfdnet \\
      --second=workdir/ablation/squeezenet1_1/icfdnet_at

Prints, for Average, Best-Worst and every robust entry both rows hold, each row's mean and the mean paired
difference (second - first) with its 95 % t interval: an interval that excludes 0 separates the change from
the seed-to-seed noise.
"""

import sys
from collections.abc import Sequence

from absl import app, flags

from flax_fld import ablation, cli

_FIRST = flags.DEFINE_string("first", None, "Row directory WORKDIR/<backbone>/<row> holding seed_<s>/eval.json.")
_SECOND = flags.DEFINE_string("second", None, "The row compared against --first, same layout.")
flags.mark_flags_as_required(["first", "second"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        print(ablation.format_paired_comparison(ablation.row_reports(_FIRST.value),
                                                ablation.row_reports(_SECOND.value)))
    except ValueError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    cli.run_main(main)
