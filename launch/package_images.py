"""Write a real-image check set as class folders (flax_fld/tools/package_images.py).

  python launch/package_images.py --set=digits --out=data/digits4
  python launch/package_images.py --set=textures --out=data/textures4

Needs the ``checks`` extra (scikit-learn, scikit-image), whose packages ship the images: nothing is downloaded.
"""

import sys
from collections.abc import Sequence

from absl import app, flags

from flax_fld.runs import cli
from flax_fld.tools import package_images

_SET = flags.DEFINE_enum("set", None, list(package_images.SETS), "Which set to write.", required=True)
_OUT = flags.DEFINE_string("out", None, "Folder to create (class_folders layout); must not exist.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the split (digits) and of the per-patch gains (textures).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        counts = package_images.write_class_folders(_SET.value, _OUT.value, _SEED.value)
    except (ValueError, ImportError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {_OUT.value}: class names {package_images.CLASS_NAMES[_SET.value]}; images per class {counts}")


if __name__ == "__main__":
    cli.run_main(main, compilation_cache=False)
