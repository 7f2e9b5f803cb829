"""Crash and resume: SIGKILL a training command at chosen moments, re-run it, compare with an uninterrupted run.

A trial runs the command once per kill point, killing it (its whole process group, SIGKILL) when the point
is reached, then once more to completion. Kill points (``KillPoint``):

* ``delay``: ``value`` seconds after the launch (a random moment when drawn at random);
* ``log``: the regex ``value`` appears in the command's output, plus ``delay`` seconds (e.g. mid-step);
* ``during_write``: the ``value``-th orbax temporary folder (``<step>.orbax-checkpoint-tmp*``) appears under
  WORKDIR/checkpoints or WORKDIR/checkpoints_best, i.e. a checkpoint is being written;
* ``after_checkpoint``: the ``value``-th new finished step folder appears under WORKDIR/checkpoints.

``compare_runs`` then checks the final and best checkpoints (every array, and the meta JSON) bit for bit,
and eval.json field for field; ``compare_checkpoints`` takes a tolerance for other device layouts.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flax_fld.training import checkpointing
from harness import local_processes

CHECKPOINT_DIRS = ("checkpoints", "checkpoints_best")
TMP_MARKER = checkpointing.HALF_WRITTEN_MARKER
KINDS = ("delay", "log", "during_write", "after_checkpoint")
# Seconds between two looks at the log/folders: a write of the tiny preset's checkpoint lasts >= 0.1 s, so
# 2 ms catches it; the other kinds need less haste and leave the CPU to the run.
POLL_S = {"delay": 0.01, "log": 0.01, "during_write": 0.002, "after_checkpoint": 0.005}
# eval.json has no wall-clock field today; a key listed here would be left out of the comparison.
EVAL_IGNORED_KEYS: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class KillPoint:
    """When to SIGKILL one launch; see the module docstring for the kinds."""

    kind: str
    value: float | int | str
    delay: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kill point kind {self.kind!r}; expected one of {KINDS}")

    def describe(self) -> str:
        extra = f" +{self.delay:g}s" if self.delay else ""
        if self.kind == "delay":
            return f"after {float(self.value):.2f}s"
        if self.kind == "log":
            return f"on log {self.value!r}{extra}"
        if self.kind == "during_write":
            return f"during checkpoint write #{self.value}{extra}"
        return f"after checkpoint #{self.value}{extra}"


@dataclasses.dataclass
class Launch:
    """One launch of the command: how it ended and what the checkpoint folders held right after."""

    kill: KillPoint | None
    killed: bool
    returncode: int | None
    seconds: float
    tmp_dirs: list[str]  # half-written checkpoints present when the process was gone
    steps: list[int]  # finished periodic steps present then
    log: str

    def describe(self) -> str:
        if self.kill is None:
            return f"final run rc={self.returncode} ({self.seconds:.1f}s)"
        if not self.killed:
            return f"{self.kill.describe()}: not reached, rc={self.returncode}"
        partial = f", half-written {','.join(self.tmp_dirs)}" if self.tmp_dirs else ""
        return f"{self.kill.describe()}: killed at {self.seconds:.1f}s, steps {self.steps}{partial}"


def _listing(workdir: str) -> tuple[set[str], set[str]]:
    """(temporary folders, finished periodic step names) under WORKDIR/checkpoints*."""
    tmp, finished = set(), set()
    for dirname in CHECKPOINT_DIRS:
        try:
            names = os.listdir(os.path.join(workdir, dirname))
        except FileNotFoundError:
            continue
        tmp.update(f"{dirname}/{name}" for name in names if TMP_MARKER in name)
        if dirname == CHECKPOINT_DIRS[0]:
            finished.update(name for name in names if name.isdigit())
    return tmp, finished


class _Trigger:
    """Watches the log and the checkpoint folders; ``due(now)`` says when the kill point is reached."""

    def __init__(self, kill: KillPoint, workdir: str, log_path: str, start: float):
        self.kill, self.workdir, self.log_path, self.start = kill, workdir, log_path, start
        self.fire_at: float | None = start + float(kill.value) if kill.kind == "delay" else None
        self._seen_tmp, self._seen_steps = _listing(workdir)
        self._count, self._log_offset, self._log_text = 0, 0, ""

    def _matched(self) -> bool:
        kind = self.kill.kind
        if kind == "log":
            with open(self.log_path, "rb") as handle:
                handle.seek(self._log_offset)
                chunk = handle.read()
            self._log_offset += len(chunk)
            self._log_text = (self._log_text + chunk.decode("utf-8", "replace"))[-65536:]
            return re.search(str(self.kill.value), self._log_text, re.MULTILINE) is not None
        tmp, steps = _listing(self.workdir)
        new = (tmp - self._seen_tmp) if kind == "during_write" else (steps - self._seen_steps)
        self._seen_tmp, self._seen_steps = tmp, steps
        self._count += len(new)
        return self._count >= int(self.kill.value)

    def due(self, now: float) -> bool:
        if self.fire_at is None and self._matched():
            self.fire_at = now + float(self.kill.delay)
        return self.fire_at is not None and now >= self.fire_at


def launch(command: Sequence[str], workdir: str, log_path: str, kill: KillPoint | None = None, *,
           env: dict[str, str] | None = None, timeout_s: float = 900.0) -> Launch:
    """Runs ``command`` (which trains into ``workdir``) once, SIGKILLing it at ``kill`` if that comes first.

    Raises TimeoutError (after killing it) when it runs longer than ``timeout_s``.
    """
    start = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    trigger = _Trigger(kill, workdir, log_path, start) if kill is not None else None
    killed = False
    try:
        while process.poll() is None:
            now = time.monotonic()
            if now - start > timeout_s:
                raise TimeoutError(f"{' '.join(command)} ran longer than {timeout_s:g}s (log: {log_path})")
            if trigger is not None and trigger.due(now):
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(POLL_S[kill.kind] if kill is not None else 0.2)
    finally:
        local_processes.kill_group(process)
    tmp, steps = _listing(workdir)
    return Launch(kill, killed, None if killed else process.returncode, time.monotonic() - start,
                  sorted(tmp), sorted(int(step) for step in steps), log_path)


def run_trial(command: Sequence[str], workdir: str, kills: Sequence[KillPoint], *, log_dir: str,
              env: dict[str, str] | None = None, timeout_s: float = 900.0) -> list[Launch]:
    """One launch per kill point, then one to completion; stops early if a launch fails on its own.

    ``command`` must train into ``workdir``; re-running it is what resumes. The last launch has
    ``kill=None``; its ``returncode`` says whether the resumed run finished.
    """
    os.makedirs(log_dir, exist_ok=True)
    launches = []
    for index, kill in enumerate(list(kills) + [None]):
        log_path = os.path.join(log_dir, f"launch_{index}.log")
        launches.append(launch(command, workdir, log_path, kill, env=env, timeout_s=timeout_s))
        if not launches[-1].killed and launches[-1].returncode != 0:
            break
    return launches


def read_checkpoint(workdir: str, dirname: str = CHECKPOINT_DIRS[0],
                    step: int | None = None) -> tuple[int, dict[str, np.ndarray], dict]:
    """``(step, {'params/...': array}, meta)`` of finished step ``step`` (default: the newest) in
    WORKDIR/<dirname>, as numpy.

    No model or template needed: the arrays come back as saved (host numpy), whatever devices wrote them.
    """
    import jax
    import orbax.checkpoint as ocp

    folder = os.path.join(workdir, dirname)
    steps = sorted(int(name) for name in os.listdir(folder) if name.isdigit()) if os.path.isdir(folder) else []
    if not steps or (step is not None and step not in steps):
        raise ValueError(f"no finished checkpoint {'' if step is None else step} in {folder}")
    step = steps[-1] if step is None else step
    path = os.path.join(folder, str(step))
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(os.path.join(path, "state")).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(os.path.join(path, "state"), args=ocp.args.PyTreeRestore(restore_args=restore_args))
    with open(os.path.join(path, "meta", "metadata"), encoding="utf-8") as handle:
        return step, flatten(state), json.load(handle)


def flatten(tree: Any) -> dict[str, np.ndarray]:
    """``{'params/classifier/.../kernel': numpy array}`` of a (state-dict) tree."""
    import jax

    return {"/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _array_difference(name: str, expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> str | None:
    if expected.dtype != actual.dtype or expected.shape != actual.shape:
        return f"{name}: {actual.dtype}{list(actual.shape)} != {expected.dtype}{list(expected.shape)}"
    exact = (atol == 0 and rtol == 0) or not np.issubdtype(expected.dtype, np.floating)
    if exact and expected.tobytes() != actual.tobytes():
        return f"{name}: not bit-identical ({int(np.sum(expected != actual))} of {expected.size} values differ)"
    if not exact and not np.allclose(actual, expected, atol=atol, rtol=rtol):
        return f"{name}: max |diff| {float(np.max(np.abs(actual - expected))):.3g} beyond atol={atol:g} rtol={rtol:g}"
    return None


def _json_differences(expected: Any, actual: Any, where: str, atol: float) -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{where}.{key}: missing on one side" for key in sorted(set(expected) ^ set(actual))]
        for key in sorted(set(expected) & set(actual)):
            out += _json_differences(expected[key], actual[key], f"{where}.{key}", atol)
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [found for index, (e, a) in enumerate(zip(expected, actual))
                for found in _json_differences(e, a, f"{where}[{index}]", atol)]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (expected, actual))
    if numbers and atol > 0 and abs(float(expected) - float(actual)) <= atol:
        return []
    return [] if expected == actual else [f"{where}: {actual!r} != {expected!r}"]


@dataclasses.dataclass
class Comparison:
    """What ``compare_runs`` checked and every difference it found (empty: the runs agree)."""

    differences: list[str]
    arrays: int  # arrays compared over both checkpoint folders
    max_abs_diff: float  # largest |difference| over the floating-point arrays
    scope: str = "the final and best checkpoints (params, class_epsilon, class_beta, optimizer, counters, rng), " \
                 "their meta and eval.json"
    tolerance: str = ""  # empty: bit for bit

    def verdict(self) -> str:
        if not self.differences:
            agreement = f"CLOSE ({self.tolerance})" if self.tolerance else "IDENTICAL"
            return f"{agreement}: {self.arrays} arrays of {self.scope}"
        more = len(self.differences) - 3
        return "DIFFERENT: " + "; ".join(self.differences[:3]) + (f" (+{more} more)" if more > 0 else "")


def _tolerance_for(name: str, atol: float, rtol: float,
                   tolerances: Mapping[str, float]) -> tuple[float, float]:
    """``(atol, rtol)`` of one array: the entry of ``tolerances`` whose key is the array's top-level name
    (``class_epsilon``, ``params``, ``opt_state``...) as an absolute tolerance, else the defaults."""
    top = name.split("/", 1)[0]
    return (tolerances[top], 0.0) if top in tolerances else (atol, rtol)


def compare_checkpoints(reference: str, candidate: str, dirname: str = CHECKPOINT_DIRS[0], step: int | None = None,
                        *, atol: float = 0.0, rtol: float = 0.0,
                        tolerances: Mapping[str, float] | None = None) -> Comparison:
    """Compares one checkpoint (step ``step``, default the newest) of two workdirs: every array and the meta.

    ``atol``/``rtol`` 0 (the default) demand bit-identical arrays; ``tolerances`` gives one kind of array its
    own absolute tolerance by top-level name (``{"class_epsilon": 1e-3, "params": 1e-2}``), since a bound that
    suits weights can exceed the whole range of a per-class epsilon. Integer arrays (counters, rng, step) and
    the meta JSON are always compared exactly.
    """
    tolerances = dict(tolerances or {})
    try:
        ref_step, ref_arrays, ref_meta = read_checkpoint(reference, dirname, step)
        found_step, arrays, meta = read_checkpoint(candidate, dirname, step)
    except (OSError, ValueError) as error:
        return Comparison([f"{dirname}: {error}"], 0, 0.0, dirname)
    differences = [f"{dirname}: newest step {found_step} != {ref_step}"] if found_step != ref_step else []
    differences += [f"{dirname}/{name}: missing on one side" for name in sorted(set(ref_arrays) ^ set(arrays))]
    largest, common = 0.0, sorted(set(ref_arrays) & set(arrays))
    for name in common:
        expected, actual = ref_arrays[name], arrays[name]
        found = _array_difference(f"{dirname}/{name}", expected, actual, *_tolerance_for(name, atol, rtol, tolerances))
        differences += [found] if found else []
        if np.issubdtype(expected.dtype, np.floating) and expected.shape == actual.shape:
            largest = max(largest, float(np.max(np.abs(expected - actual), initial=0.0)))
    differences += _json_differences(ref_meta, meta, f"{dirname}/meta", 0.0)
    bounds = [f"float arrays within atol={atol:g} rtol={rtol:g}"] if atol or rtol else []
    bounds += [f"{key} within {value:g}" for key, value in sorted(tolerances.items())]
    tolerance = ", ".join(bounds)
    return Comparison(differences, len(common), largest, f"{dirname}/{ref_step} and its meta", tolerance)


def read_eval(workdir: str) -> dict:
    """WORKDIR/eval.json."""
    with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as handle:
        return json.load(handle)


def compare_eval(reference: str, candidate: str, *, metric_atol: float = 0.0,
                 ignore_eval_keys: Sequence[str] = EVAL_IGNORED_KEYS) -> list[str]:
    """Differences between the eval.json of two workdirs; ``metric_atol`` applies to every number."""
    try:
        reports = [{k: v for k, v in read_eval(w).items() if k not in ignore_eval_keys} for w in (reference, candidate)]
    except (OSError, ValueError) as error:
        return [f"eval.json: {error}"]
    return _json_differences(reports[0], reports[1], "eval.json", metric_atol)


def compare_runs(reference: str, candidate: str, *, atol: float = 0.0, rtol: float = 0.0, metric_atol: float = 0.0,
                 ignore_eval_keys: Sequence[str] = EVAL_IGNORED_KEYS) -> Comparison:
    """Compares two finished workdirs: newest periodic and best checkpoints (arrays and meta) and eval.json."""
    parts = [compare_checkpoints(reference, candidate, dirname, atol=atol, rtol=rtol) for dirname in CHECKPOINT_DIRS]
    differences = [found for part in parts for found in part.differences]
    differences += compare_eval(reference, candidate, metric_atol=metric_atol, ignore_eval_keys=ignore_eval_keys)
    tolerance = parts[0].tolerance + (f", eval.json numbers within {metric_atol:g}" if metric_atol else "")
    return Comparison(differences, sum(p.arrays for p in parts), max(p.max_abs_diff for p in parts),
                      tolerance=tolerance)
