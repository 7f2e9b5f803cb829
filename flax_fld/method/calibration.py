"""Accuracy-based per-class calibration of the attack radius and the TRADES weight (Eqs. 1 and 2).

After each epoch the training loop measures ``Acc_i``, the accuracy of class ``i`` on the adversarial training
examples (Algorithm 1: ``Acc_i <- f(x')``), and recomputes ``epsilon_i`` and ``beta_i`` for the next epoch.
All functions are pure and jit-able; ``K`` is the number of classes.
"""

import jax
import jax.numpy as jnp


def _check_vector(name: str, array: jax.Array) -> None:
    if jnp.ndim(array) != 1:
        raise ValueError(f"calibration.{name}: expected a [K] array, got shape {jnp.shape(array)}")


def class_epsilon(class_acc: jax.Array, epsilon: float, sigma: float) -> jax.Array:
    """Eq. 1: per-class attack radius ``epsilon_i = (sigma + Acc_i) * epsilon``.

    Well-learned classes get a larger radius; ``sigma`` is the floor that keeps a class the model gets wholly
    wrong from being trained with (almost) no perturbation.

    Args:
        class_acc: ``[K]`` per-class accuracies in [0, 1].
        epsilon: the initial L-inf radius (pixel units, images in [0, 1]).
        sigma: the floor hyperparameter of Eq. 1.

    Returns:
        ``[K]`` float32 radii.
    """
    _check_vector("class_epsilon", class_acc)
    return (sigma + jnp.asarray(class_acc, jnp.float32)) * epsilon


def class_beta(class_acc: jax.Array, beta: float, mu: float) -> jax.Array:
    """Eq. 2: per-class TRADES weight ``beta_i = (mu + Acc_i) * beta / (1 + (mu + Acc_i) * beta)``.

    Maps the TRADES strength ``beta`` (e.g. 6) into (0, 1), so that Eq. 3 is a convex mix of the clean and
    the robust loss: a poorly recognised class leans on its clean loss.

    Args:
        class_acc: ``[K]`` per-class accuracies in [0, 1].
        beta: TRADES regularisation strength.
        mu: the floor hyperparameter of Eq. 2.

    Returns:
        ``[K]`` float32 weights in [0, 1).
    """
    _check_vector("class_beta", class_acc)
    scaled = (mu + jnp.asarray(class_acc, jnp.float32)) * beta
    return scaled / (1.0 + scaled)


def class_accuracy(correct: jax.Array, total: jax.Array, previous: jax.Array) -> jax.Array:
    """Per-class accuracy ``Acc_i = correct_i / total_i`` from integer counts (the input of Eqs. 1 and 2).

    Each class is divided by its own count, so imbalanced classes are handled correctly (dividing every class
    by ``N / K``, as a balanced-data shortcut would, is wrong for the paper's 90/66/39/69 split). A class with
    no example this epoch keeps its ``previous`` accuracy instead of dividing by zero.

    Args:
        correct: int ``[K]`` correctly classified examples per class (e.g. the confusion-matrix diagonal).
        total: int ``[K]`` examples per class (the confusion-matrix row sums).
        previous: ``[K]`` accuracies from the previous epoch (the initial value is the caller's choice).

    Returns:
        ``[K]`` float32 in [0, 1].
    """
    for name, array in (("correct", correct), ("total", total), ("previous", previous)):
        if jnp.ndim(array) != 1:
            raise ValueError(f"calibration.class_accuracy: {name} must be a [K] array, got shape {jnp.shape(array)}")
    if not jnp.shape(correct) == jnp.shape(total) == jnp.shape(previous):
        raise ValueError(
            "calibration.class_accuracy: correct, total and previous must have one shape, got "
            f"{jnp.shape(correct)}, {jnp.shape(total)}, {jnp.shape(previous)}"
        )
    correct = jnp.asarray(correct, jnp.float32)
    total = jnp.asarray(total, jnp.float32)
    seen = total > 0
    return jnp.where(seen, correct / jnp.where(seen, total, 1.0), jnp.asarray(previous, jnp.float32))
