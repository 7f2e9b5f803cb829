"""Per-class evaluation in the form of the paper's Tables 1 and 2.

``confusion_matrix`` is jit-able (it runs inside the pmapped evaluation step; sum it across devices);
``class_report`` and ``format_table`` are host-side numpy/python.

Conventions (matching how the paper's tables are computed, see tests/test_paper_tables.py):

- per-class accuracy and ``average`` are percentages; ``average`` is sample-weighted (correct / all), as the
  paper's "Average" is, and ``balanced_accuracy`` is the unweighted mean over classes;
- ``best_worst`` is the difference of the best and worst per-class percentages *after* rounding each to two
  decimals, then rounded to two decimals: the paper's 18.98 is 95.65 - 76.67, while the unrounded difference,
  100 * (66/69 - 69/90), would print as 18.99.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax_fld.names import paper_column_order


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
    }


def format_table(rows: Sequence[tuple[str, dict]]) -> str:
    """A markdown table in the layout of the paper's Table 1.

    Columns: Method, one per class, Best-Worst, Average (all in percent, two decimals). With the paper's four
    classes the class columns follow its order (Mild, Moderate, Severe, Normal) whatever the label order;
    otherwise the label order. As in the paper, each row's best and worst class are in italics, and the best
    Average and smallest Best-Worst over all rows are in bold.

    Args:
        rows: ``(method_name, class_report(...))`` pairs; all reports must share their class names.

    Returns:
        The table as a string (header, separator, one line per row, trailing newline).
    """
    if not rows:
        raise ValueError("metrics.format_table: no rows")
    class_names = list(rows[0][1]["per_class_accuracy"])
    for method, report in rows:
        if list(report["per_class_accuracy"]) != class_names:
            raise ValueError(
                f"metrics.format_table: row {method!r} has classes {list(report['per_class_accuracy'])}, "
                f"expected {class_names}"
            )
    columns = paper_column_order(class_names)
    header = ["Method"] + [f"{name.capitalize()}%" for name in columns] + ["Best-Worst%", "Average%"]
    best_average = max(round(report["average"], 2) for _, report in rows)
    smallest_gap = min(round(report["best_worst"], 2) for _, report in rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for method, report in rows:
        rounded = {name: round(report["per_class_accuracy"][name], 2) for name in columns}
        finite = [value for value in rounded.values() if not np.isnan(value)]
        cells = [method]
        for name in columns:
            text = f"{rounded[name]:.2f}"
            if finite and len(set(finite)) > 1 and rounded[name] in (max(finite), min(finite)):
                text = f"*{text}*"
            cells.append(text)
        gap, average = round(report["best_worst"], 2), round(report["average"], 2)
        cells.append(f"**{gap:.2f}**" if gap == smallest_gap else f"{gap:.2f}")
        cells.append(f"**{average:.2f}**" if average == best_average else f"{average:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
