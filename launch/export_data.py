"""Write one split of a data set as OUT/<class>/<id>.png plus OUT/labels.csv (flax_fld/tools/export_data.py).

  python launch/export_data.py --data=synthetic_fatty_liver --split=test --out=exported/test
  python launch/export_data.py --data=synthetic_fatty_liver --config.data.simulator_site=B --split=test --out=siteB
  python launch/export_data.py --data=class_folders --config.data.root=/path/to/scans --split=train --out=mine

For the simulator, labels.csv also holds the latent fat fraction and every scanner setting of each image.
"""

import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from flax_fld.data import input_pipeline
from flax_fld.runs import cli
from flax_fld.tools import export_data

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (default configs/default.py); only "
                                          "config.data is used.")
_DATA = flags.DEFINE_string("data", None, "Overrides config.data.name.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to write.")
_OUT = flags.DEFINE_string("out", None, "Empty or new folder to write into.", required=True)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if _DATA.value:
        config.data.name = _DATA.value
    try:
        data_dir = input_pipeline.resolve_data_dir(config.data, os.path.join("workdir", "export"))
        count, labels = export_data.export_split(config.data, data_dir, _SPLIT.value, _OUT.value)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {count} images of the {_SPLIT.value} split under {_OUT.value}, labels in {labels}")


if __name__ == "__main__":
    cli.run_main(main, default_config="default")
