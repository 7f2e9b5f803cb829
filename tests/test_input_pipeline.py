"""The input pipeline: batch shapes, seeded shuffling and augmentation, exact resumption, process sharding,
evaluation that counts every example exactly once, and one DataSource per run."""

import json
import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from flax_fld.data import datasets, input_pipeline
from flax_fld.runtime.config_files import load_config

NUM_EXAMPLES = 48  # 28 train / 8 validation / 12 test after the stratified split.


def data_config(**overrides):
    config = load_config("default").data
    config.update(dict(image_size=16, num_examples=NUM_EXAMPLES), **overrides)
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    input_pipeline.prepare_data_source(data_config(), str(path))
    return str(path)


def train_iterator(data_dir, **kwargs):
    options = dict(per_device_batch_size=3, local_device_count=2, seed=0)
    options.update(kwargs)
    data = input_pipeline.prepare_data_source(data_config(augment=options.pop("augment", True)), data_dir)
    return input_pipeline.TrainIterator(data, **options)


def test_train_batches_shape_range_and_steps(data_dir):
    iterator = train_iterator(data_dir)
    info = iterator.info
    assert iterator.steps_per_epoch == info.num_examples["train"] // 6
    batch = next(iterator)
    assert batch["image"].shape == (2, 3, 16, 16, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (2, 3) and batch["label"].dtype == np.int32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0 and batch["image"].std() > 0.05
    assert set(batch["label"].ravel()) <= set(range(len(info.class_names)))


def test_same_seed_same_batches_other_seed_differs(data_dir):
    first, again, other = train_iterator(data_dir), train_iterator(data_dir), train_iterator(data_dir, seed=1)
    for _ in range(3):
        a, b, c = next(first), next(again), next(other)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], c["image"])


def _epoch_images(iterator):
    rows = [next(iterator)["image"].reshape(-1, 16 * 16) for _ in range(iterator.steps_per_epoch)]
    return np.concatenate(rows)


def test_each_epoch_draws_distinct_examples_and_reshuffles(data_dir):
    iterator = train_iterator(data_dir, augment=False)
    epoch0, epoch1 = _epoch_images(iterator), _epoch_images(iterator)
    dropped = iterator.info.num_examples["train"] % 6
    for epoch in (epoch0, epoch1):
        assert len(np.unique(epoch, axis=0)) == len(epoch) == iterator.info.num_examples["train"] - dropped
    assert not np.array_equal(epoch0, epoch1)
    assert iterator.get_state() == {"epoch": 2, "step": 0, "seed": 0}


def test_resume_from_saved_state_is_exact(data_dir):
    iterator = train_iterator(data_dir)
    for _ in range(iterator.steps_per_epoch - 1):  # Stop just before an epoch boundary.
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = [next(iterator) for _ in range(3)]
    restored = train_iterator(data_dir)
    restored.set_state(state)
    for batch in expected:
        resumed = next(restored)
        np.testing.assert_array_equal(resumed["image"], batch["image"])
        np.testing.assert_array_equal(resumed["label"], batch["label"])


@pytest.mark.parametrize("state", [{"epoch": 0}, {"epoch": 0, "step": 99}, {"epoch": 0, "step": 0, "seed": 7}])
def test_bad_state_is_rejected(data_dir, state):
    with pytest.raises(ValueError, match="state"):
        train_iterator(data_dir).set_state(state)


def test_processes_split_each_global_batch(data_dir):
    single = next(train_iterator(data_dir, local_device_count=2))
    shards = [next(train_iterator(data_dir, local_device_count=1, process_index=p, process_count=2)) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([s["image"] for s in shards]), single["image"])
    np.testing.assert_array_equal(np.concatenate([s["label"] for s in shards]), single["label"])


def test_split_smaller_than_a_batch_is_an_error(data_dir):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train_iterator(data_dir, split="validation", per_device_batch_size=16)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_counts_every_example_once(data_dir, process_count):
    data = input_pipeline.prepare_data_source(data_config(), data_dir)
    info = data.info
    images, labels, num_batches = [], [], []
    for process_index in range(process_count):
        batches = list(
            input_pipeline.eval_batches(
                data, split="test", per_device_batch_size=5, local_device_count=2,
                process_index=process_index, process_count=process_count,
            )
        )
        num_batches.append(len(batches))
        for batch in batches:
            assert batch["image"].shape == (2, 5, 16, 16, 1) and batch["mask"].dtype == bool
            mask = batch["mask"]
            assert np.all(batch["image"][~mask] == 0)
            images.append(batch["image"][mask].reshape(-1, 256))
            labels.append(batch["label"][mask])
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert len(set(num_batches)) == 1  # Processes stay in lock-step.
    assert len(images) == info.num_examples["test"] == len(np.unique(images, axis=0))
    assert tuple(np.bincount(labels, minlength=4)) == info.class_counts["test"]


def test_augmentation_is_seeded_and_keeps_depth_axis():
    # A depth ramp: bright near field, dark far field, like posterior attenuation.
    image = np.repeat(np.linspace(250, 5, 32)[:, None], 32, axis=1).astype(np.uint8)[..., None]
    image[:, :8] = 0  # Left-right asymmetry to detect horizontal flips.
    flips = 0
    for seed in range(40):
        out = input_pipeline.augment_image(image, np.random.default_rng(seed))
        again = input_pipeline.augment_image(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again)
        assert out.shape == image.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert out[4:12].mean() > out[20:28].mean()  # Never flipped vertically.
        flips += out[:, -6:].mean() < out[:, :6].mean()
    assert 5 < flips < 35  # Horizontal flips happen about half the time.


def test_measure_throughput(data_dir):
    data = input_pipeline.prepare_data_source(data_config(), data_dir)
    images_per_second = input_pipeline.measure_throughput(data, batch_size=8, num_batches=4)
    assert np.isfinite(images_per_second) and images_per_second > 50


def test_the_builder_is_made_once_per_data_source(data_dir, monkeypatch):
    """Training, every validation pass and load_split read through one DataSource: no re-listing per epoch."""
    made = []
    factory = datasets.BUILDERS["synthetic_fatty_liver"]
    monkeypatch.setitem(datasets.BUILDERS, "synthetic_fatty_liver", lambda *args: made.append(1) or factory(*args))
    data = input_pipeline.prepare_data_source(data_config(), data_dir)
    iterator = input_pipeline.TrainIterator(data, per_device_batch_size=4, local_device_count=1, seed=0)
    for _ in range(2 * iterator.steps_per_epoch):
        next(iterator)
    for _ in range(3):  # three epochs' validation passes
        batches = input_pipeline.eval_batches(data, split="validation", per_device_batch_size=4, local_device_count=1)
        assert sum(int(batch["mask"].sum()) for batch in batches) == data.info.num_examples["validation"]
    images, labels = input_pipeline.load_split(data, "test")
    assert len(images) == len(labels) == data.info.num_examples["test"]
    assert len(made) == 1
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        data.split("valid")


def test_resolve_data_dir_is_next_to_the_workdir(tmp_path):
    config = data_config()
    workdir = tmp_path / "runs" / "demo"
    assert input_pipeline.resolve_data_dir(config, str(workdir)) == str(tmp_path / "runs" / "tfds_data")
    config.data_dir = str(tmp_path / "elsewhere")
    assert input_pipeline.resolve_data_dir(config, str(workdir)) == str(tmp_path / "elsewhere")


def test_dataset_info_round_trips_through_the_run_files(data_dir, tmp_path):
    from flax_fld.training import checkpointing

    data = input_pipeline.prepare_data_source(data_config(), data_dir)
    checkpointing.write_run_files(str(tmp_path), ml_collections.ConfigDict({"data": data_config()}), data.info)
    config, info_dict = checkpointing.read_run_files(str(tmp_path))
    assert input_pipeline.DatasetInfo.from_dict(info_dict) == data.info
    assert config.data.class_names == data.info.class_names and data.info.split_record == ""
    assert not (tmp_path / "split_assignment.csv").exists()  # the synthetic set comes split
    with pytest.raises(ValueError, match="lacks the field 'class_counts'"):
        input_pipeline.DatasetInfo.from_dict({k: v for k, v in info_dict.items() if k != "class_counts"})


# --- preparing a data set: one line of ours, and one process at a time per data_dir ------------------------

def test_a_preparation_prints_one_line_of_ours_and_a_reuse_prints_nothing(tmp_path, capsys):
    config = data_config(num_examples=24)
    input_pipeline.prepare_data_source(config, str(tmp_path))
    printed = capsys.readouterr().out.splitlines()
    builder = datasets.get_builder(config, str(tmp_path))
    # TFDS's own lines ("Downloading and preparing dataset Unknown size ...", "... downloaded and prepared to
    # ...") are not among them.
    assert printed == [f"preparing the data set {builder.name}/{builder.builder_config.name} (24 images, 16 px, "
                       f"1 channel) in {builder.data_dir}"]
    input_pipeline.prepare_data_source(config, str(tmp_path))
    assert capsys.readouterr().out == ""
    assert not list(tmp_path.glob(".*.lock"))  # the lock goes with its holder


HOLDER = r"""
import sys, time
from flax_fld.data import input_pipeline
with input_pipeline.preparation_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(1.0)
    print("releasing", time.time(), flush=True)
"""


def test_the_lock_makes_a_second_process_wait_until_the_first_releases_it(tmp_path):
    path = str(tmp_path / ".data.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        waits = []
        with input_pipeline.preparation_lock(path, on_wait=lambda: waits.append(time.time())):
            entered = time.time()
            assert os.path.exists(path)
        released = float(holder.stdout.readline().split()[1])
    finally:
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert len(waits) == 1 and waits[0] < released <= entered
    assert not os.path.exists(path)
    with input_pipeline.preparation_lock(path, on_wait=lambda: waits.append(time.time())):
        pass  # free: taken at once
    assert len(waits) == 1


RACER = r"""
import json, os, sys, time
from flax_fld.data import input_pipeline
from flax_fld.runtime.config_files import load_config
data_dir, start = sys.argv[1], sys.argv[2]
config = load_config("tiny").data
print("ready", flush=True)
while not os.path.exists(start):
    time.sleep(0.001)
data = input_pipeline.prepare_data_source(config, data_dir)
images, labels = input_pipeline.load_split(data, "test")  # the waiting process reads what the other wrote
print(json.dumps([data.info.num_examples, data.info.class_counts["test"], labels.tolist()]), flush=True)
"""


def test_two_processes_preparing_one_empty_data_dir_at_once_both_succeed(tmp_path):
    # Without the lock the later of the two failed with TFDS's "Cannot rename ... already exists".
    data_dir, start = tmp_path / "data", tmp_path / "start"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(data_dir), str(start)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for racer in racers:  # both imported and configured: they reach prepare_data_source together
        assert racer.stdout.readline().strip() == "ready"
    start.touch()
    results = [racer.communicate(timeout=300) for racer in racers]
    for racer, (out, err) in zip(racers, results):
        assert racer.returncode == 0, err[-3000:]
    first, second = sorted(out.splitlines() for out, _ in results)
    builder = datasets.get_builder(load_config("tiny").data, str(data_dir))
    counts = first[-1]
    assert sum(json.loads(counts)[0].values()) == 96 and second[-1] == counts
    assert first == [input_pipeline.preparation_line(builder), counts]
    # The other waited (nearly always: they start together), or came after the first had finished.
    name = f"{builder.name}/{builder.builder_config.name}"
    assert second in ([f"waiting for another process preparing {name} in {data_dir}", counts], [counts])
    assert sorted(os.listdir(data_dir)) == ["downloads", builder.name]
    assert os.listdir(os.path.dirname(builder.data_dir)) == [os.path.basename(builder.data_dir)]
