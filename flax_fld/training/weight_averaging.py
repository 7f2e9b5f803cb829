"""Weight averaging of the trained model: EMA and CFA's fairness-aware weight averaging (FAWA).

Both keep an exponential moving average of the parameters next to the trained ones; they differ only in
*when* a step is folded into the average:

- ``ema``: every training step.
- ``fawa`` (Wei et al., CFA, CVPR 2023): only during epochs after which the worst class's robust validation
  accuracy cleared a threshold, so that an unfair (one class collapsed) model never pollutes the average.

The decay is warmed up, ``decay_t = min(decay, t / (t + 10))`` for the t-th averaging update (as TensorFlow's
``ExponentialMovingAverage(num_updates=...)``), so that the average starts at the current weights instead of
the random initialisation and is useful after a few hundred steps, which is all a CPU run has.
All functions are pure and jit-able.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

AVERAGING_MODES = ("none", "ema", "fawa")


def check_mode(mode: str) -> str:
    """Returns ``mode`` if it is a known ``train.weight_averaging`` value, else raises a one-line ValueError."""
    if mode not in AVERAGING_MODES:
        raise ValueError(f"config.train.weight_averaging={mode!r}; expected one of {AVERAGING_MODES}")
    return mode


def effective_decay(decay: float, count: jax.Array) -> jax.Array:
    """The warmed-up decay ``min(decay, count / (count + 10))`` of the ``count``-th update (0-based).

    ``count = 0`` gives 0: the first update copies the weights.
    """
    count = jnp.asarray(count, jnp.float32)
    return jnp.minimum(jnp.float32(decay), count / (count + 10.0))


def ema_update(averaged: Any, params: Any, decay: float, count: jax.Array) -> Any:
    """One EMA step ``avg <- d * avg + (1 - d) * params`` with ``d = effective_decay(decay, count)``.

    Args:
        averaged: pytree like ``params`` (the running average).
        params: the current parameters.
        decay: the target decay (e.g. 0.999).
        count: int scalar, number of updates already folded in.

    Returns:
        The new average (same pytree structure and dtypes).
    """
    d = effective_decay(decay, count)
    return jax.tree.map(lambda a, p: (d * a + (1.0 - d) * p).astype(a.dtype), averaged, params)


def maybe_update(averaged: Any, params: Any, count: jax.Array, enabled: jax.Array, decay: float) -> tuple[Any, jax.Array]:
    """EMA step gated by the boolean scalar ``enabled`` (FAWA's gate; always True for plain EMA).

    Returns:
        ``(averaged, count)``: unchanged when ``enabled`` is False; otherwise the EMA step and ``count + 1``.
    """
    updated = ema_update(averaged, params, decay, count)
    averaged = jax.tree.map(lambda new, old: jnp.where(enabled, new, old), updated, averaged)
    return averaged, count + enabled.astype(count.dtype)


def fawa_gate(robust_class_acc_percent: Any, threshold: float) -> bool:
    """CFA's FAWA condition: average only if the worst class's robust accuracy is at least ``threshold``.

    Args:
        robust_class_acc_percent: ``[K]`` per-class robust validation accuracies in percent.
        threshold: fraction in [0, 1] (``config.train.fawa_threshold``).

    Returns:
        A python bool (decided on the host once per epoch).
    """
    values = np.asarray(robust_class_acc_percent, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return False
    return bool(values.min() / 100.0 >= threshold)
