"""Write a PNG grid of examples per class of a data set, preparing it first if needed (flax_fld/tools/preview.py).

  python launch/preview_data.py --data=synthetic_fatty_liver --out=preview.png
  python launch/preview_data.py --data=class_folders --config.data.root=/path/to/scans --out=mine.png

Rows are classes in config order, columns are the first --per_class examples of that class in --split.
"""

import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from flax_fld.data import input_pipeline
from flax_fld.runs import cli
from flax_fld.tools import preview

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (default configs/default.py); only "
                                          "config.data is used.")
_DATA = flags.DEFINE_string("data", None, "Overrides config.data.name.")
_OUT = flags.DEFINE_string("out", "preview.png", "Output PNG path.")
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "validation", "test"], "Split to show.")
_PER_CLASS = flags.DEFINE_integer("per_class", 6, "Examples per class (columns).", lower_bound=1)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if _DATA.value:
        config.data.name = _DATA.value
    try:
        # config.data.data_dir, else workdir/tfds_data: the data set `make demo` prepares.
        data_dir = input_pipeline.resolve_data_dir(config.data, os.path.join("workdir", "preview"))
        out, class_names = preview.save_preview(config, data_dir, _OUT.value, split=_SPLIT.value,
                                                per_class=_PER_CLASS.value)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out}: rows = {', '.join(class_names)} ({_SPLIT.value} split)")


if __name__ == "__main__":
    cli.run_main(main, default_config="default")
