"""Grade new ultrasound images with a trained model (flax_fld/runs/predict.py).

  python launch/predict.py --workdir=workdir/demo [--which=best] [--plot_dir=DIR [--explain]] IMAGE [IMAGE ...]

Prints, for each image, the predicted grade and the probability of every class; with --plot_dir, also one
PNG per image with IC2's reconstruction and decoupled feature maps, and with --explain beside it
<name>_saliency.png: where the model looks for the predicted grade (integrated gradients through the whole
model, flax_fld/evaluation/saliency.py). --explain without --plot_dir is a usage error: its PNGs go beside the
decoupling plots, and predict writes no file unless told where. PNG, JPEG, BMP, TIFF or DICOM (.dcm, with
`pip install 'flax-fld[dicom]'`), any size and bit depth, grayscale or RGB. A multi-frame DICOM (cine loop)
gets a line per frame and one for the file: its majority grade and mean class probabilities.
"""

import sys
from collections.abc import Sequence

from absl import app, flags

from flax_fld.runs import cli, predict

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (config.json, checkpoints).")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint to load.")
_PLOT_DIR = flags.DEFINE_string("plot_dir", "", "If set, write one decoupling PNG per image here.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
_EXPLAIN = flags.DEFINE_boolean("explain", False, "With --plot_dir: also write <name>_saliency.png per image, "
                                "integrated gradients of the predicted grade through the whole model.")
_EXPLAIN_STEPS = flags.DEFINE_integer("explain_steps", None, "Integrated-gradients steps per image "
                                      "(default flax_fld.evaluation.saliency.DEFAULT_STEPS, 64).", lower_bound=1)
flags.mark_flag_as_required("workdir")


def main(argv: Sequence[str]) -> None:
    image_paths = list(argv[1:])
    if not image_paths:
        raise app.UsageError("give at least one image path")
    if _EXPLAIN.value and not _PLOT_DIR.value:
        raise app.UsageError("--explain writes its PNGs beside the decoupling plots: give --plot_dir=DIR too")
    try:
        predict.run(_WORKDIR.value, image_paths, which=_WHICH.value, plot_dir=_PLOT_DIR.value,
                    batch_size=_BATCH_SIZE.value, explain=_EXPLAIN.value, explain_steps=_EXPLAIN_STEPS.value)
    except ValueError as error:  # an unreadable image, a missing workdir or checkpoint
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    cli.run_main(main)
