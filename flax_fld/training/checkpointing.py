"""Checkpoints of a run with orbax: periodic (keep N) in WORKDIR/checkpoints, best-by-validation in
WORKDIR/checkpoints_best.

Every checkpoint has two items: ``state`` (the TrainState as a flax state dict of arrays: weights, optimizer,
per-class epsilon/beta, counters, rng) and ``meta`` (JSON: the data iterator's position, the epoch, the best
validation value so far, ...). Saving the iterator position next to the state is what makes a re-run of the
same command continue with exactly the batches an uninterrupted run would have seen.
"""

import contextlib
import json
import logging
import os
import shutil
import sys
from typing import Any, Iterator

import flax
import jax
import ml_collections
import orbax.checkpoint as ocp

from flax_fld.runtime.atomic_files import write_json_atomically, write_text_atomically
from flax_fld.training.train_state import TrainState

PERIODIC_DIRNAME = "checkpoints"
BEST_DIRNAME = "checkpoints_best"


def _to_savable(state: TrainState) -> dict:
    """The state dict orbax writes: a private copy, since the caller donates ``state`` to the next step while
    an asynchronous save may still be running."""
    tree = flax.serialization.to_state_dict(state)
    if jax.process_count() > 1:
        # pmap outputs are host-local; orbax writes global arrays (as flax's imagenet example converts them).
        return jax.tree.map(lambda array: ocp.utils.fully_replicated_host_local_array_to_global_array(array.copy()),
                            tree)
    # One process: host numpy copies. Handing orbax the replicated device arrays made it compile a slice per
    # array shape and device (and a copy per shape) at the first save: ~10 s of a tiny CPU run's 2 minutes.
    return jax.device_get(tree)


HALF_WRITTEN_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix for a step folder not yet committed


def remove_half_written(directory: str) -> None:
    """Deletes the uncommitted step folders a killed save left in ``directory`` (process 0 only)."""
    if jax.process_index() != 0 or not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if HALF_WRITTEN_MARKER in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


# After orbax gives up on a damaged checkpoint, tensorstore's other reads of it are still running. Each one later
# reports its own failure, or that orbax's event loop is closed, as an "unraisable" exception or through the
# asyncio logger ("Future exception was never retrieved"): hundreds of multi-line tracebacks behind the one-line
# error, at a moment that depends on the machine's load.
_CLOSED_LOOP = "Event loop is closed"


@contextlib.contextmanager
def _quiet_abandoned_reads_on_failure(directory: str) -> Iterator[None]:
    """If the block raises, the abandoned reads of ``directory`` stay silent; other reports still come through.

    Both filters go in before the restore (the first reports can come before the caller's ``except``) and stay
    after a failure (the last ones come until the process exits); after a success both are removed.
    """
    inside = directory.rstrip(os.sep) + os.sep  # step 6's files, not step 60's

    def abandoned(text: str) -> bool:
        return inside in text or _CLOSED_LOOP in text

    previous_hook = sys.unraisablehook

    def hook(unraisable):
        if not abandoned(str(unraisable.exc_value)):
            previous_hook(unraisable)

    def asyncio_filter(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not abandoned(record.getMessage() + str(error))

    asyncio_logger = logging.getLogger("asyncio")
    sys.unraisablehook = hook
    asyncio_logger.addFilter(asyncio_filter)
    yield  # an exception from the block propagates from here, so the lines below run only after a success
    sys.unraisablehook = previous_hook
    asyncio_logger.removeFilter(asyncio_filter)


CAUSE_LENGTH = 120


def short_cause(error: BaseException, folder: str) -> str:
    """The first line of the innermost error behind ``error``, without the ``folder`` the message already names,
    at most ``CAUSE_LENGTH`` characters.

    Orbax wraps tensorstore's error ("OUT_OF_RANGE: Error reading ...") in one that carries a dump of the whole
    TensorStore spec, several hundred characters that say nothing about what is wrong.
    """
    seen = [error]
    while (inner := seen[-1].__cause__ or seen[-1].__context__) is not None and inner not in seen:
        seen.append(inner)
    innermost = seen[-1]
    lines = str(innermost).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else type(innermost).__name__
    text = text.replace(folder.rstrip(os.sep) + os.sep, "").replace(folder.rstrip(os.sep), "that folder")
    return text if len(text) <= CAUSE_LENGTH else text[:CAUSE_LENGTH - 3] + "..."


class Checkpointer:
    """The run's two orbax ``CheckpointManager``s behind a small interface.

    Args:
        workdir: run directory; checkpoints go to ``workdir/checkpoints`` and ``workdir/checkpoints_best``.
        keep: periodic checkpoints kept (the newest ones).
        async_save: write in a background thread; ``save`` returns once the arrays are copied to host memory,
            so the caller may donate the state to the next step right away.
    """

    def __init__(self, workdir: str, *, keep: int, async_save: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"config.train.keep_checkpoints={keep}; must be >= 1")

        def manager(dirname: str, max_to_keep: int) -> ocp.CheckpointManager:
            # A run killed during a save leaves a "<step>.orbax-checkpoint-tmp" folder: orbax never lists it as
            # a step. It is removed here, before the manager starts: orbax's own cleanup_tmp_directories runs
            # in a background thread that may not have finished when the caller looks.
            directory = os.path.join(os.path.abspath(workdir), dirname)
            remove_half_written(directory)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            )
            return ocp.CheckpointManager(directory, options=options)

        self.periodic = manager(PERIODIC_DIRNAME, keep)
        self.best = manager(BEST_DIRNAME, 1)
        self._best_step = None  # the step of this run's newest best save

    def save(self, state: TrainState, meta: dict, *, best: bool = False) -> None:
        """Saves ``state`` and JSON ``meta`` under step ``state.step`` (to the best slot if ``best``)."""
        manager = self.best if best else self.periodic
        step = int(jax.device_get(state.step))
        args = ocp.args.Composite(state=ocp.args.StandardSave(_to_savable(state)), meta=ocp.args.JsonSave(meta))
        if best:
            self._best_step = step
        elif self._best_step != step:
            # Each manager commits in its own thread. A periodic checkpoint must not be committed before the
            # best one its meta names, else a resumed run would compare against a best epoch it cannot restore.
            # An earlier epoch's best save has normally finished by now, so this wait is free. The same epoch's
            # best save is not waited for (that blocked training for a whole write, which orbax then reported
            # at the next best save): it holds the same state, and ``complete_best`` redoes it on a resume.
            self.best.wait_until_finished()
        if step in manager.all_steps():
            # A re-run after a crash between the two saves of an epoch writes the same step again.
            manager.wait_until_finished()
            manager.delete(step)
        manager.save(step, args=args, force=True)

    def latest_step(self, which: str = "latest") -> int | None:
        """The newest step of the periodic (``latest``) or the ``best`` slot; None if empty."""
        self.wait()
        return self._manager(which).latest_step()

    def restore(self, template: TrainState, which: str = "latest") -> tuple[TrainState, dict] | None:
        """Restores the newest checkpoint of slot ``which`` into the structure of ``template``.

        Returns ``(state, meta)`` or None when the slot is empty. Arrays come back with the shardings of
        ``template`` (single device for a freshly created state). A checkpoint that cannot be read (truncated or
        corrupt files) raises ValueError naming its folder: it is never skipped silently, since falling back
        to an older one would quietly redo epochs.
        """
        step = self.latest_step(which)
        if step is None:
            return None
        target = flax.serialization.to_state_dict(template)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        manager = self._manager(which)
        path = os.path.join(str(manager.directory), str(step))
        try:
            with _quiet_abandoned_reads_on_failure(path):
                restored = manager.restore(step, args=args)
            state = flax.serialization.from_state_dict(template, restored["state"])
        except Exception as error:  # tensorstore, json and orbax raise assorted types for damaged files
            raise ValueError(f"checkpoint {path} is unreadable (step {step}: {short_cause(error, path)}); "
                             f"{self._way_out(which, step)}") from None
        return state, dict(restored["meta"])

    def _way_out(self, which: str, step: int) -> str:
        if which == "best":
            return "delete that folder to fall back on the latest checkpoint, or use a new --workdir"
        earlier = [other for other in self.periodic.all_steps() if other < step]
        resume = f"resume from step {max(earlier)}" if earlier else "start this run again from its first step"
        return f"delete that folder to {resume}, or use a new --workdir"

    def complete_best(self, state: TrainState, meta: dict) -> None:
        """Writes the best checkpoint of the resumed epoch if the run stopped before that save was committed.

        ``state`` and ``meta`` are those of the newest periodic checkpoint (``restore(..., "latest")``). When
        its epoch was the best one, the best slot must hold its step: the two saves are of the same state, and
        the periodic one does not wait for the best one (``save``).
        """
        if meta.get("best_epoch") is None or meta.get("best_epoch") != meta.get("epoch"):
            return
        step, best_step = int(jax.device_get(state.step)), self.latest_step("best")
        if best_step is None or best_step < step:
            self.save(state, meta, best=True)
            self.best.wait_until_finished()

    def _manager(self, which: str) -> ocp.CheckpointManager:
        if which not in ("latest", "best"):
            raise ValueError(f"which={which!r}; expected 'latest' or 'best'")
        return self.best if which == "best" else self.periodic

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.periodic.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.periodic.close()
        self.best.close()


CONFIG_FILENAME = "config.json"
DATASET_INFO_FILENAME = "dataset_info.json"


def write_run_files(workdir: str, config: ml_collections.ConfigDict, info: Any) -> None:
    """WORKDIR/config.json (the resolved config), WORKDIR/dataset_info.json (``info.to_dict()``: classes, image
    shape, counts) and, when the project made the split, a copy of its WORKDIR/split_assignment.csv."""
    if jax.process_index() != 0:
        return
    write_text_atomically(os.path.join(workdir, CONFIG_FILENAME), config.to_json_best_effort(indent=2))
    write_json_atomically(os.path.join(workdir, DATASET_INFO_FILENAME), info.to_dict())
    if info.split_record:
        # The run keeps the assignment it trained on, whatever later happens to the prepared data.
        target = os.path.join(workdir, os.path.basename(info.split_record))
        shutil.copyfile(info.split_record, target + ".tmp")
        os.replace(target + ".tmp", target)


def read_run_files(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
    """``(config, dataset_info dict)`` written by ``write_run_files`` ({} if the run has no dataset_info.json;
    ``input_pipeline.DatasetInfo.from_dict`` rebuilds it); ValueError if the run has no config.json."""
    path = os.path.join(workdir, CONFIG_FILENAME)
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist: is {workdir!r} a training workdir?")
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    # JSON has no tuples; these are tuples everywhere else (set before the ConfigDict fixes the field types).
    for key in ("class_names", "split_fractions"):
        if key in payload.get("data", {}):
            payload["data"][key] = tuple(payload["data"][key])
    config = ml_collections.ConfigDict(payload)
    info_path = os.path.join(workdir, DATASET_INFO_FILENAME)
    info = {}
    if os.path.exists(info_path):
        with open(info_path, encoding="utf-8") as handle:
            info = json.load(handle)
    return config, info


# Settings that may differ when a workdir is resumed: how long to train (the schedule stretches with it, so
# the result is no longer the shorter run's), logging, plotting, checkpoint bookkeeping and evaluation.
RESUMABLE_KEYS = (
    "train.num_epochs", "train.log_every_steps", "train.plot_every_epochs", "train.checkpoint_every_epochs",
    "train.keep_checkpoints", "train.async_checkpointing", "train.num_grid_examples", "train.eval_batch_size",
    "train.resume_with_changes", "train.early_stopping_patience", "data.data_dir", "adv.eval_epsilon",
    "adv.eval_steps", "adv.eval_step_size",
    "adv.eval_through_decouplers", "adv.strong_pgd_steps", "adv.strong_steps", "adv.strong_restarts",
    "adv.strong_targets", "adv.strong_sanity_epsilon", "adv.strong_sanity_examples",
    "adv.strong_sanity_max_accuracy", "eval.temperature_scaling", "eval.shift",
    # Only a fresh run reads it; a resume takes every weight from the checkpoint.
    "model.init_from",
)


# Run-defining keys added after runs were already written, with the value an older run implicitly used: a
# workdir whose config.json lacks one resumes as long as the new config keeps that value.
ADDED_KEYS = {"data.split_fractions": [0.7, 0.15, 0.15], "data.split_seed": 0, "data.patient_regex": "",
              "data.dicom_group_by": "patient",
              "adv.attack_space": "image", "adv.random_start": "small", "train.compute_dtype": "float32",
              "data.simulator_version": 1, "data.simulator_site": "A"}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def config_changes(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
    """``KEY: old -> new`` for every run-defining setting in which ``config`` differs from WORKDIR/config.json.

    Empty when the workdir has no config.json or no periodic checkpoint yet (nothing to resume), or when only
    ``RESUMABLE_KEYS`` differ.
    """
    path = os.path.join(workdir, CONFIG_FILENAME)
    periodic = os.path.join(workdir, PERIODIC_DIRNAME)
    has_checkpoint = os.path.isdir(periodic) and any(name.isdigit() for name in os.listdir(periodic))
    if not (os.path.exists(path) and has_checkpoint):
        return []
    with open(path, encoding="utf-8") as handle:
        old = _flatten(json.load(handle))
    new = _flatten(json.loads(config.to_json_best_effort()))
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_KEYS or old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        if key not in old and key in ADDED_KEYS and new.get(key) == ADDED_KEYS[key]:
            continue
        changes.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return changes
