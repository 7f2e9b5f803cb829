"""Deterministic, resumable numpy input pipeline over TFDS array_record data sources (no TensorFlow).

One path: ``prepare_data_source(config.data, resolve_data_dir(config.data, workdir))`` prepares the data set
once per run and returns a ``DataSource``; ``TrainIterator``, ``eval_batches`` and ``load_split`` read from it.

Random access through `builder.as_data_source()` makes exact resumption trivial: the position is just
(epoch, step); the shuffle order is a permutation seeded by (seed, epoch) and each example's augmentation is
seeded by (seed, epoch, example index), so a restored iterator yields bit-identical batches.

Batches are shaped for a pmapped step: [local_device_count, per_device_batch_size, H, W, C], float32 in
[0, 1]. In a multi-process run every process computes the same global permutation and takes its own
contiguous slice of each global batch, so all processes run the same number of steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from typing import Any, Callable, Iterator

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from flax_fld.data import datasets
from flax_fld.data.datasets import base

_MAX_SHIFT_FRACTION = 0.06  # Shifts up to ~4 px at 64 px: probe placement varies, anatomy stays in view.
_GAIN_RANGE = (0.85, 1.15)  # Multiplicative gain (the scanner's overall gain knob).
_CONTRAST_RANGE = (0.85, 1.15)  # Contrast around the image mean (dynamic range / display map).
_BRIGHTNESS_RANGE = (-0.05, 0.05)  # Additive offset.

DATA_DIRNAME = "tfds_data"


def resolve_data_dir(data_config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where prepared data sets live: ``data.data_dir``, else ``tfds_data`` next to the workdir.

    Next to, not inside: runs in sibling workdirs (workdir/demo, workdir/ablation, ...) share one prepared set.
    """
    if data_config.get("data_dir", ""):
        return str(data_config.data_dir)
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), DATA_DIRNAME)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, C) as fed to the model.
    num_examples: dict[str, int]  # split -> count ('train', 'validation', 'test').
    class_counts: dict[str, tuple[int, ...]]  # split -> per-class counts.
    # The CSV (path, class, patient, split) of a split the project made (class_folders); "" when none.
    split_record: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict for JSON (WORKDIR/dataset_info.json); tuples become lists there."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "DatasetInfo":
        """The inverse of ``to_dict``; ValueError naming the missing field."""
        try:
            return cls(
                class_names=tuple(payload["class_names"]),
                image_shape=tuple(int(d) for d in payload["image_shape"]),
                num_examples={split: int(n) for split, n in payload["num_examples"].items()},
                class_counts={split: tuple(int(c) for c in counts)
                              for split, counts in payload["class_counts"].items()},
                split_record=str(payload.get("split_record", "")),
            )
        except KeyError as error:
            raise ValueError(f"dataset info lacks the field {error.args[0]!r}") from None


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    return os.path.isdir(os.fspath(builder.data_path))


def _prepared_builder(data_config: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
    builder = datasets.get_builder(data_config, data_dir)
    tfds.disable_progress_bar()
    if _is_prepared(builder):
        return builder
    # Two runs preparing one data set into one data_dir would race for TFDS's final rename, and the second
    # would fail: the second waits for the first and then reads what the first wrote.
    config_name = builder.builder_config.name if builder.builder_config else "default"
    lock_path = os.path.join(data_dir, f".{builder.name}.{config_name}.lock")
    os.makedirs(data_dir, exist_ok=True)
    with preparation_lock(lock_path, on_wait=lambda: print(
            f"waiting for another process preparing {builder.name}/{config_name} in {data_dir}", flush=True)):
        if _is_prepared(builder):
            # Made while this process waited: read its split information as a builder made after it does.
            builder.info.read_from_directory(builder.data_dir)
            return builder
        print(preparation_line(builder), flush=True)
        # TFDS writes into a temporary folder renamed on success. Its own two lines ("Downloading and
        # preparing dataset Unknown size ...") would only restate the line above with sizes it does not know.
        with _tfds_announcements_silenced(builder):
            try:
                builder.download_and_prepare()
            except BaseException:
                _remove_empty_parents(builder.data_dir, stop=data_dir)
                raise
    return builder


def preparation_line(builder: tfds.core.DatasetBuilder) -> str:
    """What is prepared, how many images (when the config knows), its format and where it goes."""
    config = builder.builder_config
    facts = []
    source = getattr(config, "root", "") or getattr(config, "npz_path", "") or getattr(config, "mat_path", "")
    if source:
        facts.append(f"from {source}")
    rows = getattr(config, "rows", ())
    count = sum(row.frames for row in rows) if rows else getattr(config, "num_examples", None)
    if count:
        facts.append(f"{count} images")
    if getattr(config, "image_size", None):
        facts.append(f"{config.image_size} px, {config.channels} channel{'s' if config.channels > 1 else ''}")
    return f"preparing the data set {builder.name}/{config.name} ({', '.join(facts)}) in {builder.data_dir}"


@contextlib.contextmanager
def _tfds_announcements_silenced(builder: tfds.core.DatasetBuilder) -> Iterator[None]:
    """Without TFDS's printed start and end lines (printed, not logged: no logger level reaches them)."""
    names = ("_log_download_bytes", "_log_download_done")
    for name in names:
        setattr(builder, name, lambda: None)
    try:
        yield
    finally:
        for name in names:
            delattr(builder, name)


@contextlib.contextmanager
def preparation_lock(path: str, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Holds an exclusive ``flock`` on the file ``path`` (created, and removed on release) for the block.

    ``on_wait()`` is called once if another process holds it. The holder removes the file before releasing
    it, so a process that was waiting on the removed file retries on a new one: one holder at a time.
    """
    waited = False
    while True:
        handle = open(path, "a", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited:
                on_wait()
                waited = True
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(handle.fileno())
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        handle.close()  # the previous holder removed this file: lock the one there now
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        handle.close()


def _remove_empty_parents(path: str, stop: str) -> None:
    """Remove the empty config/name folders a failed preparation leaves above its (deleted) temp folder."""
    path, stop = os.path.abspath(path), os.path.abspath(stop)
    while path.startswith(stop + os.sep):
        if os.path.isdir(path):
            if os.listdir(path):
                return
            os.rmdir(path)
        path = os.path.dirname(path)


def _info_from_builder(builder: tfds.core.DatasetBuilder) -> DatasetInfo:
    features = builder.info.features
    counts = builder.info.metadata["class_counts"]
    record = os.path.abspath(os.path.join(builder.data_dir, base.SPLIT_RECORD_FILENAME))
    return DatasetInfo(
        class_names=tuple(features["label"].names),
        image_shape=tuple(int(d) for d in features["image"].shape),
        num_examples={split: int(builder.info.splits[split].num_examples) for split in base.SPLITS},
        class_counts={split: tuple(int(c) for c in counts[split]) for split in base.SPLITS},
        split_record=record if os.path.exists(record) else "",
    )


class DataSource:
    """A prepared data set, opened once per run: its description and random access to each split.

    Made by ``prepare_data_source``; ``TrainIterator``, ``eval_batches`` and ``load_split`` read through it,
    so the builder (for class_folders: the listing and checks of every file) is made once, not per epoch.
    """

    def __init__(self, builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict):
        self.builder = builder
        self.config = data_config  # the config.data it was made from (``augment`` is read from it)
        self.info = _info_from_builder(builder)
        self._splits: dict[str, Any] = {}

    def split(self, name: str):
        """Random-access source of split ``name``: len() and __getitems__(indices) -> [{'image', 'label'}]."""
        if name not in base.SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {base.SPLITS}")
        if name not in self._splits:
            self._splits[name] = self.builder.as_data_source(split=name)
        return self._splits[name]


def prepare_data_source(data_config: ml_collections.ConfigDict, data_dir: str) -> DataSource:
    """Build the data set for config.data under data_dir if it is not there yet, and open it.

    Idempotent; a failed preparation leaves no partial data set and never touches a prepared one. Runs that
    prepare the same data set into one data_dir at once take turns (a lock file there): the later one waits,
    saying so in one line, then reads what the first wrote. Raises ValueError with a one-line message on bad
    input.
    """
    return DataSource(_prepared_builder(data_config, data_dir), data_config)


def augment_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ultrasound-safe augmentation of one uint8 image [H, W, C] -> float32 [H, W, C] in [0, 1].

    Horizontal flip, small integer shift (zero padded, like the black outside the sector) and
    gain/contrast/brightness jitter. Never a vertical flip: depth is a physical axis (attenuation grows
    with it), so flipping it would invert the very cue that grades steatosis.
    """
    height, width = image.shape[:2]
    pixels = image.astype(np.float32) / 255.0
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    max_shift = max(1, int(round(_MAX_SHIFT_FRACTION * min(height, width))))
    shift_y, shift_x = rng.integers(-max_shift, max_shift + 1, size=2)
    shifted = np.zeros_like(pixels)
    shifted[max(shift_y, 0) : height + min(shift_y, 0), max(shift_x, 0) : width + min(shift_x, 0)] = pixels[
        max(-shift_y, 0) : height + min(-shift_y, 0), max(-shift_x, 0) : width + min(-shift_x, 0)
    ]
    pixels = shifted
    gain, contrast = rng.uniform(*_GAIN_RANGE), rng.uniform(*_CONTRAST_RANGE)
    brightness = rng.uniform(*_BRIGHTNESS_RANGE)
    mean = pixels.mean()
    pixels = (pixels * gain - mean * gain) * contrast + mean * gain + brightness
    return np.clip(pixels, 0.0, 1.0).astype(np.float32)


def _read(source, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random-access read -> (uint8 images [N, H, W, C], int32 labels [N])."""
    records = source.__getitems__([int(i) for i in indices])
    images = np.stack([np.asarray(r["image"]) for r in records])
    labels = np.asarray([r["label"] for r in records], dtype=np.int32)
    return images, labels


def _check_batching(per_device_batch_size: int, local_device_count: int, process_index: int, process_count: int):
    if per_device_batch_size < 1 or local_device_count < 1:
        raise ValueError(
            f"per_device_batch_size={per_device_batch_size} and local_device_count={local_device_count} must be >= 1"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")


class TrainIterator:
    """Endless shuffled, augmented training batches; reshuffles every epoch; drops the remainder.

    next() -> {'image': float32 [D, B, H, W, C] in [0, 1], 'label': int32 [D, B]}.
    """

    def __init__(
        self,
        data: DataSource,
        *,
        per_device_batch_size: int,
        local_device_count: int,
        seed: int,
        split: str = "train",
        process_index: int = 0,
        process_count: int = 1,
    ):
        _check_batching(per_device_batch_size, local_device_count, process_index, process_count)
        self.info = data.info
        self._source = data.split(split)
        self._num_examples = len(self._source)
        self._devices, self._per_device = local_device_count, per_device_batch_size
        self._local_batch = local_device_count * per_device_batch_size
        self._global_batch = self._local_batch * process_count
        self._process_index = process_index
        self._seed = int(seed)
        self._augment = bool(data.config.augment)
        self.steps_per_epoch = self._num_examples // self._global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"split {split!r} has {self._num_examples} examples,"
                f" fewer than one global batch of {self._global_batch}"
            )
        self._epoch, self._step = 0, 0
        self._permutation_epoch, self._permutation = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._permutation_epoch:
            rng = np.random.default_rng([self._seed, epoch, 0])
            self._permutation, self._permutation_epoch = rng.permutation(self._num_examples), epoch
        return self._permutation

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, step = self._epoch, self._step
        start = step * self._global_batch + self._process_index * self._local_batch
        indices = self._order(epoch)[start : start + self._local_batch]
        images, labels = _read(self._source, indices)
        if self._augment:
            # Seeded per (seed, epoch, example): independent of batch size, process count and resumption.
            rngs = [np.random.default_rng([self._seed, epoch, int(i), 1]) for i in indices]
            images = np.stack([augment_image(image, rng) for image, rng in zip(images, rngs)])
        else:
            images = images.astype(np.float32) / 255.0
        self._step += 1
        if self._step == self.steps_per_epoch:
            self._epoch, self._step = epoch + 1, 0
        shape = (self._devices, self._per_device) + images.shape[1:]
        return {"image": images.reshape(shape), "label": labels.reshape(shape[:2])}

    def get_state(self) -> dict[str, int]:
        """JSON-serialisable position: the next batch is step `step` of epoch `epoch`."""
        return {"epoch": self._epoch, "step": self._step, "seed": self._seed}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a position from get_state(); the next batch equals the one that would have come."""
        try:
            epoch, step = int(state["epoch"]), int(state["step"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"input pipeline state must hold integer 'epoch' and 'step', got {state!r}") from None
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise ValueError(
                f"input pipeline state {state!r} is out of range (steps_per_epoch={self.steps_per_epoch})"
            )
        if "seed" in state and int(state["seed"]) != self._seed:
            raise ValueError(
                f"input pipeline state has seed {state['seed']} but this iterator uses seed {self._seed}"
            )
        self._epoch, self._step = epoch, step


def num_eval_batches(data: DataSource, *, split: str, per_device_batch_size: int, local_device_count: int,
                     process_count: int = 1) -> int:
    """How many batches ``eval_batches`` yields for ``split`` (the same in every process)."""
    global_batch = per_device_batch_size * local_device_count * process_count
    return -(-len(data.split(split)) // global_batch)


def eval_batches(
    data: DataSource,
    *,
    split: str,
    per_device_batch_size: int,
    local_device_count: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` exactly once across processes, in order, without augmentation.

    Yields {'image' float32 [D, B, H, W, C], 'label' int32 [D, B], 'mask' bool [D, B]}; the last batch is
    padded with zero images (mask False). All processes yield the same number of batches.
    """
    _check_batching(per_device_batch_size, local_device_count, process_index, process_count)
    source = data.split(split)
    image_shape = data.info.image_shape
    num_examples = len(source)
    local_batch = local_device_count * per_device_batch_size
    global_batch = local_batch * process_count
    shape = (local_device_count, per_device_batch_size)
    for batch_index in range(num_eval_batches(data, split=split, per_device_batch_size=per_device_batch_size,
                                              local_device_count=local_device_count, process_count=process_count)):
        indices = batch_index * global_batch + process_index * local_batch + np.arange(local_batch)
        mask = indices < num_examples
        images = np.zeros((local_batch,) + image_shape, np.float32)
        labels = np.zeros((local_batch,), np.int32)
        if mask.any():
            valid_images, labels[mask] = _read(source, indices[mask])
            images[mask] = valid_images.astype(np.float32) / 255.0
        yield {
            "image": images.reshape(shape + image_shape),
            "label": labels.reshape(shape),
            "mask": mask.reshape(shape),
        }


def measure_throughput(data: DataSource, *, batch_size: int, num_batches: int) -> float:
    """Training-pipeline images/second (read + decode + augment) on this machine, after one warm-up batch."""
    iterator = TrainIterator(data, per_device_batch_size=batch_size, local_device_count=1, seed=0)
    next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches * batch_size / (time.perf_counter() - start)


def load_split(data: DataSource, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory, in order, without augmentation: (float32 [N, H, W, C] in [0, 1], int32 [N]).

    For small-data baselines (``linear_probe``); training reads batches through ``TrainIterator``.
    """
    source = data.split(split)
    images, labels = _read(source, np.arange(len(source)))
    return images.astype(np.float32) / 255.0, labels
