"""Loss terms of the paper (Eqs. 3, 4 and 5) as pure, jit-able functions.

Shapes: images are NHWC ``[B, H, W, C]`` float32 in [0, 1]; logits are ``[B, K]``; labels are int ``[B]``.

- ``reconstruction_loss``: Lc (Eq. 5), supervises IC2's reconstruction.
- ``decoupling_bce``: Ls, the BCE loss of IC1's class head.
- ``adaptive_trades_loss``: Lat (Eq. 3), the class-adaptive TRADES loss of the classifier.
- ``total_loss``: Eq. 4, their weighted sum.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def _check_rank(name: str, array: jax.Array, rank: int, layout: str) -> None:
    if jnp.ndim(array) != rank:
        raise ValueError(f"losses.{name}: expected a {layout} array, got shape {jnp.shape(array)}")


def laplacian(x: jax.Array) -> jax.Array:
    """The 3x3 discrete Laplacian (the Delta^2 of Eq. 5), applied to each channel separately.

    Uses the 4-neighbour stencil [[0, 1, 0], [1, -4, 1], [0, 1, 0]]. Borders are edge-replicated rather than
    zero-padded so that a flat image has zero Laplacian everywhere; zero padding would turn every bright border
    pixel into a spurious "edge" that Lc would then ask the decoupler to reproduce.

    Args:
        x: images ``[B, H, W, C]``.

    Returns:
        ``[B, H, W, C]``, same dtype as ``x``.
    """
    _check_rank("laplacian", x, 4, "[B, H, W, C]")
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    up = padded[:, :-2, 1:-1, :]
    down = padded[:, 2:, 1:-1, :]
    left = padded[:, 1:-1, :-2, :]
    right = padded[:, 1:-1, 2:, :]
    return up + down + left + right - 4.0 * x


def reconstruction_loss(x: jax.Array, x_hat: jax.Array, xi: float = 1e-3) -> jax.Array:
    """Lc of Eq. 5: a Charbonnier penalty on Laplacians plus an L1 term.

    ``Lc = mean(sqrt((lap(x) - lap(x_hat))**2 + xi**2)) + mean(|x - x_hat|)``.

    The printed Eq. 5 reads ``sqrt((lap(x) - lap(x_hat)) + xi**2)``, without the square; that is not a
    distance (the root's argument goes negative as soon as ``lap(x_hat) > lap(x) + xi**2``), so we read it
    as the Charbonnier loss it resembles. ``xi`` keeps the square root differentiable at zero error; identical images give ``Lc == xi``.

    Args:
        x: target images ``[B, H, W, C]``.
        x_hat: reconstructions ``[B, H, W, C]``.
        xi: the stabilizing constant of Eq. 5.

    Returns:
        A scalar.
    """
    if jnp.shape(x) != jnp.shape(x_hat):
        raise ValueError(f"losses.reconstruction_loss: x {jnp.shape(x)} and x_hat {jnp.shape(x_hat)} differ in shape")
    edge_error = laplacian(x) - laplacian(x_hat)
    charbonnier = jnp.mean(jnp.sqrt(edge_error**2 + xi**2))
    return charbonnier + jnp.mean(jnp.abs(x - x_hat))


def decoupling_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Ls of Eq. 4: sigmoid binary cross-entropy of IC1's class head against one-hot labels.

    Averaged over batch and classes (PyTorch ``BCEWithLogitsLoss`` default reduction).

    Args:
        logits: ``[B, K]``.
        labels: int ``[B]`` in ``[0, K)``.

    Returns:
        A scalar.
    """
    _check_rank("decoupling_bce", logits, 2, "[B, K] logits")
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))


def kl_divergence(logits_target: jax.Array, logits: jax.Array) -> jax.Array:
    """Per-example ``KL(softmax(logits_target) || softmax(logits))``, summed over classes.

    The target is the clean prediction f(x) in TRADES and Eq. 3. Log-probabilities come from ``log_softmax``,
    so a class with probability underflowing to zero contributes exactly zero, never ``0 * inf``.

    Args:
        logits_target: ``[B, K]``.
        logits: ``[B, K]``.

    Returns:
        ``[B]``.
    """
    log_p = jax.nn.log_softmax(logits_target, axis=-1)
    log_q = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def adaptive_trades_loss(
    logits_clean: jax.Array,
    logits_adv: jax.Array,
    labels: jax.Array,
    class_beta: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Lat of Eq. 3: the class-adaptive TRADES loss.

    Per example ``i`` with label ``y``:
    ``(1 - beta_y) * CE(f(x_i), y) + beta_y * KL(f(x_i) || f(x'_i))``, where ``beta_y = class_beta[y]`` comes
    from Eq. 2 and ``x'`` is the output of ``attack.trades_pgd``. As in TRADES, the KL is summed over classes
    and the clean distribution is the target; gradients flow through both the clean and the adversarial logits.

    Args:
        logits_clean: f(x), ``[B, K]``.
        logits_adv: f(x'), ``[B, K]``.
        labels: int ``[B]``.
        class_beta: ``[K]`` per-class weights in [0, 1] (Eq. 2).

    Returns:
        ``(mean_loss, per_example_loss)``: a scalar and ``[B]``.
    """
    _check_rank("adaptive_trades_loss", logits_clean, 2, "[B, K] logits_clean")
    if jnp.shape(logits_clean) != jnp.shape(logits_adv):
        raise ValueError(
            f"losses.adaptive_trades_loss: logits_clean {jnp.shape(logits_clean)} and logits_adv "
            f"{jnp.shape(logits_adv)} differ in shape"
        )
    batch, num_classes = logits_clean.shape
    if jnp.shape(labels) != (batch,):
        raise ValueError(f"losses.adaptive_trades_loss: labels must have shape ({batch},), got {jnp.shape(labels)}")
    if jnp.shape(class_beta) != (num_classes,):
        raise ValueError(
            f"losses.adaptive_trades_loss: class_beta must have shape ({num_classes},), got {jnp.shape(class_beta)}"
        )
    beta = jnp.asarray(class_beta, logits_clean.dtype)[labels]
    clean = optax.softmax_cross_entropy_with_integer_labels(logits_clean, labels)
    robust = kl_divergence(logits_clean, logits_adv)
    per_example = (1.0 - beta) * clean + beta * robust
    return jnp.mean(per_example), per_example


def total_loss(lc: jax.Array, ls: jax.Array, lat: jax.Array, weights: Sequence[float]) -> jax.Array:
    """Eq. 4: ``L = lambda_1 * Lc + lambda_2 * Ls + lambda_3 * Lat``.

    Args:
        lc: scalar reconstruction loss (Eq. 5).
        ls: scalar decoupling BCE.
        lat: scalar adaptive TRADES loss (Eq. 3).
        weights: ``(lambda_1, lambda_2, lambda_3)``.

    Returns:
        A scalar.
    """
    if len(weights) != 3:
        raise ValueError(f"losses.total_loss: weights must be (l1, l2, l3), got {weights!r}")
    l1, l2, l3 = weights
    return l1 * lc + l2 * ls + l3 * lat
