"""L-inf PGD attacks: the inner maximisation of Eq. 3 (training) and a cross-entropy PGD (evaluation).

Both attacks take ``logits_fn``, a function of the image only (``[B, H, W, C] -> [B, K]``, images in [0, 1]),
so the caller decides what is held fixed (e.g. the decoupled features of Fig. 2). ``logits_fn`` must treat
examples independently (eval-mode BatchNorm, no dropout): the objectives are summed over the batch, so each
example's gradient is then its own and per-example radii are exact.

Radii and step sizes are python floats, scalar arrays, or per-example ``[B]`` arrays (per-class values from
Eq. 1 gathered by label); they broadcast over H, W, C.

The attacks work on images in [0, 1] by default; ``valid_range=None`` drops that box, for an attack in the
classifier's input space x_c, whose standardised feature channels have no fixed range.

x, x' and the projection are float32 even when the model computes in bfloat16 (``train.compute_dtype``):
near 1.0 bfloat16's spacing is 2^-8 to 2^-7, so a 1/255 step or an 8/255 ball would be rounded away. The
model casts its own input; x' is never cast, and a lower-precision x is refused (``check_float32``).
"""

from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from flax_fld.method import losses

LogitsFn = Callable[[jax.Array], jax.Array]


def per_example(name: str, value: float | jax.Array, x: jax.Array) -> jax.Array:
    """A scalar or ``[B]`` value reshaped to ``[B, 1, 1, 1]`` (or kept scalar) to broadcast against ``x``."""
    value = jnp.asarray(value, x.dtype)
    if value.ndim == 0:
        return value
    if value.shape != (x.shape[0],):
        raise ValueError(f"attack: {name} must be a scalar or a [B]=({x.shape[0]},) array, got shape {value.shape}")
    return value.reshape((-1,) + (1,) * (x.ndim - 1))


def check_float32(x: jax.Array) -> None:
    """Refuses a floating x narrower than float32 (bfloat16, float16): the attack's steps would vanish in it."""
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        raise ValueError(f"attack: x is {x.dtype}; the attack needs float32 inputs (the model may compute in "
                         "bfloat16, but x' and its projection stay float32)")


ValidRange = Optional[tuple[float, float]]
RANDOM_STARTS = ("small", "uniform")


def project(x_adv: jax.Array, x: jax.Array, epsilon: jax.Array, valid_range: ValidRange = (0.0, 1.0)) -> jax.Array:
    """Projects ``x_adv`` onto the L-inf ball of radius ``epsilon`` around ``x``, then clips to ``valid_range``.

    Args:
        x_adv: ``[B, H, W, C]``.
        x: ``[B, H, W, C]`` clean inputs.
        epsilon: scalar or broadcastable radius (``[B, 1, 1, 1]``).
        valid_range: ``(low, high)`` of a valid input (images: [0, 1]); None: the ball alone.

    Returns:
        ``[B, H, W, C]``.
    """
    x_adv = jnp.clip(x_adv, x - epsilon, x + epsilon)
    return x_adv if valid_range is None else jnp.clip(x_adv, *valid_range)


def _sign_ascent(
    objective: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    x_start: jax.Array,
    epsilon: jax.Array,
    step_size: jax.Array,
    num_steps: int,
    valid_range: ValidRange = (0.0, 1.0),
) -> jax.Array:
    """``num_steps`` of ``x_adv <- project(x_adv + step_size * sign(grad objective(x_adv)))``."""
    grad_fn = jax.grad(objective)

    def step(_, x_adv):
        return project(x_adv + step_size * jnp.sign(grad_fn(x_adv)), x, epsilon, valid_range)

    return jax.lax.fori_loop(0, num_steps, step, x_start)


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"attack: num_steps must be a non-negative python int, got {num_steps!r}")


def trades_pgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    epsilon: float | jax.Array,
    *,
    step_size: float | jax.Array,
    num_steps: int,
    key: jax.Array,
    random_start: str = "small",
    valid_range: ValidRange = (0.0, 1.0),
) -> jax.Array:
    """The inner maximisation of Eq. 3: ``x' = argmax_{|x' - x|_inf <= epsilon_i} KL(f(x) || f(x'))``.

    As in TRADES: start at ``x + 0.001 * N(0, 1)``, then take ``num_steps`` signed-gradient ascent steps on
    the KL (summed over classes and batch, so each example ascends its own KL), projecting after every step
    onto the example's own L-inf ball and into ``valid_range``. The clean distribution ``f(x)`` is computed
    once and held constant. Unlike TRADES the random start is projected too, so every iterate (also with
    ``num_steps=0``) is a valid image: B-mode images have many exactly-black pixels that noise would push
    below zero.

    ``random_start="uniform"`` starts anywhere in the ball instead, as Wong et al. (2020) make a one-step
    attack usable for training ("fast adversarial training": one step of ~1.25 epsilon from a uniform start).

    Args:
        logits_fn: ``[B, H, W, C] -> [B, K]``, evaluated in inference mode.
        x: clean images ``[B, H, W, C]`` in [0, 1].
        epsilon: L-inf radius, scalar or per-example ``[B]`` (Eq. 1 gathered by label).
        step_size: ascent step, scalar or per-example ``[B]``.
        num_steps: number of ascent steps (a python int; the loop is a ``lax.fori_loop``).
        key: PRNG key for the random start.
        random_start: ``small`` (TRADES: 0.001 N(0, 1)) or ``uniform`` (uniform in the ball).
        valid_range: ``(low, high)`` of a valid input, or None for the ball alone.

    Returns:
        ``x'``, ``[B, H, W, C]`` with gradients stopped (the outer minimisation treats it as data).
    """
    _check_steps(num_steps)
    if random_start not in RANDOM_STARTS:
        raise ValueError(f"attack.trades_pgd: random_start={random_start!r}; expected one of {RANDOM_STARTS}")
    check_float32(x)
    x = jax.lax.stop_gradient(x)
    epsilon = per_example("epsilon", epsilon, x)
    step_size = per_example("step_size", step_size, x)
    logits_clean = jax.lax.stop_gradient(logits_fn(x))

    def objective(x_adv):
        return jnp.sum(losses.kl_divergence(logits_clean, logits_fn(x_adv)))

    if random_start == "uniform":
        noise = epsilon * jax.random.uniform(key, x.shape, x.dtype, minval=-1.0, maxval=1.0)
    else:
        noise = 0.001 * jax.random.normal(key, x.shape, x.dtype)
    x_start = project(x + noise, x, epsilon, valid_range)
    x_adv = _sign_ascent(objective, x, x_start, epsilon, step_size, num_steps, valid_range)
    return jax.lax.stop_gradient(x_adv)


def pgd_ce(
    logits_fn: LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    epsilon: float | jax.Array,
    *,
    step_size: float | jax.Array,
    num_steps: int,
    key: jax.Array,
) -> jax.Array:
    """L-inf PGD on the cross-entropy (Madry et al.), the evaluation attack for robust accuracy.

    Starts uniformly at random in the ball, then ``num_steps`` signed-gradient ascent steps on
    ``sum_i CE(f(x'_i), y_i)``, each followed by projection onto the example's ball and into [0, 1].

    Args:
        logits_fn: ``[B, H, W, C] -> [B, K]``, evaluated in inference mode.
        x: clean images ``[B, H, W, C]`` in [0, 1].
        labels: int ``[B]`` true classes.
        epsilon: L-inf radius, scalar or per-example ``[B]``.
        step_size: ascent step, scalar or per-example ``[B]``.
        num_steps: number of ascent steps (python int).
        key: PRNG key for the random start.

    Returns:
        ``x'``, ``[B, H, W, C]`` with gradients stopped.
    """
    _check_steps(num_steps)
    if jnp.shape(labels) != (x.shape[0],):
        raise ValueError(f"attack.pgd_ce: labels must have shape ({x.shape[0]},), got {jnp.shape(labels)}")
    check_float32(x)
    x = jax.lax.stop_gradient(x)
    epsilon = per_example("epsilon", epsilon, x)
    step_size = per_example("step_size", step_size, x)

    def objective(x_adv):
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_fn(x_adv), labels))

    noise = jax.random.uniform(key, x.shape, x.dtype, minval=-1.0, maxval=1.0)
    x_start = project(x + noise * epsilon, x, epsilon)
    x_adv = _sign_ascent(objective, x, x_start, epsilon, step_size, num_steps)
    return jax.lax.stop_gradient(x_adv)
