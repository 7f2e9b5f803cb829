"""Where the model looks: integrated gradients of a grade's logit over the image (``launch/predict.py --explain``).

Integrated gradients (Sundararajan et al., 2017) of the class-k logit f_k at an image x from a baseline x0:

    IG(x) = (x - x0) * mean over alpha in (0, 1) of  d f_k / d x  at  x0 + alpha (x - x0),

the mean taken by the midpoint rule over ``steps`` points. Completeness: ``sum(IG(x)) ~= f_k(x) - f_k(x0)``,
the error shrinking as ``steps`` grows (tests/test_saliency.py measures it). The baseline is a black image.

Why not Grad-CAM: the classifier's input is ``x_c = cat(Feat1, Feat2, Y_c(x))``, so a Grad-CAM on its last
convolution would explain x_c's channels, not the image, and would skip IC1/IC2, half of the method. IG here
differentiates the same ``fld.forward`` that predict grades with (decouplers + colour transform + classifier,
eval mode, float32) with respect to the image's pixels.

All functions are pure and jit-able; shapes: image ``[H, W, C]`` or a batch ``[B, H, W, C]`` in [0, 1] float32
-> attributions of the same shape -> map ``[H, W]`` (``[B, H, W]``) in [0, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Midpoint-rule steps of the path integral: on the tiny model the completeness error at 32 steps is a few
# percent of f(x) - f(x0) (tests/test_saliency.py), and 32 forward + backward passes per image stay affordable.
DEFAULT_STEPS = 32
METHOD_NAME = "integrated gradients"


def integrated_gradients(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                         targets: jax.Array | int | None = None, *, steps: int = DEFAULT_STEPS,
                         baseline: jax.Array | None = None) -> jax.Array:
    """Signed integrated gradients of the ``targets`` logits with respect to ``images``.

    Args:
        logits_fn: images ``[B, H, W, C]`` -> logits ``[B, K]``, each image's logits depending on that image
            only (eval mode: no batch statistics), e.g. ``model_logits_fn(model, variables)``.
        images: ``[H, W, C]`` or ``[B, H, W, C]`` float32 in [0, 1].
        targets: the class to explain per image, ``[]`` / ``[B]`` int; None: the class ``logits_fn`` predicts.
        steps: points of the midpoint rule on the straight path from ``baseline`` to ``images`` (static).
        baseline: broadcastable to ``images``; None: black (zeros).
    Returns:
        Attributions of ``images``' shape; their sum per image approximates
        ``logits[target](images) - logits[target](baseline)``.
    """
    images = jnp.asarray(images, jnp.float32)
    single = images.ndim == 3
    if single:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"saliency: images must be [H, W, C] or [B, H, W, C], got shape {images.shape}")
    if steps < 1:
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

    def accumulate(total: jax.Array, alpha: jax.Array) -> tuple[jax.Array, None]:
        return total + gradient(start + alpha * delta), None

    alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps  # one point per step, at its middle
    total, _ = jax.lax.scan(accumulate, jnp.zeros_like(images), alphas)  # one step in memory at a time
    attributions = delta * total / steps
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


def explain_model(model: Any, variables: dict, images: jax.Array, targets: jax.Array,
                  *, steps: int = DEFAULT_STEPS) -> jax.Array:
    """Saliency maps ``[B, H, W]`` of ``targets [B]`` over ``images [B, H, W, C]`` through the whole model."""
    return saliency_map(integrated_gradients(model_logits_fn(model, variables), images, targets, steps=steps))


@functools.lru_cache(maxsize=4)
def _jitted_explain(model: Any, steps: int):
    """``explain_model`` jitted once per (hashable) model and step count."""
    return jax.jit(lambda variables, images, targets: explain_model(model, variables, images, targets,
                                                                    steps=steps))


def explain(model: Any, variables: dict, images: np.ndarray, targets: np.ndarray, *,
            steps: int = DEFAULT_STEPS, batch_size: int = 32) -> np.ndarray:
    """``explain_model`` over ``images [N, H, W, C]`` in batches: maps ``[N, H, W]`` float32 numpy in [0, 1]."""
    forward = _jitted_explain(model, steps)
    targets = np.asarray(targets, np.int32)
    maps = [np.asarray(forward(variables, images[start:start + batch_size], targets[start:start + batch_size]))
            for start in range(0, len(images), batch_size)]
    return np.concatenate(maps)
