"""Parameter counts and XLA-counted forward FLOPs per image of every classifier and ICFDNet preset
(``launch/summarize_model.py``), as a markdown table. Nothing is executed: variables come from `jax.eval_shape` and FLOPs from the cost
analysis of the lowered (eval-mode, batch 1) forward pass, so the 224 px rows cost seconds, not minutes.
Classifiers see x_c with 2F + Cc channels (the full model of Fig. 2); the decouplers see the image.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_fld.models import color, get_classifier, registry
from flax_fld.models.icfdnet import ICFDNET_PRESETS, ICFDNet, icfdnet_preset
from flax_fld.models.vit import VIT_PRESETS
from flax_fld.reporting import tables

SIZES = (64, 224)


def param_count(tree) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def params_and_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, Optional[float]]:
    """(parameter count, forward FLOPs for one image of input_shape (H, W, C) in eval mode)."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
        cost = cost[0] if cost else None
    flops = float(cost["flops"]) if cost and "flops" in cost else None
    return param_count(variables["params"]), flops


def summary_rows(num_classes: int, feature_channels: int, image_channels: int, color_space: str) -> list[tuple]:
    """One row per model: (name, input channels, {size: params}, {size: flops})."""
    classifier_channels = 2 * feature_channels + color.num_color_channels(color_space)
    models: list[tuple[str, int, dict[int, nn.Module]]] = []
    for name in sorted(registry):
        if name == "vit":
            for preset in VIT_PRESETS:
                model = get_classifier(name, num_classes, preset=preset)
                models.append((f"vit ({preset})", classifier_channels, {size: model for size in SIZES}))
        else:
            model = get_classifier(name, num_classes)
            models.append((name, classifier_channels, {size: model for size in SIZES}))
    for preset in ICFDNET_PRESETS:
        model = ICFDNet(features=feature_channels, head="class", num_classes=num_classes, **icfdnet_preset(preset))
        models.append((f"ICFDNet {preset} (IC1)", image_channels, {size: model for size in SIZES}))

    rows = []
    for name, channels, by_size in models:
        params, flops = {}, {}
        for size, model in by_size.items():
            params[size], flops[size] = params_and_flops(model, (size, size, channels))
        rows.append((name, channels, params, flops))
    return rows


def summary_text(num_classes: int = 4, feature_channels: int = 4, image_channels: int = 1,
                 color_space: str = "ycbcr") -> str:
    """A line saying what was counted, then ``tables.format_model_summary(summary_rows(...))``."""
    rows = summary_rows(num_classes, feature_channels, image_channels, color_space)
    classifier_channels = 2 * feature_channels + color.num_color_channels(color_space)
    return (f"Forward pass, eval mode, per image; XLA cost analysis (a multiply-add counts as 2 FLOPs). "
            f"K = {num_classes}; classifiers take x_c with 2F + Cc = {classifier_channels} channels "
            f"(F = {feature_channels}, {color_space}); ICFDNet takes the {image_channels}-channel image.\n\n"
            + tables.format_model_summary(rows))
