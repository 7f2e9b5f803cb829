"""Whether the model's softmax probabilities can be read as probabilities: expected calibration error (ECE),
the bins of a reliability diagram, and temperature scaling (Guo et al. 2017, "On calibration of modern
neural networks").

Not to be confused with ``flax_fld.method.calibration``, the paper's per-class epsilon/beta of Eq. 1 and 2.

Pure numpy functions on host arrays: ``logits``/``probabilities`` are ``[N, K]`` (N examples, K classes),
``labels`` int ``[N]``. Every ECE is a fraction in [0, 1] (0.05 means that confidence and accuracy differ by
5 points on average over the examples). Bins are ``num_bins`` equal-width intervals of [0, 1]: bin ``b`` holds
scores in ``[b / B, (b + 1) / B)``, the last one including 1.
"""

from collections.abc import Sequence

import numpy as np

NUM_BINS = 15  # Guo et al.'s choice; with a few hundred test images most occupied bins still hold several
LOG_TEMPERATURE_RANGE = (-4.0, 4.0)  # search range of log T: T in [0.018, 55]


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of ``[N, K]`` logits, float64 ``[N, K]`` (max-shifted so large logits do not
    overflow)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def _check(scores: np.ndarray, labels: np.ndarray) -> None:
    if scores.ndim != 2 or labels.shape != (scores.shape[0],) or scores.shape[0] == 0:
        raise ValueError(f"reliability: expected scores [N, K] and labels [N] with N > 0, got {scores.shape} "
                         f"and {labels.shape}")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"reliability: labels outside [0, {scores.shape[1]})")


def binned(scores, hits, num_bins: int = NUM_BINS) -> dict[str, list]:
    """The bins of a reliability diagram: how often an event happened against the score that predicted it.

    Args:
        scores: float ``[N]`` in [0, 1], e.g. each example's top probability.
        hits: bool or {0, 1} ``[N]``, whether the predicted event happened (e.g. the top class is right).
        num_bins: ``B``.

    Returns:
        ``{'count': [B] int, 'confidence': [B] mean score, 'accuracy': [B] mean hit}`` as lists; an empty bin
        has count 0 and 0.0 for both means (not NaN, which would make two equal reports compare unequal).
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    hits = np.asarray(hits, np.float64).reshape(-1)
    index = np.clip(np.floor(scores * num_bins).astype(np.int64), 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, np.bincount(index, scores, num_bins) / count, 0.0)
        accuracy = np.where(count > 0, np.bincount(index, hits, num_bins) / count, 0.0)
    return {"count": count.tolist(), "confidence": confidence.tolist(), "accuracy": accuracy.tolist()}


def _binned_gap(scores: np.ndarray, hits: np.ndarray, num_bins: int) -> float:
    """sum_b (n_b / N) |mean hit_b - mean score_b| over the equal-width bins of ``scores [N]``."""
    bins = binned(scores, hits, num_bins)
    count = np.asarray(bins["count"], np.float64)
    gaps = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float((count * gaps).sum() / count.sum())


def expected_calibration_error(probabilities, labels, num_bins: int = NUM_BINS) -> float:
    """Top-label ECE: ``sum_b (n_b / N) |acc_b - conf_b|``.

    Each example falls in the bin of its confidence ``max_k p_k``; ``conf_b`` is the mean confidence and
    ``acc_b`` the fraction of correct argmax predictions in bin ``b``.

    Args:
        probabilities: float ``[N, K]``, rows summing to 1.
        labels: int ``[N]`` true classes.
        num_bins: ``B`` equal-width bins of [0, 1].

    Returns:
        The ECE, a fraction in [0, 1].
    """
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels).reshape(-1)
    _check(probabilities, labels)
    correct = probabilities.argmax(axis=-1) == labels
    return _binned_gap(probabilities.max(axis=-1), correct, num_bins)


def per_class_expected_calibration_error(probabilities, labels, num_bins: int = NUM_BINS) -> np.ndarray:
    """One-vs-rest ECE of every class.

    For class ``k``, every example (whatever its predicted class) falls in the bin of ``p_k``, and
    ``ECE_k = sum_b (n_b / N) |mean_b 1[y = k] - mean_b p_k|``: in each bin, how often the example truly is
    of class ``k`` against the probability the model gave class ``k``. A model that says "20 % severe" for a
    set of images is calibrated for ``severe`` when a fifth of them are severe.

    Args:
        probabilities: float ``[N, K]``.
        labels: int ``[N]``.
        num_bins: ``B`` equal-width bins of [0, 1].

    Returns:
        float64 ``[K]``, each a fraction in [0, 1].
    """
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels).reshape(-1)
    _check(probabilities, labels)
    return np.asarray([_binned_gap(probabilities[:, k], labels == k, num_bins)
                       for k in range(probabilities.shape[1])])


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against ``labels``.

    Args:
        logits: float ``[N, K]``.
        labels: int ``[N]``.
        temperature: ``T > 0``.
    """
    logits, labels = np.asarray(logits, np.float64) / float(temperature), np.asarray(labels).reshape(-1)
    _check(logits, labels)
    top = logits.max(axis=-1, keepdims=True)
    log_normaliser = (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))[:, 0]
    return float(np.mean(log_normaliser - logits[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, *, grid_points: int = 161, refine_steps: int = 60) -> float:
    """The ``T > 0`` minimising ``negative_log_likelihood(logits, labels, T)``: a grid over log T, then a
    golden-section search around the best grid point.

    The NLL is convex in ``1 / T``, hence unimodal in ``log T``, so the search finds the minimum within the
    range ``exp(LOG_TEMPERATURE_RANGE)``; deterministic (no random start). Where the optimum lies outside,
    the search returns the nearer end: logits that separate the data perfectly (the NLL falls as T -> 0) give
    the lower end, logits no better than chance (an untrained model; the NLL falls towards uniform
    probabilities as T grows) the upper end.

    Args:
        logits: float ``[N, K]`` of a held-out split (the validation split: fitting on test would leak).
        labels: int ``[N]``.
        grid_points: points of the coarse grid.
        refine_steps: golden-section iterations (each shrinks the bracket by 0.618).

    Returns:
        ``T`` as a float; divide logits by it before the softmax. The argmax, hence accuracy, is unchanged.
    """
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels).reshape(-1)
    _check(logits, labels)

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, float(np.exp(log_t)))

    grid = np.linspace(*LOG_TEMPERATURE_RANGE, grid_points)
    values = [loss(point) for point in grid]
    best = int(np.argmin(values))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, grid_points - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    left_value, right_value = loss(left), loss(right)
    for _ in range(refine_steps):
        if left_value <= right_value:
            high, right, right_value = right, left, left_value
            left = high - ratio * (high - low)
            left_value = loss(left)
        else:
            low, left, left_value = left, right, right_value
            right = low + ratio * (high - low)
            right_value = loss(right)
    return float(np.exp((low + high) / 2.0))


def calibration_summary(logits, labels, class_names: Sequence[str], *, validation_logits=None,
                        validation_labels=None, num_bins: int = NUM_BINS) -> dict:
    """The ``calibration`` field of eval.json.

    Args:
        logits: float ``[N, K]`` of the evaluated split (the test split).
        labels: int ``[N]``.
        class_names: ``K`` names, in label order.
        validation_logits, validation_labels: ``[M, K]`` and ``[M]`` of the split the temperature is fitted
            on; None skips temperature scaling.
        num_bins: ``B``.

    Returns:
        ``{'ece', 'per_class_ece' ({name: ECE}), 'temperature', 'ece_after_temperature',
        'per_class_ece_after_temperature', 'num_bins', 'bins', 'bins_after_temperature'}``: ECEs are fractions
        in [0, 1], ``bins`` are ``binned``'s top-label bins (for the reliability diagram); the temperature
        fields are None without temperature scaling.
    """
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ValueError(f"reliability: logits {logits.shape} do not match {len(class_names)} class names")

    def measured(probabilities: np.ndarray) -> tuple[float, dict, dict]:
        per_class = per_class_expected_calibration_error(probabilities, labels, num_bins)
        bins = binned(probabilities.max(axis=-1), probabilities.argmax(axis=-1) == labels, num_bins)
        return (expected_calibration_error(probabilities, labels, num_bins),
                {name: float(value) for name, value in zip(class_names, per_class)}, bins)

    ece, per_class, bins = measured(softmax(logits))
    summary = {"ece": ece, "per_class_ece": per_class, "temperature": None, "ece_after_temperature": None,
               "per_class_ece_after_temperature": None, "num_bins": int(num_bins), "bins": bins,
               "bins_after_temperature": None}
    if validation_logits is not None:
        temperature = fit_temperature(validation_logits, validation_labels)
        scaled = measured(softmax(logits / temperature))
        summary.update(temperature=temperature, ece_after_temperature=scaled[0],
                       per_class_ece_after_temperature=scaled[1], bins_after_temperature=scaled[2])
    return summary
