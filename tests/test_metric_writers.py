"""Tests for flax_fld.reporting.metric_writers: jsonl round trip, TensorBoard output, finiteness guard, progress/ETA."""

import glob
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from flax_fld.reporting import metric_writers


def test_jsonl_round_trip_keeps_scalars_lists_and_order(tmp_path):
    workdir = str(tmp_path / "run")
    with metric_writers.MetricWriter(workdir, enable_tensorboard=False) as writer:
        writer.write("train", 10, {"epoch": 0, "total": jnp.float32(1.5), "adv_acc": np.float64(0.25)})
        writer.write("epoch", 12, {"epoch": 0, "class_epsilon": jnp.array([0.01, 0.02, 0.03]),
                                   "val_clean_class_acc": [50.0, 75.0, 100.0], "count": np.int32(7)})
        writer.write("eval", 12, {"average": 80.5, "split": "test"})
    records = metric_writers.read_metrics(workdir)
    assert [r["kind"] for r in records] == ["train", "epoch", "eval"]
    assert records[0] == {"kind": "train", "step": 10, "epoch": 0, "total": 1.5, "adv_acc": 0.25}
    np.testing.assert_allclose(records[1]["class_epsilon"], [0.01, 0.02, 0.03], rtol=1e-6)
    assert records[1]["val_clean_class_acc"] == [50.0, 75.0, 100.0]
    assert records[1]["count"] == 7 and isinstance(records[1]["count"], int)
    assert records[2]["split"] == "test"
    # Each line is a standalone flat JSON object.
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 3 and all(isinstance(json.loads(line), dict) for line in lines)
    assert [r["step"] for r in metric_writers.read_metrics(workdir, kind="epoch")] == [12]


def test_writer_appends_across_instances_and_flushes_each_write(tmp_path):
    workdir = str(tmp_path)
    first = metric_writers.MetricWriter(workdir, enable_tensorboard=False)
    first.write("train", 1, {"total": 2.0})
    # Readable before close: a crash right after a write loses nothing.
    assert len(metric_writers.read_metrics(workdir)) == 1
    first.close()
    first.close()  # idempotent
    with metric_writers.MetricWriter(workdir, enable_tensorboard=False) as second:
        second.write("train", 2, {"total": 1.0})
    assert [r["step"] for r in metric_writers.read_metrics(workdir)] == [1, 2]
    with pytest.raises(ValueError, match="closed"):
        first.write("train", 3, {"total": 0.5})


def test_writer_rejects_reserved_keys_and_matrices(tmp_path):
    with metric_writers.MetricWriter(str(tmp_path), enable_tensorboard=False) as writer:
        with pytest.raises(ValueError, match="'step'"):
            writer.write("train", 1, {"step": 3})
        with pytest.raises(ValueError, match="'confusion'.*shape"):
            writer.write("eval", 1, {"confusion": np.zeros((2, 2))})


def _tensorboard_tags(directory):
    """Scalar tags in the event files, read with tensorboardX's own protobufs (no TensorFlow needed)."""
    import struct

    from tensorboardX.proto import event_pb2

    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        with open(path, "rb") as handle:
            data = handle.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(payload)
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


def test_tensorboard_scalar_tags(tmp_path):
    workdir = str(tmp_path)
    with metric_writers.MetricWriter(workdir, class_names=("normal", "mild")) as writer:
        writer.write("train", 5, {"epoch": 0, "total": 0.7})
        writer.write("epoch", 5, {"epoch": 0, "class_beta": [0.5, 0.6], "note": "text is skipped"})
    tags = _tensorboard_tags(os.path.join(workdir, "tensorboard"))
    assert tags == {"train/total", "epoch/class_beta/normal", "epoch/class_beta/mild"}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_raises_and_names_key_and_step(bad):
    with pytest.raises(FloatingPointError, match=r"non-finite Lat=.* at step 42"):
        metric_writers.check_finite({"total": 1.0, "Lat": bad, "epoch": 3}, step=42)
    with pytest.raises(FloatingPointError, match=r"non-finite class_beta=\[0\.5, .*\] at step 7"):
        metric_writers.check_finite({"class_beta": jnp.array([0.5, bad])}, step=7)


def test_check_finite_accepts_finite_values_and_ignores_text():
    metric_writers.check_finite({"total": jnp.float32(1.0), "class_acc": np.array([0.1, 0.9]),
                                 "epoch": 2, "name": "run"}, step=1)


class _FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_rate_and_eta_arithmetic():
    clock = _FakeClock()
    lines = []
    progress = metric_writers.Progress(960, initial_step=100, every_steps=20, print_fn=lines.append,
                                       time_fn=clock)
    clock.now += 5.0
    assert progress.update(110, {"loss": 1.0}) is None  # not a reporting step
    clock.now += 5.0
    line = progress.update(120, {"epoch": 2, "loss": 1.234, "adv_acc": 0.451})
    # 20 steps (100 -> 120) in 10 s = 2 it/s; 840 steps left -> 420 s = 7m00s.
    assert line == "step 120/960 (12.5%) epoch 2 | loss 1.234 adv_acc 45.1% | 2 it/s | ETA 7m00s"
    assert lines == [line]
    # The next rate only counts the steps since the previous line: 20 steps in 4 s = 5 it/s.
    clock.now += 4.0
    line = progress.update(140, {})
    assert line.endswith("| 5 it/s | ETA 2m44s")  # 820 / 5 = 164 s
    # The last step is always reported even off the period.
    clock.now += 1.0
    assert progress.update(960, {}).startswith("step 960/960 (100.0%)")


def test_progress_rejects_bad_arguments_and_unknown_rate():
    with pytest.raises(ValueError, match="total_steps"):
        metric_writers.Progress(0)
    clock = _FakeClock()
    progress = metric_writers.Progress(10, every_steps=5, print_fn=None, time_fn=clock)
    assert progress.update(5, {}).endswith("? it/s | ETA ?")  # no time has passed: no rate yet
    rate, eta = progress.rate_and_eta(5, clock.now + 1.0)
    assert rate == 0.0 and math.isinf(eta)




def test_read_metrics_tolerates_truncated_tail_but_not_corruption(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1, "total": 1.0}\n{"kind": "train", "st')
    assert [r["step"] for r in metric_writers.read_metrics(str(path))] == [1]
    path.write_text('{"kind": "train", "step": 1}\nnot json\n{"kind": "train", "step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: malformed"):
        metric_writers.read_metrics(str(path))
    with pytest.raises(ValueError, match="no metrics file"):
        metric_writers.read_metrics(str(tmp_path / "missing"))
