"""PNG figures of a run: per-class curves, class epsilon/beta, the confusion matrix, a decoupling grid, the
reliability diagram of the test probabilities, and (for predict) where the model looks on an image.

Everything renders with matplotlib's Agg backend (no display needed) and returns the path it wrote.
The curves are drawn from the records of ``metrics.jsonl`` (see ``flax_fld.reporting.metric_writers``):
``"epoch"`` records carry the per-class lists ``class_epsilon [K]``, ``class_beta [K]``,
``train_adv_class_acc [K]`` (fractions) and ``val_clean_class_acc [K]``, ``val_robust_class_acc [K]``
(percent); ``"train"`` records carry scalar losses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# (record key, panel title, multiply by) for the per-class accuracy figure; all panels end up in percent.
_ACCURACY_PANELS = (
    ("val_clean_class_acc", "validation clean accuracy (%)", 1.0),
    ("val_robust_class_acc", "validation robust accuracy (%)", 1.0),
    ("train_adv_class_acc", "train adversarial accuracy (%)", 100.0),
)
# epsilon is shown in 1/255 pixel units, the unit every attack radius in the configs is written in.
_CALIBRATION_PANELS = (
    ("class_epsilon", "class epsilon (x 1/255), Eq. 1", 255.0),
    ("class_beta", "class beta, Eq. 2", 1.0),
)
# Scalars of "train" records that are losses (plotted); accuracies and the rest are left to TensorBoard.
_LOSS_KEYS = ("total", "loss", "Lc", "Ls", "Lat", "lc", "ls", "lat")


def _last_record_per_epoch(records: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    """Records of ``kind`` sorted by epoch; a resumed run may log an epoch twice, and the later one wins."""
    by_epoch: dict[int, Mapping[str, Any]] = {}
    for record in records:
        if record.get("kind") == kind and "epoch" in record:
            by_epoch[int(record["epoch"])] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _class_series(epoch_records: Sequence[Mapping[str, Any]], key: str,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs [E], values [E, K]) for the records that carry ``key``; None when none do."""
    epochs, rows = [], []
    for record in epoch_records:
        if key not in record:
            continue
        values = np.asarray(record[key], dtype=np.float64)
        if values.shape != (num_classes,):
            raise ValueError(f"metrics key {key!r} at epoch {record['epoch']} has shape {values.shape}, "
                             f"expected ({num_classes},) for the class names")
        epochs.append(int(record["epoch"]))
        rows.append(values)
    if not rows:
        return None
    return np.asarray(epochs), np.stack(rows)


def _plot_panels(epoch_records, panels, class_names, title, path) -> str | None:
    """One figure with a panel per available key, one line per class; None if no key is present."""
    series = []
    for key, panel_title, scale in panels:
        found = _class_series(epoch_records, key, len(class_names))
        if found is not None:
            series.append((panel_title, found[0], found[1] * scale))
    if not series:
        return None
    figure, axes = plt.subplots(1, len(series), figsize=(4.6 * len(series), 3.6), squeeze=False)
    for axis, (panel_title, epochs, values) in zip(axes[0], series):
        for class_index, name in enumerate(class_names):
            axis.plot(epochs, values[:, class_index], marker="o", markersize=3, label=name)
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_losses(records: Sequence[Mapping[str, Any]], path: str) -> str | None:
    """Training losses against the step, one line per loss term; None if no train record has one."""
    train_records = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r["step"])
    keys = [k for k in _LOSS_KEYS if any(isinstance(r.get(k), (int, float)) for r in train_records)]
    if not keys:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for key in keys:
        points = [(r["step"], r[key]) for r in train_records if isinstance(r.get(key), (int, float))]
        steps, values = zip(*points)
        axis.plot(steps, values, label=key)
    axis.set_xlabel("step")
    axis.set_title("training losses (Eq. 4 terms)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_class_curves(records: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                      out_dir: str) -> list[str]:
    """Writes the per-epoch curves of a run and returns the PNG paths written.

    - ``class_accuracy.png``: per-class clean and adversarial (robust) accuracy per epoch;
    - ``class_calibration.png``: per-class epsilon_i (Eq. 1) and beta_i (Eq. 2) per epoch;
    - ``training_losses.png``: the loss terms of the ``"train"`` records per step (if any).

    ``records`` are metrics.jsonl records of any kind (``read_metrics(workdir)``); a figure whose keys are
    missing from every record is skipped, so a run without adversarial training still gets its plots.
    """
    os.makedirs(out_dir, exist_ok=True)
    epoch_records = _last_record_per_epoch(records, "epoch")
    written = [
        _plot_panels(epoch_records, _ACCURACY_PANELS, class_names, "per-class accuracy",
                     os.path.join(out_dir, "class_accuracy.png")),
        _plot_panels(epoch_records, _CALIBRATION_PANELS, class_names, "class-adaptive calibration",
                     os.path.join(out_dir, "class_calibration.png")),
        _plot_losses(records, os.path.join(out_dir, "training_losses.png")),
    ]
    return [path for path in written if path is not None]


def plot_confusion_matrix(confusion: Any, class_names: Sequence[str], path: str, *,
                          title: str = "confusion matrix") -> str:
    """Writes the confusion matrix ``[K, K]`` (rows = true class) as a PNG and returns ``path``.

    Cells are coloured by the row-normalised fraction (per-class recall), so a small class is as visible
    as a large one; each cell shows the count and that percentage.
    """
    counts = np.asarray(confusion)
    num_classes = len(class_names)
    if counts.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix has shape {counts.shape}, expected ({num_classes}, {num_classes})")
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape, np.float64), where=row_totals > 0)
    size = 1.2 + 0.9 * num_classes
    figure, axis = plt.subplots(figsize=(size + 1.0, size))
    image = axis.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(num_classes):
        for column in range(num_classes):
            colour = "white" if fractions[row, column] > 0.6 else "black"
            axis.text(column, row, f"{int(counts[row, column])}\n{100 * fractions[row, column]:.1f}%",
                      ha="center", va="center", fontsize=8, color=colour)
    axis.set_xticks(range(num_classes), labels=class_names, rotation=30, ha="right")
    axis.set_yticks(range(num_classes), labels=class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of true class")
    figure.tight_layout()
    _makedirs_for(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_robust_curves(curves: Mapping[str, Mapping[float, Mapping[str, float]]], path: str, *,
                       title: str = "robust accuracy against the attack radius") -> str:
    """Writes one line per method of robust Average (%) against the L-inf radius (in 1/255) as a PNG.

    ``curves``: ``{method: {radius_in_255ths: {'mean', 'std', 'n'}}}``; the std over seeds is a band.
    """
    figure, axis = plt.subplots(figsize=(6.0, 4.0))
    for method, points in curves.items():
        radii = sorted(points)
        means = np.asarray([points[r]["mean"] for r in radii])
        stds = np.asarray([points[r]["std"] for r in radii])
        axis.plot(radii, means, marker="o", label=method)
        axis.fill_between(radii, means - stds, means + stds, alpha=0.2)
    axis.set_xscale("log", base=2)
    ticks = sorted({radius for points in curves.values() for radius in points})
    axis.set_xticks(ticks, labels=[f"{radius:g}" for radius in ticks])
    axis.set_xlabel("L-inf radius (x/255)")
    axis.set_ylabel("robust average accuracy (%)")
    axis.set_ylim(-2, 102)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    _makedirs_for(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_reliability_diagram(calibration: Mapping[str, Any], path: str, *,
                             title: str = "reliability diagram (top label)") -> str:
    """Writes the reliability diagram of eval.json's ``calibration`` (``reliability.calibration_summary``).

    Left: accuracy against mean confidence per bin (``bins``: ``count [B]``, ``confidence [B]``,
    ``accuracy [B]``), one bar per occupied bin, the diagonal as perfect calibration, and the bins after
    temperature scaling as points when ``bins_after_temperature`` is set. Right: how many examples fall in
    each bin, since a bar over two images says little. Returns ``path``.
    """
    num_bins = int(calibration["num_bins"])
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / num_bins
    bins = calibration["bins"]
    count = np.asarray(bins["count"])
    occupied = count > 0
    figure, (axis, histogram) = plt.subplots(1, 2, figsize=(9.2, 4.0), gridspec_kw={"width_ratios": [3, 2]})
    axis.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    axis.bar(centres[occupied], np.asarray(bins["accuracy"])[occupied], width=width * 0.9, alpha=0.7,
             edgecolor="black", label=f"model (ECE {100 * calibration['ece']:.1f} %)")
    after = calibration.get("bins_after_temperature")
    if after is not None:
        kept = np.asarray(after["count"]) > 0
        axis.plot(np.asarray(after["confidence"])[kept], np.asarray(after["accuracy"])[kept], marker="o",
                  linestyle="none", color="tab:red",
                  label=(f"after temperature T = {calibration['temperature']:.2f} "
                         f"(ECE {100 * calibration['ece_after_temperature']:.1f} %)"))
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence (top probability)")
    axis.set_ylabel("accuracy")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left")
    histogram.bar(centres, count, width=width * 0.9, alpha=0.7, edgecolor="black")
    histogram.set_xlim(0, 1)
    histogram.set_xlabel("confidence (top probability)")
    histogram.set_ylabel("examples")
    histogram.yaxis.set_major_locator(MaxNLocator(integer=True))
    histogram.set_title("examples per bin (before temperature)", fontsize=10)
    histogram.grid(alpha=0.3)
    figure.tight_layout()
    _makedirs_for(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _makedirs_for(path: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)


def _normalise_channel(channel: np.ndarray) -> np.ndarray:
    """Min-max scales one feature map [H, W] to [0, 1] for display (a constant map becomes 0)."""
    low, high = float(channel.min()), float(channel.max())
    if high - low < 1e-12:
        return np.zeros_like(channel)
    return (channel - low) / (high - low)


def _show_image(axis, image: np.ndarray) -> None:
    """Shows an image [H, W, C] in [0, 1] with C in {1, 3}."""
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        axis.imshow(image)


def plot_decoupling_grid(images: Any, x_hat: Any, feat1: Any, feat2: Any, labels: Sequence[int] | None,
                         class_names: Sequence[str], path: str, *, num_channels: int = 3,
                         predictions: Sequence[int] | None = None,
                         probabilities: Any | None = None) -> str:
    """Writes a grid: one row per image with the image, IC2's reconstruction and decoupled feature maps.

    Args:
        images: ``[N, H, W, C]`` in [0, 1], C in {1, 3}.
        x_hat: ``[N, H, W, C]`` IC2 reconstruction, or None (baseline: no decouplers).
        feat1, feat2: ``[N, H, W, F]`` IC1 and IC2 features, or None; the first ``num_channels`` channels
            of each are shown, each min-max scaled on its own.
        labels: true class per image, or None when unknown (prediction on new images).
        class_names: ``[K]`` names for the titles.
        path: output PNG.
        predictions, probabilities: optional predicted class ``[N]`` and its probability ``[N]`` (or all
            class probabilities ``[N, K]``) for the row title.
    Returns:
        ``path``.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, 1 or 3], got shape {images.shape}")
    count = images.shape[0]
    arrays = {"x_hat": x_hat, "feat1": feat1, "feat2": feat2}
    for name, value in arrays.items():
        if value is not None:
            value = np.asarray(value, np.float32)
            if value.ndim != 4 or value.shape[:3] != images.shape[:3]:
                raise ValueError(f"{name} must be [N, H, W, *] matching images {images.shape[:3]}, "
                                 f"got shape {value.shape}")
            arrays[name] = value
    columns: list[tuple[str, Any]] = [("image", lambda i: _show_image_fn(images[i]))]
    if arrays["x_hat"] is not None:
        columns.append(("reconstruction", lambda i: _show_image_fn(arrays["x_hat"][i])))
    for name, label in (("feat1", "IC1"), ("feat2", "IC2")):
        feature = arrays[name]
        if feature is None:
            continue
        for channel in range(min(num_channels, feature.shape[-1])):
            columns.append((f"{label} feature {channel}",
                            lambda i, f=feature, c=channel: _feature_fn(f[i, ..., c])))

    figure, axes = plt.subplots(count, len(columns), figsize=(1.9 * len(columns), 2.0 * count + 0.3),
                                squeeze=False)
    for row in range(count):
        for column, (title, draw) in enumerate(columns):
            axis = axes[row][column]
            draw(row)(axis)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=8)
        axes[row][0].set_ylabel(_row_label(row, labels, class_names, predictions, probabilities), fontsize=8)
    figure.tight_layout()
    _makedirs_for(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_saliency(image: Any, saliency: Any, class_name: str, path: str, *, probability: float | None = None,
                  method: str = "integrated gradients", note: str = "") -> str:
    """Writes where the model looks for one image: the image in grey, and again under ``saliency`` as a
    semi-transparent heat overlay with a colorbar; the title names the predicted grade and ``method``.

    Args:
        image: ``[H, W, C]`` in [0, 1], C in {1, 3} (RGB is shown as its BT.601 luma).
        saliency: ``[H, W]`` in [0, 1] (``flax_fld.evaluation.saliency.saliency_map``).
        class_name: the grade the map explains (the predicted one); ``probability`` its probability.
        path: output PNG.
        note: an optional second title line (predict shows the completeness check there).
    Returns:
        ``path``.
    """
    image = np.asarray(image, np.float32)
    saliency = np.asarray(saliency, np.float32)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [H, W, 1 or 3], got shape {image.shape}")
    if saliency.shape != image.shape[:2]:
        raise ValueError(f"saliency must be [H, W] matching the image {image.shape[:2]}, got shape {saliency.shape}")
    grey = np.clip(image @ np.asarray([0.299, 0.587, 0.114], np.float32) if image.shape[-1] == 3
                   else image[..., 0], 0.0, 1.0)
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.4, 3.6))
    for axis in (left, right):
        axis.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0)
        axis.set_xticks([])
        axis.set_yticks([])
    left.set_title("image", fontsize=9)
    heat = right.imshow(saliency, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55)
    right.set_title("saliency over the image", fontsize=9)
    figure.colorbar(heat, ax=right, fraction=0.046, pad=0.04, label="attribution (fraction of the maximum)")
    title = f"predicted {class_name}" + ("" if probability is None else f" ({100 * float(probability):.0f}%)")
    figure.suptitle(title + f": where the model looks ({method})" + (f"\n{note}" if note else ""), fontsize=10)
    figure.tight_layout()
    _makedirs_for(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _show_image_fn(image: np.ndarray):
    return lambda axis: _show_image(axis, image)


def _feature_fn(channel: np.ndarray):
    return lambda axis: axis.imshow(_normalise_channel(channel), cmap="viridis", vmin=0.0, vmax=1.0)


def _row_label(row: int, labels, class_names, predictions, probabilities) -> str:
    parts = []
    if labels is not None:
        parts.append(f"true: {class_names[int(labels[row])]}")
    if predictions is not None:
        predicted = int(predictions[row])
        text = f"pred: {class_names[predicted]}"
        if probabilities is not None:
            probability = np.asarray(probabilities[row])
            value = float(probability[predicted]) if probability.ndim == 1 else float(probability)
            text += f" ({100 * value:.0f}%)"
        parts.append(text)
    return "\n".join(parts)
