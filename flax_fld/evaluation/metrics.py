"""Per-class evaluation in the form of the paper's Tables 1 and 2.

``confusion_matrix`` is jit-able (it runs inside the pmapped evaluation step; sum it across devices);
``class_report`` is host-side numpy/python; ``flax_fld.reporting.tables`` formats its reports.

Conventions (matching how the paper's tables are computed, see tests/test_paper_tables.py):

- per-class accuracy and ``average`` are percentages; ``average`` is sample-weighted (correct / all), as the
  paper's "Average" is, and ``balanced_accuracy`` is the unweighted mean over classes;
- ``best_worst`` is the difference of the best and worst per-class percentages *after* rounding each to two
  decimals, then rounded to two decimals: the paper's 18.98 is 95.65 - 76.67, while the unrounded difference,
  100 * (66/69 - 69/90), would print as 18.99;
- the 95 % intervals (``per_class_interval``, ``average_interval``, ``best_worst_interval``) are in percent
  and unrounded: a class of 39 test images moves by 2.6 points with one image, so a table reader needs them
  to tell a difference from noise.
"""

import statistics
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np



def _is_concrete(array) -> bool:
    return not isinstance(array, jax.core.Tracer)


def confusion_matrix(
    labels: jax.Array, preds: jax.Array, num_classes: int, mask: jax.Array | None = None
) -> jax.Array:
    """Counts ``C[t, p]`` of examples with true class ``t`` predicted as ``p`` (rows = true class).

    Args:
        labels: int ``[N]`` true classes.
        preds: int ``[N]`` predicted classes.
        num_classes: ``K`` (static).
        mask: optional bool ``[N]``; examples with ``False`` (evaluation padding) count zero times.

    Returns:
        int32 ``[K, K]``. Works on numpy or jax inputs, under ``jit``/``pmap`` too. Out-of-range classes raise
        a ValueError on concrete inputs; under ``jit`` (where they cannot be checked) they are not counted.
    """
    labels = jnp.asarray(labels).astype(jnp.int32).reshape(-1)
    preds = jnp.asarray(preds).astype(jnp.int32).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"metrics.confusion_matrix: labels {labels.shape} and preds {preds.shape} differ in shape")
    weights = jnp.ones(labels.shape, jnp.int32)
    if mask is not None:
        mask = jnp.asarray(mask).reshape(-1)
        if mask.shape != labels.shape:
            raise ValueError(f"metrics.confusion_matrix: mask {mask.shape} does not match labels {labels.shape}")
        weights = mask.astype(jnp.int32)
    in_range = (labels >= 0) & (labels < num_classes) & (preds >= 0) & (preds < num_classes)
    if _is_concrete(in_range) and _is_concrete(weights) and bool(jnp.any(~in_range & (weights > 0))):
        raise ValueError(f"metrics.confusion_matrix: labels/preds outside [0, {num_classes}) in unmasked examples")
    # Negative indices would wrap around in a scatter, so out-of-range pairs are zeroed rather than dropped.
    weights = jnp.where(in_range, weights, 0)
    safe_labels = jnp.clip(labels, 0, num_classes - 1)
    safe_preds = jnp.clip(preds, 0, num_classes - 1)
    counts = jnp.zeros((num_classes, num_classes), jnp.int32)
    return counts.at[safe_labels, safe_preds].add(weights)


WILSON_Z = 1.96  # standard normal quantile of a two-sided 95 % interval


def wilson_interval(correct, total, z: float = WILSON_Z) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of the proportion ``correct / total``, as fractions in [0, 1].

    Wilson rather than the textbook (Wald) ``p +- z sqrt(p (1 - p) / n)``: at 0/n or n/n the Wald interval has
    zero width, and at the tens of images per class of a test split it covers far less often than it claims;
    Wilson's stays inside [0, 1] and is close to its nominal level from n ~ 10 (Brown, Cai & DasGupta 2001).

    Args:
        correct: int scalar or array ``[...]``, successes ``k`` (0 <= k <= n).
        total: int scalar or array broadcastable with ``correct``, trials ``n``; ``n = 0`` gives NaN bounds.
        z: standard normal quantile (1.96: two-sided 95 %).

    Returns:
        ``(low, high)``: float64 arrays of the broadcast shape (0-d for scalar inputs).
    """
    k = np.asarray(correct, np.float64)
    n = np.asarray(total, np.float64)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError(f"metrics.wilson_interval: need 0 <= correct <= total, got {correct} of {total}")
    safe_n = np.maximum(n, 1.0)  # n = 0 is masked to NaN below; this only avoids a division warning
    p = k / safe_n
    denominator = 1.0 + z * z / safe_n
    centre = (p + z * z / (2.0 * safe_n)) / denominator
    half = z * np.sqrt(p * (1.0 - p) / safe_n + z * z / (4.0 * safe_n * safe_n)) / denominator
    # At k = 0 and k = n the bound is exactly 0 or 1; rounding would leave it a hair outside otherwise.
    low = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)


def best_worst_interval(correct, total, confidence: float = 0.95) -> tuple[float, float]:
    """A conservative ``confidence`` interval, in percent points, for the gap between the best and the worst
    true per-class accuracy.

    Each of the ``K'`` classes with examples gets a Wilson interval at level ``1 - (1 - confidence) / K'``
    (Bonferroni), so all ``K'`` true accuracies lie in their intervals together with probability at least
    ``confidence`` (as far as each Wilson interval keeps its level). Then the true gap ``max_i p_i - min_i p_i``
    lies in ``[max(0, max_i low_i - min_i high_i), max_i high_i - min_i low_i]``.

    Why not a bootstrap over test images: the gap is a maximum minus a minimum of ``K`` noisy estimates, so
    resampling inflates it (with classes of equal true accuracy every resample has a positive gap and a
    percentile interval excludes the true 0). This statement has no such bias and needs no random seed; the
    price is width, so read its upper end as how large the gap could plausibly be.

    Args:
        correct: int ``[K]`` correct predictions per class.
        total: int ``[K]`` examples per class; classes with none are left out.
        confidence: simultaneous coverage level.

    Returns:
        ``(low, high)`` in percent points; ``(0, 0)`` with a single class with examples, NaN with none.
    """
    correct, total = np.asarray(correct), np.asarray(total)
    seen = total > 0
    count = int(seen.sum())
    if count == 0:
        return float("nan"), float("nan")
    if count == 1:
        return 0.0, 0.0
    z = statistics.NormalDist().inv_cdf(1.0 - (1.0 - confidence) / (2.0 * count))
    low, high = wilson_interval(correct[seen], total[seen], z=z)
    return 100.0 * max(0.0, float(low.max() - high.min())), 100.0 * float(high.max() - low.min())


def class_report(confusion, class_names: Sequence[str]) -> dict:
    """Per-class and summary accuracies of one method (one row of Table 1) from its confusion matrix.

    Args:
        confusion: int ``[K, K]``, rows = true class (numpy, jax, or nested lists).
        class_names: ``K`` names, in label order.

    Returns:
        A dict with ``per_class_accuracy`` ({name: percent}), ``average`` (sample-weighted percent),
        ``best_worst`` (percent points, see the module docstring), ``balanced_accuracy`` (percent),
        ``best_class``/``worst_class`` (names), ``num_examples`` (int), ``confusion_matrix`` (list of lists
        of int), ``predicted_classes`` (how many classes are predicted at least once), ``collapsed`` (True when
        every example is predicted as one class: the model has learned nothing but a prior) and
        ``classes_at_zero`` (names of classes with examples and no correct prediction). A class with no example
        has accuracy NaN and is left out of the best/worst and balanced figures.
        95 % intervals in percent: ``per_class_interval`` ({name: [low, high]}, Wilson; [NaN, NaN] for a class
        with no example), ``average_interval`` (Wilson on all correct / all examples) and
        ``best_worst_interval`` (``best_worst_interval``'s conservative simultaneous statement).
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"metrics.class_report: confusion must be [K, K], got shape {confusion.shape}")
    if len(class_names) != confusion.shape[0]:
        raise ValueError(
            f"metrics.class_report: {len(class_names)} class names for a {confusion.shape[0]}-class confusion matrix"
        )
    confusion = confusion.astype(np.int64)
    support = confusion.sum(axis=1)
    correct = np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(support > 0, 100.0 * correct / np.maximum(support, 1), np.nan)
    seen = ~np.isnan(percent)
    if not seen.any():
        raise ValueError("metrics.class_report: the confusion matrix is empty")
    seen_percent = np.where(seen, percent, np.nan)
    best, worst = int(np.nanargmax(seen_percent)), int(np.nanargmin(seen_percent))
    predicted_classes = int(np.count_nonzero(confusion.sum(axis=0)))
    class_low, class_high = wilson_interval(correct, support)
    average_low, average_high = wilson_interval(correct.sum(), support.sum())
    return {
        "per_class_accuracy": {name: float(p) for name, p in zip(class_names, percent)},
        "average": float(100.0 * correct.sum() / support.sum()),
        "best_worst": float(round(round(percent[best], 2) - round(percent[worst], 2), 2)),
        "balanced_accuracy": float(np.nanmean(seen_percent)),
        "best_class": class_names[best],
        "worst_class": class_names[worst],
        "num_examples": int(support.sum()),
        "confusion_matrix": confusion.tolist(),
        "predicted_classes": predicted_classes,
        "collapsed": bool(predicted_classes <= 1 and int(seen.sum()) > 1),
        "classes_at_zero": [name for name, p in zip(class_names, percent) if p == 0.0],
        "per_class_interval": {name: [float(100.0 * low), float(100.0 * high)]
                               for name, low, high in zip(class_names, class_low, class_high)},
        "average_interval": [float(100.0 * average_low), float(100.0 * average_high)],
        "best_worst_interval": list(best_worst_interval(correct, support)),
    }


def majority_grade(probabilities: np.ndarray) -> tuple[int, int]:
    """(class, votes): the class predicted for most of the frames ``probabilities [F, K]``; a tie goes to the
    tied class of highest mean probability."""
    votes = np.bincount(np.argmax(probabilities, axis=-1), minlength=probabilities.shape[-1])
    tied = np.flatnonzero(votes == votes.max())
    best = int(tied[np.argmax(probabilities.mean(axis=0)[tied])])
    return best, int(votes[best])
