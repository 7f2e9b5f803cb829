"""Everything a run prints or writes besides checkpoints: console lines, metrics.jsonl, eval.json, plots.

``RunOutputs`` is the training loop's side: on a pod every process computes the same metrics, and one writer
(process 0) keeps metrics.jsonl, TensorBoard, the plots and the console free of duplicates. The loop calls
its methods unconditionally; on the other processes they do nothing, so the loop carries no
``if process_index == 0`` branches. ``write_report`` and ``plot_decoupling_examples`` serve
``launch/eval.py`` too.
"""

import os
from typing import Sequence

import jax
import ml_collections
import numpy as np

from flax_fld.data import input_pipeline
from flax_fld.models import fld
from flax_fld.reporting import metric_writers, phase_clock, plots, report_fields, tables
from flax_fld.runtime import atomic_files


class RunOutputs:
    """Console lines, metrics.jsonl/TensorBoard and plots of one run in ``workdir``.

    Args:
        workdir: the run directory.
        class_names: label order of the per-class lists.
        total_steps, initial_step, log_every: for the progress line with its ETA.
        plot_every: redraw the per-class curves every this many epochs (0: only at the end).
        active: whether this process writes (process 0).
        clock: the run's ``PhaseClock`` (plots count as ``plots``); a fresh one when not given.
    """

    def __init__(self, workdir: str, class_names: Sequence[str], *, total_steps: int, initial_step: int,
                 log_every: int, plot_every: int, active: bool,
                 clock: phase_clock.PhaseClock | None = None) -> None:
        self.workdir, self.class_names, self.active = workdir, tuple(class_names), active
        self.clock = clock or phase_clock.PhaseClock()
        self.plot_every = int(plot_every)
        self.plots_dir = os.path.join(workdir, "plots")
        self.writer = None
        if active:
            metric_writers.drop_partial_metrics_record(workdir)  # a run killed mid-record must not garble the next
            self.writer = metric_writers.MetricWriter(workdir, class_names=self.class_names)
        self.progress = metric_writers.Progress(total_steps, initial_step=initial_step, every_steps=log_every,
                                                print_fn=print if active else None)

    def say(self, line: str) -> None:
        if self.active:
            print(line, flush=True)

    def train_window(self, step: int, epoch: int, summary: dict) -> None:
        """Metrics averaged over the last logging window (``epoch`` 1-based)."""
        if self.active:
            self.writer.write("train", step, {"epoch": epoch, **summary})
        self.progress.update(step, {"epoch": epoch, "loss": summary["loss"], "clean_acc": summary["clean_acc"],
                                    "adv_acc": summary["adv_acc"]})

    def epoch_done(self, step: int, record: dict, line: str) -> None:
        """The epoch's record to metrics.jsonl, its line to the console, the curves every ``plot_every``."""
        if not self.active:
            return
        self.writer.write("epoch", step, record)
        print(line, flush=True)
        if self.plot_every > 0 and record["epoch"] % self.plot_every == 0:
            with self.clock.phase("plots"):
                plots.plot_class_curves(metric_writers.read_metrics(self.workdir), self.class_names, self.plots_dir)

    def unsettled_classes(self) -> list[str]:
        """Classes whose validation accuracy (metrics.jsonl) fell from >= 50 % to 0 late; [] where inactive."""
        if not self.active:
            return []
        # A resumed run logs again the epochs after its checkpoint: the last record of each epoch counts.
        by_epoch = {r["epoch"]: r["val_clean_class_acc"] for r in metric_writers.read_metrics(self.workdir, "epoch")}
        curves = [by_epoch[epoch] for epoch in sorted(by_epoch)]
        return report_fields.unsettled_classes(curves, list(self.class_names))

    def test_report(self, step: int, report: dict, config, decoupling_grid) -> None:
        """eval.json, the confusion matrix, the curves, the decoupling grid and the paper-style table.

        ``report`` is written as given (its ``unsettled_classes`` come from ``unsettled_classes()``).
        ``decoupling_grid(path)`` draws the grid of test images (a callable, so other processes never run it).
        """
        if not self.active:
            return
        self.writer.write("eval", step, {"epoch": int(config.train.num_epochs), "test_average": report["average"],
                                         "test_best_worst": report["best_worst"],
                                         "test_balanced_accuracy": report["balanced_accuracy"]})
        with self.clock.phase("plots"):
            table = write_report(self.workdir, report, config)
            plots.plot_class_curves(metric_writers.read_metrics(self.workdir), self.class_names, self.plots_dir)
            decoupling_grid(os.path.join(self.plots_dir, "decoupling_grid.png"))
        print(f"\ntest split, {report['checkpoint']}:\n{table}", flush=True)
        warning = report_fields.collapse_warning(report)
        if report["unsettled_classes"]:
            warning += (f"\nWARNING: validation accuracy of {', '.join(report['unsettled_classes'])} fell from "
                        ">= 50 % to 0 within the last 3 epochs: train longer or lower the learning rate")
        if warning.strip():
            print(warning.strip(), flush=True)

    def time_by_phase(self, step: int, compiled: str = "") -> None:
        """The run's wall time per phase: a ``time`` record in metrics.jsonl and the console's last lines
        (``compiled``: the compile log's summary of the run, in whatever thread and phase it compiled)."""
        if not self.active:
            return
        seconds = self.clock.seconds()
        self.writer.write("time", step, seconds)
        print(self.clock.line(seconds) + (f"\n{compiled}" if compiled else ""), flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_report(workdir: str, report: dict, config: ml_collections.ConfigDict) -> str:
    """Writes WORKDIR/eval.json, WORKDIR/plots/confusion_matrix.png and, when the report has ``calibration``,
    WORKDIR/plots/reliability_diagram.png; returns the paper-style table with 95 % intervals, a line on what
    the intervals are and the calibration line.

    A report of another split than ``test`` goes to ``eval_<split>.json`` / ``confusion_matrix_<split>.png`` /
    ``reliability_diagram_<split>.png``.
    """
    suffix = "" if report["split"] == "test" else f"_{report['split']}"
    atomic_files.write_json_atomically(os.path.join(workdir, f"eval{suffix}.json"), report)
    plots_dir = os.path.join(workdir, "plots")
    os.makedirs(plots_dir, exist_ok=True)
    plots.plot_confusion_matrix(
        report["confusion_matrix"], report["class_names"], os.path.join(plots_dir, f"confusion_matrix{suffix}.png"),
        title=f"{report['split']} confusion matrix (clean)",
    )
    if report.get("calibration"):
        plots.plot_reliability_diagram(report["calibration"],
                                       os.path.join(plots_dir, f"reliability_diagram{suffix}.png"),
                                       title=f"{report['split']} reliability diagram (clean, top label)")
    table = tables.format_table(report_fields.table_rows(report, report_fields.method_name(config)), intervals=True)
    return "\n".join(line for line in (table + report_fields.INTERVAL_NOTE, report_fields.calibration_line(report))
                     if line) + "\n"


def plot_decoupling_examples(
    model: fld.FLDModel, variables: dict, config: ml_collections.ConfigDict, data: input_pipeline.DataSource,
    path: str
) -> str | None:
    """The first ``train.num_grid_examples`` test images with IC2's reconstruction and both feature maps."""
    count = int(config.train.get("num_grid_examples", 8))
    if count <= 0:
        return None
    batch = next(iter(input_pipeline.eval_batches(
        data, split="test", per_device_batch_size=count, local_device_count=1
    )))
    mask = batch["mask"].reshape(-1)
    images = batch["image"].reshape((-1,) + batch["image"].shape[2:])[mask]
    labels = batch["label"].reshape(-1)[mask]
    forward = jax.jit(lambda v, x: fld.forward(model, v, x, train=False))
    logits, parts = forward(variables, images)
    probabilities = np.asarray(jax.nn.softmax(logits, -1))
    return plots.plot_decoupling_grid(
        images, parts.get("x_hat"), parts.get("feat1"), parts.get("feat2"), labels.tolist(),
        list(data.info.class_names), path, predictions=probabilities.argmax(-1).tolist(),
        probabilities=probabilities,
    )
