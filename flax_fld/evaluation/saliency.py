"""Where the model looks: integrated gradients of a grade's logit over the image (``launch/predict.py --explain``).

Integrated gradients (Sundararajan et al., 2017) of the class-k logit f_k at an image x from a baseline x0:

    IG(x) = (x - x0) * mean over alpha in (0, 1) of  d f_k / d x  at  x0 + alpha (x - x0),

the mean taken by the midpoint rule over ``steps`` points. Completeness: ``sum(IG(x)) ~= f_k(x) - f_k(x0)``,
the gap shrinking as ``steps`` grows; ``explain_model`` returns both sides so a figure can show the gap.

Why not Grad-CAM: the classifier's input is ``x_c = cat(Feat1, Feat2, Y_c(x))``, so a Grad-CAM on its last
convolution would explain x_c's channels, not the image, and would skip IC1/IC2, half of the method. IG here
differentiates the same ``fld.forward`` that predict grades with (decouplers + colour transform + classifier,
eval mode, float32) with respect to the image's pixels.

The baseline (``make_baseline``): "flat", the image with every pixel brighter than ``DARK_LEVEL`` set to the
mean of those pixels (the same scan with its echo pattern flattened; the dark surround of a sector scan and
predict's black padding stay as they are, so they get no attribution), not black. IC1 and IC2 start with a
bias-free convolution followed by GroupNorm (configs/default.py), so they are blind to the image's overall
brightness and the model's logit jumps between alpha = 0 and ~1e-2 on the path from black. Measured on the
trained 64 px demo model (squeezenet1_1, 4 simulated scans): from black, f along the path was -2.72 at
alpha = 0, -2.15 at 1e-6, 1.13 at 1e-4, -0.01 at 1e-3, and the completeness gap did not shrink with more steps
(3.2 of a logit change of 5.1 at 256 steps); from the flat baseline f is smooth near alpha = 0 and the mean
gap over 6 scans was 0.33 logits at 32 steps, 0.09 at 64, 0.06 at 128, for logit changes of 2 to 8.

All functions are pure and jit-able; shapes: image ``[H, W, C]`` or a batch ``[B, H, W, C]`` in [0, 1] float32
-> attributions of the same shape -> map ``[H, W]`` (``[B, H, W]``) in [0, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Midpoint-rule steps on the path: on the demo model (see above) 64 left a completeness gap of 1 to 4 % of the
# logit change, 32 up to 13 %; each step is one forward and one backward pass of the batch.
DEFAULT_STEPS = 64
METHOD_NAME = "integrated gradients"
BASELINES = ("flat", "black")
# Pixels at or below this value (every channel) are "dark": the flat baseline keeps them (no attribution).
# 2/255 rather than 0 so that a JPEG's ringing in a black surround counts as black.
DARK_LEVEL = 2.0 / 255.0


class Explanation(NamedTuple):
    """What ``explain_model`` returns for images ``[B, H, W, C]``."""

    maps: jax.Array  # [B, H, W] saliency in [0, 1] (``saliency_map``)
    attribution_sums: jax.Array  # [B] sum of the signed attributions
    logit_changes: jax.Array  # [B] f_k(x) - f_k(baseline): what the sums approximate (completeness)


def make_baseline(images: jax.Array, kind: str = "flat") -> jax.Array:
    """The IG baseline of ``images [H, W, C]`` / ``[B, H, W, C]``, same shape.

    ``"flat"``: pixels brighter than ``DARK_LEVEL`` in some channel set to those pixels' mean per image and
    channel, dark pixels unchanged (an all-dark image is its own baseline); ``"black"``: zeros.
    """
    if kind not in BASELINES:
        raise ValueError(f"saliency: baseline={kind!r}; expected one of {BASELINES}")
    images = jnp.asarray(images, jnp.float32)
    if kind == "black":
        return jnp.zeros_like(images)
    bright = jnp.max(images, axis=-1, keepdims=True) > DARK_LEVEL  # [..., H, W, 1]
    count = jnp.sum(bright, axis=(-3, -2), keepdims=True)
    mean = jnp.sum(jnp.where(bright, images, 0.0), axis=(-3, -2), keepdims=True) / jnp.maximum(count, 1)
    return jnp.where(bright, mean, images)


def integrated_gradients(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                         targets: jax.Array | int | None = None, *, steps: int = DEFAULT_STEPS,
                         baseline: jax.Array | None = None) -> jax.Array:
    """Signed integrated gradients of the ``targets`` logits with respect to ``images``.

    Args:
        logits_fn: images ``[B, H, W, C]`` -> logits ``[B, K]``, each image's logits depending on that image
            only (eval mode: no batch statistics), e.g. ``model_logits_fn(model, variables)``.
        images: ``[H, W, C]`` or ``[B, H, W, C]`` float32 in [0, 1].
        targets: the class to explain per image, ``[]`` / ``[B]`` int; None: the class ``logits_fn`` predicts.
        steps: points of the midpoint rule on the straight path from ``baseline`` to ``images``: an int, or a
            traced int scalar (a ``fori_loop`` trip count, so one compile serves every step count).
        baseline: broadcastable to ``images``; None: black (zeros), the textbook choice, which suits a model
            that is smooth at black (not the FLD model: see the module docstring and ``make_baseline``).
    Returns:
        Attributions of ``images``' shape; their sum per image approximates
        ``logits[target](images) - logits[target](baseline)``.
    """
    images = jnp.asarray(images, jnp.float32)
    single = images.ndim == 3
    if single:
        images = images[None]
        baseline = None if baseline is None else jnp.asarray(baseline, jnp.float32)[None]
    if images.ndim != 4:
        raise ValueError(f"saliency: images must be [H, W, C] or [B, H, W, C], got shape {images.shape}")
    if isinstance(steps, int) and steps < 1:
        raise ValueError(f"saliency: steps={steps}; must be >= 1")
    if targets is None:
        targets = jnp.argmax(logits_fn(images), axis=-1)
    targets = jnp.broadcast_to(jnp.asarray(targets, jnp.int32).reshape(-1), images.shape[:1])
    start = jnp.zeros_like(images) if baseline is None else jnp.broadcast_to(
        jnp.asarray(baseline, jnp.float32), images.shape)
    delta = images - start

    def target_logits(x: jax.Array) -> jax.Array:
        # The sum over the batch: each image's gradient is that of its own logit (images are independent).
        return jnp.sum(jnp.take_along_axis(logits_fn(x), targets[:, None], axis=-1))

    gradient = jax.grad(target_logits)

    count = jnp.asarray(steps, jnp.float32)

    def accumulate(index: jax.Array, total: jax.Array) -> jax.Array:
        alpha = (index.astype(jnp.float32) + 0.5) / count  # the middle of step ``index``
        return total + gradient(start + alpha * delta)

    total = jax.lax.fori_loop(0, steps, accumulate, jnp.zeros_like(images))  # one step in memory at a time
    attributions = delta * total / count
    return attributions[0] if single else attributions


def saliency_map(attributions: jax.Array) -> jax.Array:
    """Attributions ``[H, W, C]`` / ``[B, H, W, C]`` -> map ``[H, W]`` / ``[B, H, W]`` in [0, 1]: the absolute
    value summed over channels, divided by its maximum per image (0 stays "no attribution"; an all-zero map
    stays zero)."""
    magnitude = jnp.sum(jnp.abs(attributions), axis=-1)
    peak = jnp.max(magnitude, axis=(-2, -1), keepdims=True)
    return jnp.where(peak > 0, magnitude / jnp.where(peak > 0, peak, 1.0), 0.0)


def model_logits_fn(model: Any, variables: dict) -> Callable[[jax.Array], jax.Array]:
    """``x [B, H, W, C] -> logits [B, K]``: the whole FLD model (IC1, IC2, Y_c, classifier) as predict runs it,
    ``fld.forward`` in eval mode on ``fld.float32_model(model)``."""
    from flax_fld.models import fld

    model = fld.float32_model(model)
    return lambda x: fld.forward(model, variables, x, train=False)[0]


def explain_model(model: Any, variables: dict, images: jax.Array, targets: jax.Array, *,
                  steps: int | jax.Array = DEFAULT_STEPS, baseline: str = "flat") -> Explanation:
    """IG of ``targets [B]`` over ``images [B, H, W, C]`` through the whole model: maps ``[B, H, W]`` and both
    sides of completeness ``[B]``."""
    logits_fn = model_logits_fn(model, variables)
    images = jnp.asarray(images, jnp.float32)
    targets = jnp.asarray(targets, jnp.int32)
    start = make_baseline(images, baseline)
    attributions = integrated_gradients(logits_fn, images, targets, steps=steps, baseline=start)
    ends = logits_fn(jnp.concatenate([images, start]))
    picked = jnp.take_along_axis(ends, jnp.concatenate([targets, targets])[:, None], axis=-1)[:, 0]
    count = images.shape[0]
    return Explanation(saliency_map(attributions), jnp.sum(attributions, axis=(1, 2, 3)),
                       picked[:count] - picked[count:])


@functools.lru_cache(maxsize=4)
def _jitted_explain(model: Any, baseline: str):
    """``explain_model`` jitted once per (hashable) model and baseline; the step count is an argument."""
    return jax.jit(lambda variables, images, targets, steps: explain_model(model, variables, images, targets,
                                                                           steps=steps, baseline=baseline))


def explain(model: Any, variables: dict, images: np.ndarray, targets: np.ndarray, *,
            steps: int = DEFAULT_STEPS, baseline: str = "flat", batch_size: int = 32) -> Explanation:
    """``explain_model`` over ``images [N, H, W, C]`` in batches, as numpy (maps ``[N, H, W]`` float32)."""
    if steps < 1:
        raise ValueError(f"saliency: steps={steps}; must be >= 1")
    run = _jitted_explain(model, baseline)
    targets = np.asarray(targets, np.int32)
    parts = [run(variables, images[start:start + batch_size], targets[start:start + batch_size], np.int32(steps))
             for start in range(0, len(images), batch_size)]
    return Explanation(*(np.concatenate([np.asarray(getattr(part, field)) for part in parts])
                         for field in Explanation._fields))
