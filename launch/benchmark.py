"""Speed of the training step, the evaluation forward pass and the input pipeline on this machine.

  python launch/benchmark.py [--out=BENCHMARKS.md] [--repeats=3] [--classifiers=resnet18,vit] [--config.x=y]

Measured in one process so the ratios compare like with like:
- train step (images/s) of every classifier with the ICFDNet decouplers (preset --icfdnet_preset, --image_size
  px): attack off, attack with the decoupled features held fixed (Fig. 2), and attack end to end through the
  decouplers; the step is the pmapped ``train.train_step`` over the local devices;
- eval forward (images/s) of ``fld.forward`` at the eval batch size;
- the input pipeline (``input_pipeline.measure_throughput``) on the synthetic data set at each --pipeline_sizes.

Each time is the median over --repeats calls after --warmup untimed calls (the first of which compiles), with
``jax.block_until_ready`` on the outputs. The first call's time (compile + run) is reported separately.
XLA compilation dominates the wall clock: the full default run took about 45 minutes on a busy 2-core CPU
(BENCHMARKS.md); --classifiers and --attack_modes narrow it (one classifier, one mode: a few minutes).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

ATTACK_MODES = ("off", "fixed", "end_to_end")


def time_calls(call: Callable[[], Any], *, warmup: int, repeats: int) -> dict:
    """Times ``call`` (which must block until its result is ready): first call, then median of ``repeats``.

    The first call is always made and timed separately (it includes compilation); ``warmup - 1`` more untimed
    calls follow, then ``repeats`` timed ones. Returns ``{'first_s', 'median_s', 'times_s'}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"first_s": first, "median_s": statistics.median(times), "times_s": times}


def machine_description() -> dict:
    """Versions and hardware that the numbers depend on."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    devices = jax.local_devices()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "device": f"{len(devices)} x {devices[0].platform} ({devices[0].device_kind})",
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        # Other processes slow every number down; the load says how busy the machine was.
        "load average (1/5/15 min) at start": " / ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def train_variant(config: ml_collections.ConfigDict, classifier: str, attack: str) -> ml_collections.ConfigDict:
    variant = ml_collections.ConfigDict(config.to_dict())
    variant.model.classifier = classifier
    variant.model.use_decouplers = True
    variant.adv.enabled = attack != "off"
    variant.adv.through_decouplers = attack == "end_to_end"
    return variant


def initial_state(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """(model, train state) for ``config``, placed as the pmapped train step returns its state.

    The step's output is replicated over a ``batch`` mesh with every leaf an array; a state straight from
    ``create_train_state`` differs in that respect, so the step's second call would compile it again.
    """
    from flax_fld import train
    from flax_fld.models import fld

    size, channels = config.data.image_size, config.data.channels
    model = fld.create_fld_model(config.model, len(config.data.class_names), channels)
    state = train.create_train_state(config, model, (size, size, channels), jax.random.key(config.seed),
                                     steps_per_epoch=100)
    return model, train.replicate(jax.tree.map(jax.numpy.asarray, state))


def benchmark_train_step(config: ml_collections.ConfigDict, model: Any, state: Any, *, warmup: int,
                         repeats: int) -> dict:
    """Images/s of the pmapped training step on random data shaped like the config's batches.

    ``state`` is copied first (the step donates its input), so one initial state serves several configs.
    """
    from flax_fld import train

    devices = jax.local_device_count()
    batch_size = config.train.per_device_batch_size
    size, channels = config.data.image_size, config.data.channels
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((devices, batch_size, size, size, channels), dtype=np.float32),
             "label": rng.integers(0, model.num_classes, (devices, batch_size), dtype=np.int32)}
    # The exact step training runs: pmapped over the local devices, state broadcast in and donated; the
    # batch stays a numpy array, as the training loop passes it (its host-to-device copy is part of a step).
    step = train.parallel_train_step(model, ml_collections.FrozenConfigDict(config))
    holder = {"state": jax.tree.map(lambda leaf: leaf.copy(), state)}

    def call():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    timing = time_calls(call, warmup=warmup, repeats=repeats)
    timing["images_per_s"] = devices * batch_size / timing["median_s"]
    return timing


def benchmark_forward(config: ml_collections.ConfigDict, model: Any, state: Any, *, warmup: int,
                      repeats: int) -> dict:
    """Images/s of the eval-mode forward pass (decouple + classify) on one device at the eval batch size."""
    from flax_fld.models import fld

    size, channels = config.data.image_size, config.data.channels
    variables = jax.device_put({"params": state.params, "batch_stats": state.batch_stats}, jax.local_devices()[0])
    images = jax.device_put(np.random.default_rng(0).random(
        (config.train.eval_batch_size, size, size, channels), dtype=np.float32))
    forward = jax.jit(lambda v, x: fld.forward(model, v, x, train=False)[0])
    timing = time_calls(lambda: forward(variables, images).block_until_ready(), warmup=warmup, repeats=repeats)
    timing["images_per_s"] = config.train.eval_batch_size / timing["median_s"]
    return timing


def benchmark_pipeline(config: ml_collections.ConfigDict, data_dir: str, image_size: int, *,
                       num_batches: int, repeats: int) -> float:
    """Images/s (median of ``repeats`` measurements) of the training input pipeline on the synthetic data set."""
    from flax_fld import input_pipeline

    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.name = "synthetic_fatty_liver"
    data_config.image_size = image_size
    input_pipeline.prepare_dataset(data_config, data_dir)  # generated once, then reused from data_dir
    return statistics.median(
        input_pipeline.measure_throughput(data_config, data_dir, batch_size=config.train.per_device_batch_size,
                                          num_batches=num_batches)
        for _ in range(repeats))


def format_report(machine: dict, command: str, settings: dict, train_results: dict, forward_results: dict,
                  pipeline_results: dict) -> str:
    """The markdown page: header (command, date, versions, device), then one table per measurement."""
    lines = ["# Benchmarks", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in {**machine, **settings}.items()]
    if train_results:
        lines += ["", f"## Train step ({settings['image size']} px, ICFDNet '{settings['icfdnet preset']}', "
                      f"{settings['attack steps']} attack steps)", "",
                  "Images/s (median); ratios are slowdowns measured in this run; first call = compile + run.", "",
                  "| Classifier | no attack img/s | fixed-features attack img/s | end-to-end attack img/s "
                  "| fixed / off | end-to-end / fixed | first call s (off / fixed / e2e) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for classifier, modes in train_results.items():
            speed = {mode: modes[mode]["images_per_s"] for mode in modes}
            cells = [classifier] + [f"{speed[m]:.1f}" if m in speed else "–" for m in ATTACK_MODES]
            cells.append(f"{speed['off'] / speed['fixed']:.2f}x" if {"off", "fixed"} <= set(speed) else "–")
            cells.append(f"{speed['fixed'] / speed['end_to_end']:.2f}x"
                         if {"fixed", "end_to_end"} <= set(speed) else "–")
            cells.append(" / ".join(f"{modes[m]['first_s']:.1f}" if m in modes else "–" for m in ATTACK_MODES))
            lines.append("| " + " | ".join(cells) + " |")
    if forward_results:
        lines += ["", f"## Eval forward ({settings['image size']} px, batch {settings['eval batch']}, "
                      "decouple + classify, eval mode)", "",
                  "| Classifier | img/s | ms / batch | first call s |", "| --- | ---: | ---: | ---: |"]
        for classifier, timing in forward_results.items():
            lines.append(f"| {classifier} | {timing['images_per_s']:.1f} | {1000 * timing['median_s']:.1f} "
                         f"| {timing['first_s']:.1f} |")
    if pipeline_results:
        slowest = min((modes[m]["images_per_s"] for modes in train_results.values() for m in modes
                       if m != "off"), default=None)
        lines += ["", "## Input pipeline (synthetic_fatty_liver, training iterator with augmentation)", "",
                  "| Image size | img/s | / slowest attacked train step |", "| ---: | ---: | ---: |"]
        for size, speed in pipeline_results.items():
            ratio = f"{speed / slowest:.0f}x" if slowest else "–"
            lines.append(f"| {size} px | {speed:.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from flax_fld import models

    config = _CONFIG.value
    config.data.image_size = _IMAGE_SIZE.value
    config.model.icfdnet_preset = _ICFDNET_PRESET.value
    if _BATCH_SIZE.value:
        config.train.per_device_batch_size = _BATCH_SIZE.value
    classifiers = [c for c in _CLASSIFIERS.value.split(",") if c] or list(models.registry)
    unknown = [c for c in classifiers if c not in models.registry]
    if unknown:
        raise app.UsageError(f"unknown classifiers {unknown}; choose from {sorted(models.registry)}")
    modes = [m for m in _ATTACK_MODES.value.split(",") if m]
    if not set(modes) <= set(ATTACK_MODES):
        raise app.UsageError(f"--attack_modes must be a subset of {ATTACK_MODES}")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    machine = machine_description()  # before the measurements: the load average is the one at the start

    train_results: dict[str, dict] = {}
    forward_results: dict[str, dict] = {}
    for classifier in classifiers:
        train_results[classifier] = {}
        # One initial state per classifier: the attack switches do not change the parameters or optimizer.
        model, state = initial_state(train_variant(config, classifier, "off"))
        for mode in modes:
            variant = train_variant(config, classifier, mode)
            timing = benchmark_train_step(variant, model, state, warmup=_WARMUP.value, repeats=_REPEATS.value)
            train_results[classifier][mode] = timing
            log(f"train step {classifier} attack={mode}: {timing['images_per_s']:.1f} img/s "
                f"(first call {timing['first_s']:.1f} s)")
        if _FORWARD.value:
            timing = benchmark_forward(config, model, state, warmup=_WARMUP.value, repeats=_REPEATS.value)
            forward_results[classifier] = timing
            log(f"eval forward {classifier}: {timing['images_per_s']:.1f} img/s")
    pipeline_results = {}
    for size in (int(s) for s in _PIPELINE_SIZES.value.split(",") if s):
        pipeline_results[size] = benchmark_pipeline(config, _DATA_DIR.value, size,
                                                    num_batches=_PIPELINE_BATCHES.value, repeats=_REPEATS.value)
        log(f"input pipeline {size} px: {pipeline_results[size]:.0f} img/s")

    settings = {
        "image size": config.data.image_size, "icfdnet preset": config.model.icfdnet_preset,
        "per-device batch": config.train.per_device_batch_size, "eval batch": config.train.eval_batch_size,
        "attack steps": config.adv.num_steps, "repeats (median of)": _REPEATS.value,
        "warm-up calls": _WARMUP.value,
    }
    command = "python " + " ".join(sys.argv)
    settings["load average (1/5/15 min) at end"] = " / ".join(f"{load:.2f}" for load in os.getloadavg())
    report = format_report(machine, command, settings, train_results, forward_results,
                           pipeline_results)
    print(report)
    if _OUT.value:
        with open(_OUT.value, "w", encoding="utf-8") as handle:
            handle.write(report)
        log(f"wrote {_OUT.value}")


if __name__ == "__main__":
    # Flags are defined only when run as a script, so tests can import this module next to other launchers.
    _CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Base config (model, batch, attack).")
    _CLASSIFIERS = flags.DEFINE_string("classifiers", "", "Comma-separated classifiers; empty = all.")
    _ATTACK_MODES = flags.DEFINE_string("attack_modes", ",".join(ATTACK_MODES), "Subset of off,fixed,end_to_end.")
    _IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Image side for the train step and forward (px).")
    _ICFDNET_PRESET = flags.DEFINE_string("icfdnet_preset", "cpu", "ICFDNet preset of both decouplers.")
    _BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Per-device train batch; 0 = the config's.")
    _WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls before timing (the first compiles).")
    _REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls; the median is reported.")
    _FORWARD = flags.DEFINE_bool("forward", True, "Also time the eval forward pass.")
    _PIPELINE_SIZES = flags.DEFINE_string("pipeline_sizes", "64,224", "Input pipeline image sizes; empty = skip.")
    _PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 20, "Batches per pipeline measurement.")
    _DATA_DIR = flags.DEFINE_string("data_dir", "workdir/tfds_data", "Where the synthetic data sets are prepared.")
    _OUT = flags.DEFINE_string("out", "", "Also write the markdown report to this file.")
    app.run(main)
