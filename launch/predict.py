"""Grade new ultrasound images with a trained model (flax_fld/predict.py).

  python launch/predict.py --workdir=workdir/demo [--which=best] [--plot_dir=DIR] IMAGE [IMAGE ...]

Prints, for each image, the predicted grade and the probability of every class; with --plot_dir, also one
PNG per image with IC2's reconstruction and decoupled feature maps. PNG, JPEG, BMP, TIFF or DICOM (.dcm, with
`pip install 'flax-fld[dicom]'`), any size and bit depth, grayscale or RGB. A multi-frame DICOM (cine loop)
gets a line per frame and one for the file: its majority grade and mean class probabilities.
"""

import sys
from collections.abc import Sequence

from absl import app, flags

from flax_fld import cli, predict

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (config.json, checkpoints).")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint to load.")
_PLOT_DIR = flags.DEFINE_string("plot_dir", "", "If set, write one decoupling PNG per image here.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
flags.mark_flag_as_required("workdir")


def main(argv: Sequence[str]) -> None:
    image_paths = list(argv[1:])
    if not image_paths:
        raise app.UsageError("give at least one image path")
    try:
        predict.run(_WORKDIR.value, image_paths, which=_WHICH.value, plot_dir=_PLOT_DIR.value,
                    batch_size=_BATCH_SIZE.value)
    except ValueError as error:  # an unreadable image, a missing workdir or checkpoint
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    cli.run_main(main)
