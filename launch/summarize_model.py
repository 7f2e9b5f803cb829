"""Parameter counts and forward FLOPs per image of every classifier and ICFDNet preset (flax_fld/tools/model_summary.py).

  python launch/summarize_model.py [--num_classes=4] [--feature_channels=4] [--image_channels=1] [--color_space=ycbcr]

Prints a markdown table. Nothing is executed: shapes come from jax.eval_shape and FLOPs from XLA's cost
analysis of the lowered forward pass, so the 224 px rows cost seconds.
"""

import sys
from collections.abc import Sequence

from absl import app, flags

from flax_fld.runs import cli
from flax_fld.tools import model_summary

_NUM_CLASSES = flags.DEFINE_integer("num_classes", 4, "K, the number of classes.", lower_bound=2)
_FEATURE_CHANNELS = flags.DEFINE_integer("feature_channels", 4, "F of each decoupler (config default 4).",
                                         lower_bound=1)
_IMAGE_CHANNELS = flags.DEFINE_integer("image_channels", 1, "Channels of the input image.", lower_bound=1)
_COLOR_SPACE = flags.DEFINE_string("color_space", "ycbcr", "Y_c of Algorithm 1; sets Cc.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        print(model_summary.summary_text(_NUM_CLASSES.value, _FEATURE_CHANNELS.value, _IMAGE_CHANNELS.value,
                                   _COLOR_SPACE.value))
    except ValueError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    cli.run_main(main)
