"""Training logs: a JSON-lines file, TensorBoard event files, a finiteness guard and a console progress line.

The JSON-lines file (``WORKDIR/metrics.jsonl``) is the source of truth: every record is one flat JSON object
``{"kind": "train" | "epoch" | "eval" | "time", "step": int, ...}`` whose values are scalars or lists of floats (the
per-class ``[K]`` arrays such as ``class_epsilon``). Plots and reports are made from it with
:func:`read_metrics`, so they never depend on TensorBoard. TensorBoard gets the same scalars, and each
per-class list as one scalar per class (``<kind>/<name>/<class>``).

Only one process should write (``jax.process_index() == 0`` in a multi-host run); the caller decides.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from flax_fld.reporting.progress import format_duration

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"

# Keys that locate a record rather than measure something; they are not sent to TensorBoard as scalars.
_INDEX_KEYS = ("kind", "step", "epoch")


def _to_jsonable(key: str, value: Any) -> Any:
    """Converts a metric value (python/numpy/jax scalar or 1-D array) to a JSON-friendly python value."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(key, v) for v in value]
    # numpy and jax arrays both convert with np.asarray (this also waits for a jax computation to finish).
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"metric {key!r} has unsupported dtype {array.dtype}")
    if array.ndim == 0:
        return array.item()
    if array.ndim == 1:
        return array.tolist()
    raise ValueError(f"metric {key!r} must be a scalar or a 1-D list, got shape {array.shape}")


class MetricWriter:
    """Appends metric records to ``WORKDIR/metrics.jsonl`` and to TensorBoard event files.

    Args:
        workdir: run directory; created if missing. Existing records are kept (a resumed run appends).
        enable_tensorboard: also write ``WORKDIR/tensorboard/`` event files with tensorboardX.
        class_names: optional names used as TensorBoard tags for per-class lists (default ``class_<i>``).
    """

    def __init__(self, workdir: str, *, enable_tensorboard: bool = True,
                 class_names: Sequence[str] | None = None) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, METRICS_FILENAME)
        self._class_names = tuple(class_names) if class_names is not None else None
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")
        self._tensorboard = None
        if enable_tensorboard:
            # Imported lazily so that reading metrics never needs tensorboardX.
            import tensorboardX
            self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIRNAME))

    def write(self, kind: str, step: int, metrics: Mapping[str, Any]) -> dict:
        """Writes one record; returns it as stored (python scalars and lists).

        ``metrics`` values: scalars (python, numpy or 0-d jax arrays) or 1-D lists/arrays (per-class values).
        ``kind`` and ``step`` in ``metrics`` are not allowed (they are the arguments).
        """
        if self._file is None:
            raise ValueError(f"MetricWriter for {self.path} is closed")
        for reserved in ("kind", "step"):
            if reserved in metrics:
                raise ValueError(f"metric key {reserved!r} is reserved (pass it as an argument)")
        record: dict[str, Any] = {"kind": str(kind), "step": int(step)}
        for key, value in metrics.items():
            record[str(key)] = _to_jsonable(key, value)
        # One line per record and a flush per write, so a crash loses at most the record being written.
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            self._write_tensorboard(record)
        return record

    def _write_tensorboard(self, record: Mapping[str, Any]) -> None:
        kind, step = record["kind"], record["step"]
        for key, value in record.items():
            if key in _INDEX_KEYS or isinstance(value, (str, bool)) or value is None:
                continue
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, (int, float)):
                        self._tensorboard.add_scalar(f"{kind}/{key}/{self._class_tag(index)}", item, step)
            else:
                self._tensorboard.add_scalar(f"{kind}/{key}", value, step)
        self._tensorboard.flush()

    def _class_tag(self, index: int) -> str:
        if self._class_names is not None and index < len(self._class_names):
            return self._class_names[index]
        return f"class_{index}"

    def close(self) -> None:
        """Flushes and closes both outputs; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
    """Raises ``FloatingPointError("non-finite <key>=<value> at step N")`` if any numeric metric is NaN/inf.

    Scalars and per-class lists are checked; strings are ignored. Call it before saving a checkpoint so the
    last good checkpoint is never overwritten by a diverged state.
    """
    for key, value in metrics.items():
        if isinstance(value, (str, bool)) or value is None:
            continue
        array = np.asarray(value)
        if array.dtype.kind not in "fc":
            continue  # integers and booleans are always finite
        if not np.all(np.isfinite(array)):
            shown = array.item() if array.ndim == 0 else array.tolist()
            raise FloatingPointError(f"non-finite {key}={shown} at step {int(step)}")


def _format_metric(key: str, value: Any) -> str | None:
    """One ``name value`` item of the progress line; ``None`` for values that do not fit on a line."""
    if isinstance(value, (str, bool)) or value is None:
        return None
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype.kind not in "biuf":
        return None
    number = float(array)
    if key.endswith("acc") or key.endswith("accuracy"):
        # Accuracies are logged as fractions in [0, 1] by the train step; shown as percent. A value above 1
        # is taken to be a percent already.
        percent = number * 100.0 if abs(number) <= 1.0 else number
        return f"{key} {percent:.1f}%"
    return f"{key} {number:.4g}"


class Progress:
    """Console progress with throughput and ETA.

    ``update(step, metrics)`` returns (and prints, unless ``print_fn`` is None) a line such as
    ``step 120/960 (12.5%) epoch 2 | loss 1.23 adv_acc 45.1% | 3.2 it/s | ETA 4m21s`` every ``every_steps``
    steps and at the last step; otherwise it returns None. The rate is measured over the steps since the
    previous line (so it follows the current speed, and a resumed run does not count restored steps), and
    the ETA is ``(total_steps - step) / rate``.

    Args:
        total_steps: step number at which training ends.
        initial_step: the step training starts (or resumes) from.
        every_steps: reporting period in steps.
        print_fn: where lines go (default: ``print`` to stdout, flushed); None to only return them.
        time_fn: clock in seconds (injectable for tests).
    """

    def __init__(self, total_steps: int, initial_step: int = 0, every_steps: int = 10, *,
                 print_fn: Callable[[str], Any] | None = print,
                 time_fn: Callable[[], float] = time.perf_counter) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if every_steps <= 0:
            raise ValueError(f"every_steps must be positive, got {every_steps}")
        self.total_steps = int(total_steps)
        self.every_steps = int(every_steps)
        self._print_fn = print_fn
        self._time_fn = time_fn
        self._last_step = int(initial_step)
        self._last_time = time_fn()

    def rate_and_eta(self, step: int, now: float) -> tuple[float, float]:
        """Steps per second since the previous report and the seconds left at that rate (inf if unknown)."""
        elapsed = now - self._last_time
        steps_done = step - self._last_step
        if elapsed <= 0 or steps_done <= 0:
            return 0.0, math.inf
        rate = steps_done / elapsed
        return rate, max(self.total_steps - step, 0) / rate

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> str | None:
        step = int(step)
        if step % self.every_steps != 0 and step != self.total_steps:
            return None
        now = self._time_fn()
        rate, eta = self.rate_and_eta(step, now)
        self._last_step, self._last_time = step, now
        metrics = dict(metrics or {})
        head = f"step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%)"
        if "epoch" in metrics:
            head += f" epoch {int(metrics.pop('epoch'))}"
        items = [item for item in (_format_metric(k, v) for k, v in metrics.items()) if item is not None]
        parts = [head]
        if items:
            parts.append(" ".join(items))
        parts.append(f"{rate:.3g} it/s" if rate > 0 else "? it/s")
        parts.append(f"ETA {format_duration(eta)}")
        line = " | ".join(parts)
        if self._print_fn is print:
            print(line, flush=True, file=sys.stdout)
        elif self._print_fn is not None:
            self._print_fn(line)
        return line


def read_metrics(path: str, kind: str | None = None) -> list[dict]:
    """Reads a metrics.jsonl file (or a workdir containing one) into a list of records, in file order.

    ``kind`` keeps only records of that kind. A truncated final line (the process died while writing it) is
    ignored; any other malformed line raises ``ValueError`` naming the file and line number.
    """
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILENAME)
    if not os.path.exists(path):
        raise ValueError(f"no metrics file at {path}")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            is_last = all(not rest.strip() for rest in lines[number:])
            if is_last:
                break
            raise ValueError(f"{path}:{number}: malformed metrics record ({error.msg})") from None
        if not isinstance(record, dict) or "kind" not in record or "step" not in record:
            raise ValueError(f"{path}:{number}: a metrics record must be an object with 'kind' and 'step'")
        if kind is None or record["kind"] == kind:
            records.append(record)
    return records


def drop_partial_metrics_record(workdir: str) -> None:
    """Cuts a half-written last line off WORKDIR/metrics.jsonl before a resumed run appends to it.

    A run killed while writing a record leaves a line without its newline; ``metric_writers.read_metrics``
    skips it while it is the last line, but the resumed run's first record would be glued onto it.
    """
    path = os.path.join(workdir, METRICS_FILENAME)
    if not os.path.exists(path):
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
