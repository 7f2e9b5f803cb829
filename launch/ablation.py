"""Table 2 of the paper: baseline, +ICFDNet and +ICFDNet+AT per backbone over several seeds (flax_fld/runs/ablation.py).

  python launch/ablation.py --config=configs/ablation.py --workdir=workdir/ablation

Re-running the same command resumes: runs with an eval.json are reused. WORKDIR/ablation.md and ablation.json
hold the table so far after every run; the console shows each run with the whole ablation's progress and ETA.
"""

import functools
import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from flax_fld.reporting import tables
from flax_fld.runs import ablation, cli

# No default file: with one, config_flags applies the overrides while defining the flag, before
# cli.run_main could turn a misspelt key into one line.
_CONFIG = config_flags.DEFINE_config_file("config", None, "Ablation config file (configs/ablation.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the runs and ablation.md/json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        results = ablation.run_ablation(_CONFIG.value, _WORKDIR.value, command="python " + " ".join(sys.argv),
                                        log=functools.partial(print, flush=True))
    except (ValueError, FloatingPointError) as error:  # bad config or data, a diverged run
        sys.exit(f"error: {error}")
    print(tables.format_ablation_table(results))
    print(f"wrote {os.path.join(_WORKDIR.value, 'ablation.md')} and ablation.json")


if __name__ == "__main__":
    cli.run_main(main)
