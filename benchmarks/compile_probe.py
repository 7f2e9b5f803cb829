"""Where a training run's compile time goes: every XLA program ``launch/train.py`` compiles, by phase.

  python benchmarks/compile_probe.py --image_size=64 --per_device_batch_size=2 --num_steps=2 \
      --eval_steps=2 --eval_batch_size=8                                  # on a CPU
  python benchmarks/compile_probe.py                                      # configs/paper.py as it is (GPU)
  python benchmarks/compile_probe.py --memory_only --memory_batches=8,16,32,64        # peak memory per batch
  python benchmarks/compile_probe.py --launch_repeats=3 --per_device_batch_size=2 --num_steps=2
  python benchmarks/compile_probe.py --launch_repeats=3 --launch_cached --per_device_batch_size=2 --num_steps=2
  python benchmarks/compile_probe.py --parts --image_size=64 --per_device_batch_size=2 --num_steps=2

Runs what ``train.train_and_evaluate`` runs, in its order, on the config's embedded synthetic data (by
default ``--num_examples=20`` images: 12 train, 3 validation, 5 test): the state's initialisation, the
first training step, ``end_epoch``, the validation (robust when the config validates robustly), the test
evaluation under both threat models, the test report's calibration and decoupling grid, and then a second
epoch (step, end_epoch, validation), which must compile nothing (``jax_explain_cache_misses`` is on there,
so a recompilation says why). The training step compiles in a thread beside the state's initialisation, as
in ``train.train_and_evaluate``. ``flax_fld.training.compile_log`` records each program JAX hands to XLA (name,
lowering s, compile s); the large ones are lowered again afterwards to count their StableHLO operations and
distinct convolution and dot_general shapes (in the layer forms of this backend, and for the step also in
the plain forms a GPU uses). Compile time does not depend on the attack's K nor on PGD's steps (both are
``fori_loop``s), so on a CPU ``--num_steps`` and ``--eval_steps`` can be small.

Each program's compile seconds are printed (stderr) as it completes, and with ``--jsonl=PATH`` every
program, part and memory row is appended there as one JSON line the moment it is measured, so a run that a
time limit ends still leaves what it measured.

``--memory_batches``: XLA's memory analysis of the compiled FLD + TRADES step at each per-device batch
(plain layer forms, as on a GPU; compiled on this backend, so an estimate for another), and a linear fit.
``--parts``: the step and its four parts (``benchmarks/step_parts.py``), each compiled alone under
``jax.profiler``, in the order ``--parts_programs`` gives (by default the decouplers first: the part with
the most kernels, 628 of the step's 1,562 on a CPU, and IC1/IC2's convolutions), each lowered just before
its compile and reported as soon as it is compiled: StableHLO operations, the kernels XLA compiled (its
``FusionCompiler::Compile`` events on a CPU), compile s, and the compile's largest events (HLO passes,
kernel emission, LLVM code generation; on a GPU autotuning and ptxas).
``--launch_repeats``: runs ``launch/train.py`` that many times (compilation cache off) and reports the
seconds from the process start to its first training step's log line, with the compile count it printed;
with ``--launch_cached``, on a persistent compilation cache that a first launch fills (as a resumed run).
The persistent compilation cache is off in this script: it measures compiles.
"""

import collections
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/ is not installed
from flax_fld.runs import cli  # noqa: E402  pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (default configs/paper.py).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Overrides data.image_size.")
_BATCH = flags.DEFINE_integer("per_device_batch_size", None, "Overrides train.per_device_batch_size.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Overrides adv.num_steps, the attack's K (a fori_loop: "
                                  "compile time does not depend on it).")
_EVAL_STEPS = flags.DEFINE_integer("eval_steps", None, "Overrides adv.eval_steps, PGD's steps in validation and "
                                   "test (a fori_loop too).")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", None, "Overrides train.eval_batch_size.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 20, "Synthetic images (60/15/25 split) of the probe's data.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Where the probe's synthetic data is prepared (default: a "
                                "folder under the system's temporary directory, kept between probes).")
_MEMORY_BATCHES = flags.DEFINE_list("memory_batches", [], "Per-device batches whose FLD + TRADES step's "
                                    "memory analysis to report (e.g. 8,16,32,64); empty: none.")
_MEMORY_ONLY = flags.DEFINE_bool("memory_only", False, "Only the --memory_batches table.")
_LAUNCH_REPEATS = flags.DEFINE_integer("launch_repeats", 0, "Time launch/train.py to its first step this many "
                                       "times instead of probing.")
_PARTS = flags.DEFINE_bool("parts", False, "Only the step's parts (decouplers, attack, loss, update) and the "
                           "whole step, each compiled alone under the profiler: ops, kernels, compile s, and "
                           "XLA's largest compile events of each.")
_PARTS_PROGRAMS = flags.DEFINE_list("parts_programs", [], "With --parts: these programs in this order (decouplers, "
                                    "attack, loss, update, step); empty: all five, in that order.")
_JSONL = flags.DEFINE_string("jsonl", "", "Also append each program, part and memory row here as a JSON line, "
                             "flushed as it is measured.")
_LAUNCH_CACHED = flags.DEFINE_bool("launch_cached", False, "With --launch_repeats: one launch fills a fresh "
                                   "persistent compilation cache, then the repeats launch with it (a resumed run).")
_LAUNCH_TIMEOUT = flags.DEFINE_integer("launch_timeout", 1200, "Seconds before a timed launch is given up.")


def record(kind: str, **fields) -> None:
    """Appends ``{"kind": kind, **fields}`` to ``--jsonl`` as one line, flushed (nothing without the flag)."""
    if _JSONL.value:
        with open(_JSONL.value, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, **fields}) + "\n")


def announce_compiles(log):
    """Prints each program as XLA finishes it (1 s or more; all go to ``--jsonl``); returns the undo."""
    import jax  # pylint: disable=import-outside-toplevel

    from flax_fld.training import compile_log  # pylint: disable=import-outside-toplevel

    def listener(event: str, duration: float, **kwargs) -> None:
        if event != compile_log.BACKEND_COMPILE_EVENT:
            return
        name, thread = str(kwargs.get("fun_name", "?")), threading.current_thread().name
        record("program", phase=log.phase, name=name, compile_s=round(duration, 3), thread=thread)
        if duration >= 1.0:
            print(f"  compiled {name} in {duration:.1f} s [{log.phase}; thread {thread}]", file=sys.stderr,
                  flush=True)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return lambda: jax.monitoring.unregister_event_duration_listener(listener)


def probe_config():
    """The config with this script's overrides applied (and the data set the probe prepares)."""
    config = _CONFIG.value
    if _IMAGE_SIZE.value:
        config.data.image_size = _IMAGE_SIZE.value
    if _BATCH.value:
        config.train.per_device_batch_size = _BATCH.value
    if _NUM_STEPS.value:
        config.adv.num_steps = _NUM_STEPS.value
    if _EVAL_STEPS.value:
        config.adv.eval_steps = _EVAL_STEPS.value
    if _EVAL_BATCH.value:
        config.train.eval_batch_size = _EVAL_BATCH.value
    if config.data.name == "synthetic_fatty_liver":
        config.data.num_examples = _NUM_EXAMPLES.value
    config.data.data_dir = _DATA_DIR.value or config.data.get("data_dir", "") or os.path.join(
        tempfile.gettempdir(), "flax_fld_probe_data")
    return config


def stablehlo_size(text: str) -> tuple[int, int, int]:
    """(StableHLO operations, distinct convolution signatures, distinct dot_general signatures) of a lowering.

    A signature is the operation's attributes and operand/result types with the SSA names removed, so two
    convolutions of the same shapes, window and layout count once (XLA and cuDNN see them as one kind).
    """
    operations, convolutions, dots = 0, set(), set()
    for line in text.splitlines():
        match = re.match(r"\s*(?:%[\w#:, %]+ = )?\"?(stablehlo|chlo|mhlo)\.(\w+)", line)
        if not match:
            continue
        operations += 1
        signature = re.sub(r"%[\w#]+", "%", line.split("=", 1)[-1]).strip()
        if match.group(2) == "convolution":
            convolutions.add(re.sub(r"loc\(.*\)$", "", signature))
        elif match.group(2) == "dot_general":
            dots.add(re.sub(r"loc\(.*\)$", "", signature))
    return operations, len(convolutions), len(dots)


def _with_layer_forms(form: str, build):
    """``build()`` traced with ``FLAX_FLD_LAYER_FORMS=form`` (read at trace time), the variable restored."""
    from flax_fld.models import layer_forms  # pylint: disable=import-outside-toplevel

    previous = os.environ.get(layer_forms.ENV)
    os.environ[layer_forms.ENV] = form
    try:
        return build()
    finally:
        if previous is None:
            del os.environ[layer_forms.ENV]
        else:
            os.environ[layer_forms.ENV] = previous


def fresh_train_step(model, frozen_config):
    """The pmapped step as ``train.parallel_train_step`` builds it, as a new function (so no trace cache hit)."""
    import jax  # pylint: disable=import-outside-toplevel

    from flax_fld.training import train  # pylint: disable=import-outside-toplevel

    step = functools.partial(train.train_step, model=model, config=frozen_config)
    return jax.pmap(step, axis_name=train.AXIS_NAME, in_axes=(None, 0), out_axes=(None, None), donate_argnums=(0,))


def run_probe(config, log) -> tuple[list[tuple[str, float]], dict]:
    """Runs the phases of a training run (see the module docstring), leaving the programs in ``log``; returns
    the (phase, wall s) rows and what ``sizes`` needs to lower the large programs again."""
    import jax  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel

    from flax_fld.data import input_pipeline  # pylint: disable=import-outside-toplevel
    from flax_fld.evaluation import evaluate  # pylint: disable=import-outside-toplevel
    from flax_fld.reporting import run_outputs  # pylint: disable=import-outside-toplevel
    from flax_fld.training import train  # pylint: disable=import-outside-toplevel
    from flax_fld.models import fld  # pylint: disable=import-outside-toplevel

    phases = []

    def phase(name, work):
        log.phase = name
        start = time.perf_counter()
        result = work()
        jax.block_until_ready(result)
        phases.append((name, time.perf_counter() - start))
        print(f"  {name}: {phases[-1][1]:.1f} s, {log.count(name)} programs", file=sys.stderr, flush=True)
        record("phase", phase=name, wall_s=round(phases[-1][1], 3), programs=log.count(name))
        return result

    data = phase("data", lambda: input_pipeline.prepare_data_source(config.data, config.data.data_dir))
    info = data.info
    model = fld.create_fld_model(config.model, len(info.class_names), info.image_shape[-1])
    train_iter = input_pipeline.TrainIterator(
        data, per_device_batch_size=int(config.train.per_device_batch_size),
        local_device_count=jax.local_device_count(), seed=int(config.seed))
    frozen = ml_collections.FrozenConfigDict(config)
    p_train_step = train.parallel_train_step(model, frozen)
    p_end_epoch = train.jitted_end_epoch(frozen.adv)
    wait = lambda: None  # noqa: E731
    if hasattr(train, "compile_step_in_background"):  # as train_and_evaluate does
        wait = train.compile_step_in_background(p_train_step, config, model, info.image_shape,
                                                train_iter.steps_per_epoch)
    state = phase("init (create_train_state + replicate)", lambda: train.replicate(train.create_train_state(
        config, model, info.image_shape, jax.random.key(int(config.seed)), train_iter.steps_per_epoch)))
    batch = next(train_iter)
    state_before_step = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding,
                                                                       weak_type=leaf.weak_type), state)
    phase("waiting for the step's compile", wait)
    state, _ = phase("first train step", lambda: p_train_step(state, batch))
    state = phase("end_epoch", lambda: p_end_epoch(state))
    robust_validation = bool(config.train.validate_robust)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    phase("validation" + (" (robust)" if robust_validation else ""), lambda: evaluate.evaluate_split(
        model, variables, config, data, split="validation", robust=robust_validation)["average"])
    phase("test evaluation (both threat models)", lambda: evaluate.evaluate_split(
        model, state.inference_variables(), config, data, split="test", robust=True,
        both_threat_models=True)["average"])
    with tempfile.TemporaryDirectory() as folder:
        phase("test report (calibration, decoupling grid)", lambda: (
            evaluate.calibration_report(model, state.inference_variables(), config, data, split="test")["ece"],
            run_outputs.plot_decoupling_examples(model, state.inference_variables(), config, data,
                                                 os.path.join(folder, "grid.png")))[0])

    def second_epoch():
        nonlocal state
        state, metrics = p_train_step(state, next(train_iter))
        state = p_end_epoch(state)
        evaluate.evaluate_split(model, {"params": state.params, "batch_stats": state.batch_stats}, config, data,
                                split="validation", robust=robust_validation)
        return metrics

    jax.config.update("jax_explain_cache_misses", True)
    try:
        phase("second epoch (step, end_epoch, validation)", second_epoch)
    finally:
        jax.config.update("jax_explain_cache_misses", False)
    eval_batch = next(input_pipeline.eval_batches(
        data, split="validation", per_device_batch_size=int(config.train.eval_batch_size),
        local_device_count=jax.local_device_count()))
    return phases, dict(model=model, frozen=frozen, state=state_before_step, batch=batch, eval_batch=eval_batch,
                        variables=variables)


def sizes(config, built) -> list[tuple]:
    """(program, StableHLO ops, distinct convolutions, distinct dot_generals, lowering s) for the large programs,
    lowered again (not compiled) in the backend's layer forms and, for the step, in the plain (GPU) forms."""
    import jax  # pylint: disable=import-outside-toplevel

    from flax_fld.evaluation import evaluate  # pylint: disable=import-outside-toplevel
    from flax_fld.training import train  # pylint: disable=import-outside-toplevel

    rows = []
    model, frozen = built["model"], built["frozen"]

    def lowered(name, build):
        start = time.perf_counter()
        text = build().as_text()
        rows.append((name, *stablehlo_size(text), time.perf_counter() - start))

    lowered("train step", lambda: fresh_train_step(model, frozen).lower(built["state"], built["batch"]))
    lowered("train step, plain layer forms (GPU)", lambda: _with_layer_forms(
        "plain", lambda: fresh_train_step(model, frozen).lower(built["state"], built["batch"])))
    lowered("end_epoch", lambda: jax.jit(functools.partial(train.end_epoch, adv_config=frozen.adv)).lower(
        built["state"]))
    key = jax.random.key(0)
    for robust, end_to_end, name in ((bool(config.train.validate_robust), True, "validation / test eval step"),
                                     (True, False, "test eval step, fixed features")):
        settings = (float(config.adv.eval_epsilon), int(config.adv.eval_steps), float(config.adv.eval_step_size),
                    end_to_end)
        step = functools.partial(evaluate.eval_step, model=model, robust=robust, attack_settings=settings)
        lowered(name, lambda step=step: jax.pmap(step, axis_name="batch", in_axes=(None, 0, None), out_axes=None)
                .lower(built["variables"], built["eval_batch"], key))
    return rows


def memory_table(config, batches: list[int]) -> list[tuple]:
    """(per-device batch, argument, output, alias, temp, estimated peak bytes, compile s) of the FLD + TRADES step."""
    import jax  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from flax_fld.training import train  # pylint: disable=import-outside-toplevel
    from flax_fld.models import fld  # pylint: disable=import-outside-toplevel

    size, channels = int(config.data.image_size), int(config.data.channels)
    model = fld.create_fld_model(config.model, len(config.data.class_names), channels)
    abstract_state = train.abstract_train_state(config, model, (size, size, channels), 100)
    rows = []
    for per_device in batches:
        devices = jax.local_device_count()
        batch = {"image": jax.ShapeDtypeStruct((devices, per_device, size, size, channels), np.float32),
                 "label": jax.ShapeDtypeStruct((devices, per_device), np.int32)}
        start = time.perf_counter()
        compiled = _with_layer_forms("plain", lambda: fresh_train_step(
            model, ml_collections.FrozenConfigDict(config)).lower(abstract_state, batch)).compile()
        analysis = compiled.memory_analysis()
        seconds = time.perf_counter() - start
        argument, output = analysis.argument_size_in_bytes, analysis.output_size_in_bytes
        alias, temp = analysis.alias_size_in_bytes, analysis.temp_size_in_bytes
        rows.append((per_device, argument, output, alias, temp, argument + output - alias + temp, seconds))
        record("memory", per_device_batch=per_device, peak_estimate_gib=round(rows[-1][5] / 2**30, 4),
               temp_gib=round(temp / 2**30, 4), compile_s=round(seconds, 3))
        print(f"  batch {per_device}: peak estimate {rows[-1][5] / 2**30:.2f} GiB (compiled in {seconds:.0f} s, "
              f"load average {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return rows


def largest_batches(rows: list[tuple], budgets_gb=(16, 40, 80)) -> list[tuple[int, int]]:
    """(budget GB, largest per-device batch) from the least-squares line through (batch, peak bytes)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    if len(rows) < 2:
        return []
    slope, intercept = np.polyfit([row[0] for row in rows], [row[5] for row in rows], 1)
    return [(budget, int((budget * 1e9 - intercept) // slope)) for budget in budgets_gb]


def _launch_to_first_step(command: list[str], environment: dict) -> tuple[float, str]:
    """(seconds from the start of ``command`` to its first step's log line, the compile count it printed)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment, cwd=REPO)
    count, elapsed, output = "", None, []
    try:
        for line in process.stdout:
            output.append(line)
            if "XLA programs compiled" in line:
                count = line.strip()
            if line.startswith("step 1/"):
                elapsed = time.perf_counter() - start
                break
            if time.perf_counter() - start > _LAUNCH_TIMEOUT.value:
                break
    finally:
        process.kill()
        process.wait()
    if elapsed is None:
        raise SystemExit("launch/train.py did not reach its first step:\n" + "".join(output[-20:]))
    return elapsed, count


def time_launches(config_path: str, repeats: int, overrides: list[str], cached: bool = False) -> None:
    """Seconds from ``launch/train.py``'s start to its first step's line, ``repeats`` times: compilation cache
    off, or (``cached``) on a fresh cache that one untimed-for-the-median launch fills first."""
    seconds = []
    with tempfile.TemporaryDirectory() as cache:
        environment = dict(os.environ, FLAX_FLD_COMPILATION_CACHE=cache if cached else "0", PYTHONUNBUFFERED="1")
        environment.pop("JAX_COMPILATION_CACHE_DIR", None)
        for repeat in range(-1 if cached else 0, repeats):
            with tempfile.TemporaryDirectory() as workdir:
                command = [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--config={config_path}",
                           f"--workdir={os.path.join(workdir, 'run')}", "--config.train.log_every_steps=1",
                           *overrides]
                elapsed, count = _launch_to_first_step(command, environment)
            what = "filling the cache" if repeat < 0 else f"{repeat + 1}/{repeats}"
            print(f"  launch {what}: first step after {elapsed:.1f} s (load average {os.getloadavg()[0]:.2f}); "
                  f"{count or 'no compile count printed'}", file=sys.stderr, flush=True)
            if repeat >= 0:
                seconds.append(elapsed)
    print(f"launch/train.py {' '.join(overrides)}, compilation cache {'warm' if cached else 'off'}: first step "
          f"after {statistics.median(seconds):.1f} s (median of {repeats}: {', '.join(f'{s:.1f}' for s in seconds)})")


def parts_table(config) -> None:
    """Prints the ``--parts`` tables (see the module docstring)."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel

    from benchmarks import step_parts, timing  # pylint: disable=import-outside-toplevel
    from flax_fld.models import fld  # pylint: disable=import-outside-toplevel
    from flax_fld.training import train  # pylint: disable=import-outside-toplevel

    channels = int(config.data.channels)
    image_shape = (int(config.data.image_size), int(config.data.image_size), channels)
    model = fld.create_fld_model(config.model, len(config.data.class_names), channels)
    batch = int(config.train.per_device_batch_size)
    wanted = list(dict.fromkeys(_PARTS_PROGRAMS.value or (*step_parts.PART_NAMES, "step")))
    unknown = set(wanted) - {*step_parts.PART_NAMES, "step"}
    if unknown:
        raise app.UsageError(f"--parts_programs: unknown {sorted(unknown)}; expected {step_parts.PART_NAMES} or step")
    parts = step_parts.step_parts(config, model, image_shape, batch)
    devices = jax.local_device_count()

    def lower(name):
        if name != "step":
            function, arguments = parts[name]
            return jax.jit(function).lower(*arguments)
        return fresh_train_step(model, ml_collections.FrozenConfigDict(config)).lower(
            train.abstract_train_state(config, model, image_shape, 10),
            {"image": jax.ShapeDtypeStruct((devices, batch, *image_shape), jnp.float32),
             "label": jax.ShapeDtypeStruct((devices, batch), jnp.int32)})

    labels = {"step": "whole step (pmapped)"}
    rows = []
    for name in wanted:  # each lowered just before its compile, reported as soon as it is compiled
        start = time.perf_counter()
        lowered = lower(name)
        lower_s = time.perf_counter() - start
        operations = stablehlo_size(lowered.as_text())[0]
        wall, events = step_parts.compile_trace_summary(lowered, top=None)
        kernels = sum(count for event, _, count in events if event == "FusionCompiler::Compile") or "-"
        rows.append((labels.get(name, name), operations, kernels, lower_s, wall))
        record("part", program=name, stablehlo_ops=operations, kernels=kernels, lower_s=round(lower_s, 3),
               compile_s=round(wall, 3), events=[[event, round(seconds, 3), count]
                                                 for event, seconds, count in events[:12]])
        print(f"  part {name}: compiled in {wall:.1f} s ({kernels} kernels)", file=sys.stderr, flush=True)
        print(f"### {labels.get(name, name)}: {operations} StableHLO ops, {kernels} kernels compiled, lowered in "
              f"{lower_s:.1f} s, compiled in {wall:.1f} s (load average {timing.load_average()})\n")
        print("XLA's largest compile events (summed over its threads):\n")
        print("| event | s | count |")
        print("|---|---:|---:|")
        for event, seconds, count in events[:12]:
            print(f"| {event} | {seconds:.1f} | {count} |")
        print(flush=True)
    print(f"load average {timing.load_average()}\n")
    print("| program | StableHLO ops | kernels compiled | lowering s | compile s |")
    print("|---|---:|---:|---:|---:|")
    for label, operations, kernels, lower_s, wall in rows:
        print(f"| {label} | {operations} | {kernels} | {lower_s:.1f} | {wall:.1f} |")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import jax  # pylint: disable=import-outside-toplevel

    from flax_fld.training import compile_log  # pylint: disable=import-outside-toplevel
    from benchmarks import timing  # pylint: disable=import-outside-toplevel

    config = probe_config()
    header = (f"{jax.devices()[0].device_kind} x {jax.local_device_count()} ({jax.default_backend()}), JAX "
              f"{jax.__version__}, {time.strftime('%Y-%m-%d')}; config {config.model.icfdnet_preset} ICFDNet + "
              f"{config.model.classifier}, {config.data.image_size} px, per-device batch "
              f"{config.train.per_device_batch_size}, K = {config.adv.num_steps}, eval PGD-{config.adv.eval_steps}")
    if _LAUNCH_REPEATS.value:
        overrides = [f"--config.data.image_size={config.data.image_size}",
                     f"--config.train.per_device_batch_size={config.train.per_device_batch_size}",
                     f"--config.adv.num_steps={config.adv.num_steps}", f"--config.data.data_dir={config.data.data_dir}"]
        if config.data.name == "synthetic_fatty_liver":
            overrides.append(f"--config.data.num_examples={config.data.num_examples}")
        overrides += [arg for arg in sys.argv[1:] if arg.startswith("--config.")]  # the command line's own
        print(header)
        time_launches(config_flags.get_config_filename(flags.FLAGS["config"]), _LAUNCH_REPEATS.value, overrides,
                      cached=_LAUNCH_CACHED.value)
        return
    print(header)
    if _PARTS.value:
        parts_table(config)
        return
    if not _MEMORY_ONLY.value:
        with compile_log.CompileLog() as log:
            undo = announce_compiles(log)
            start = time.perf_counter()
            try:
                phases, built = run_probe(config, log)
            finally:
                undo()
            total = time.perf_counter() - start
        print(f"\nload average {timing.load_average()}; wall {total:.1f} s, {len(log.programs)} XLA programs, "
              f"{log.seconds():.1f} s lowering + compiling, {log.trace_s:.1f} s tracing\n")
        def where(program):
            return "" if program.thread == "MainThread" else f" [thread {program.thread}]"

        print("| phase | wall s | programs | lowering + compile s | largest programs (lower s + compile s) |")
        print("|---|---:|---:|---:|---|")
        for name, wall in phases:
            programs = sorted((p for p in log.programs if p.phase == name), key=lambda p: -(p.compile_s + p.lower_s))
            largest = ", ".join(f"{p.name}{where(p)} ({p.lower_s:.1f} + {p.compile_s:.1f})" for p in programs[:4])
            print(f"| {name} | {wall:.1f} | {len(programs)} | {log.seconds(name):.1f} | {largest} |")
        small = collections.Counter(p.phase for p in log.programs if p.compile_s + p.lower_s < 0.5)
        print(f"\nprograms under 0.5 s (eager operations and small jits), by phase: {dict(small)}\n")
        print("| program | lowering s | compile s | StableHLO ops | distinct convolutions | distinct dot_generals |")
        print("|---|---:|---:|---:|---:|---:|")
        big = sorted(log.programs, key=lambda p: -(p.compile_s + p.lower_s))[:8]
        for program in big:
            print(f"| {program.phase}: {program.name}{where(program)} | {program.lower_s:.1f} | "
                  f"{program.compile_s:.1f} | | | |")
        for name, operations, convolutions, dots, seconds in sizes(config, built):
            print(f"| {name} (lowered again) | {seconds:.1f} | | {operations} | {convolutions} | {dots} |")
    if _MEMORY_BATCHES.value:
        rows = memory_table(config, [int(batch) for batch in _MEMORY_BATCHES.value])
        print(f"\nFLD + TRADES step, {config.data.image_size} px, plain layer forms, XLA memory analysis on "
              f"{jax.default_backend()} (an estimate for another backend); load average {timing.load_average()}\n")
        print("| per-device batch | arguments GiB | outputs GiB | aliased GiB | temporaries GiB | peak estimate GiB |"
              " compile s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for batch, argument, output, alias, temp, peak, seconds in rows:
            print(f"| {batch} | {argument / 2**30:.2f} | {output / 2**30:.2f} | {alias / 2**30:.2f} | "
                  f"{temp / 2**30:.2f} | {peak / 2**30:.2f} | {seconds:.0f} |")
        for budget, batch in largest_batches(rows):
            print(f"largest per-device batch in {budget} GB (linear fit of the rows above): {batch}")


if __name__ == "__main__":
    cli.run_main(main, default_config="paper", compilation_cache=False)
