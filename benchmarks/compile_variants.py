"""One program compiled with one set of compiler options: compile seconds, XLA's memory analysis, run time.

  python -m benchmarks.compile_variants --program=decouplers --options=autotune_0 --out=OUT/options_autotune_0.json
  python -m benchmarks.compile_variants --program=step --options=fast_compile --out=OUT/memory.json

Why a process per variant: XLA keeps autotuning results and JAX keeps executables for the life of a process,
so a second variant in the same process would be measured against a warm compiler. ``--options`` is a spec
of ``flax_fld/runtime/gpu_compile_options.py`` (presets such as ``autotune_0``, or ``xla_NAME=VALUE``); an
option the installed XLA does not know ends this variant with one line (and ``"error"`` in its JSON), which
the caller's other variants do not notice.

The program: the pmapped training step at the config's per-device batch (``step``), or one of its parts
(``benchmarks/step_parts.py``: ``decouplers``, ``attack``, ``loss``, ``update``). Its inputs are zeros of the
right shapes (random images for the step), not an initialised model: the model's initialisation is a
compile of its own (minutes at 224 px on a GPU), and a kernel's run time does not depend on the values.
The JSON is written when the compile ends (``compile_s``, ``memory``) and again after ``--warmup`` untimed
and ``--calls`` timed calls (``median_s``, ``first_call_s``), so a time limit that ends the calls still
leaves the compile's figures. The persistent compilation cache is off: this measures compiles.
"""

import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/ is not installed
from flax_fld.runs import cli  # noqa: E402  pylint: disable=wrong-import-position
from flax_fld.runtime import gpu_compile_options  # noqa: E402  pylint: disable=wrong-import-position
from flax_fld.runtime.atomic_files import write_json_atomically  # noqa: E402  pylint: disable=wrong-import-position

PROGRAMS = ("step", "decouplers", "attack", "loss", "update")

# Flags are defined only when this file runs as a program: a test that imports it beside compile_probe
# (which defines --config too) would otherwise meet absl's DuplicateFlagError.
_FLAGS: dict = {}


def _define_flags() -> None:
    _FLAGS["config"] = config_flags.DEFINE_config_file("config", None,
                                                       "Training config (default configs/paper.py).")
    _FLAGS["program"] = flags.DEFINE_enum("program", "step", PROGRAMS,
                                          "What to compile: the pmapped step or one part.")
    _FLAGS["options"] = flags.DEFINE_string("options", "", "Compiler options: a gpu_compile_options spec "
                                            "('' = XLA's defaults).")
    _FLAGS["name"] = flags.DEFINE_string("name", "", "The variant's label in the JSON and the log "
                                         "(default: --options).")
    _FLAGS["image_size"] = flags.DEFINE_integer("image_size", None, "Overrides data.image_size.")
    _FLAGS["batch"] = flags.DEFINE_integer("per_device_batch_size", None, "Overrides train.per_device_batch_size.")
    _FLAGS["num_steps"] = flags.DEFINE_integer("num_steps", None,
                                               "Overrides adv.num_steps (a fori_loop: no compile change).")
    _FLAGS["warmup"] = flags.DEFINE_integer("warmup", 3, "Untimed calls after the compile.")
    _FLAGS["calls"] = flags.DEFINE_integer("calls", 5, "Timed calls; their median is reported.")
    _FLAGS["out"] = flags.DEFINE_string("out", "", "JSON result file (written after the compile and after the "
                                        "calls).")


def memory_summary(compiled) -> dict | None:
    """XLA's memory analysis in GiB (arguments + outputs - aliased + temporaries = the peak estimate)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # pylint: disable=broad-except  # not every backend or version provides it
        return None
    if analysis is None:
        return None
    sizes = {name: getattr(analysis, f"{name}_size_in_bytes", 0) for name in ("argument", "output", "alias", "temp")}
    sizes["peak_estimate"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
    return {f"{name}_gib": round(value / 2**30, 4) for name, value in sizes.items()}


def measure(lowered, make_arguments: Callable[[], tuple], options: Mapping[str, object], *, warmup: int = 3,
            calls: int = 5, advance: Callable[[tuple, object], tuple] | None = None,
            report: Callable[[dict], None] = lambda result: None, result: dict | None = None) -> dict:
    """Compiles ``lowered`` with ``options``, then calls it ``warmup`` + ``calls`` times; returns the figures.

    ``make_arguments()`` gives the first call's arguments; ``advance(arguments, output)`` the next call's (the
    step donates its state, so the state it returns feeds the next call). ``report`` receives the result
    after the compile and again at the end. The figures go into ``result`` as they come (so a caller keeps
    the compile's when a call fails). Raises whatever the compile or a call raises.
    """
    import jax  # pylint: disable=import-outside-toplevel

    result = {} if result is None else result
    result["options"] = dict(options)
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=dict(options)) if options else lowered.compile()
    result["compile_s"] = round(time.perf_counter() - start, 3)
    result["memory"] = memory_summary(compiled)
    result["status"] = "compiled"
    report(result)
    arguments, times = make_arguments(), []
    for index in range(warmup + calls):
        start = time.perf_counter()
        output = jax.block_until_ready(compiled(*arguments))
        elapsed = time.perf_counter() - start
        if index == 0:
            result["first_call_s"] = round(elapsed, 4)
        if index >= warmup:
            times.append(elapsed)
        if advance is not None:
            arguments = advance(arguments, output)
    result.update(status="done", warmup=warmup, calls=calls, times_s=[round(t, 5) for t in times],
                  median_s=round(statistics.median(times), 5) if times else None)
    report(result)
    return result


def measure_variants(lowered, make_arguments: Callable[[], tuple], variants: Mapping[str, Mapping[str, object]],
                     log: Callable[[str], None] = print, **kwargs) -> dict[str, dict]:
    """``measure`` for each ``{name: options}``; a variant that fails (an option this XLA does not know, a
    call out of memory) gets ``{"error": one line}`` and one log line, and the next variant still runs."""
    results = {}
    for name, options in variants.items():
        results[name] = {}
        try:
            measure(lowered, make_arguments, options, result=results[name], **kwargs)
        except Exception as error:  # pylint: disable=broad-except  # one variant's failure is its own result
            results[name].update(status="error", error=gpu_compile_options.one_line(error))
            log(f"variant {name}: {results[name]['error']}")
            continue
        log(f"variant {name}: compile {results[name]['compile_s']:.1f} s, median call "
            f"{results[name]['median_s']}")
    return results


def zeros_like(tree):
    """Device arrays of zeros shaped like the ``jax.ShapeDtypeStruct`` leaves of ``tree``, on their
    shardings (or the default device): a copy from the host each, no program compiled."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    def leaf(spec):
        array = np.zeros(spec.shape, spec.dtype)
        sharding = getattr(spec, "sharding", None)
        return jax.device_put(array, sharding) if sharding is not None else jax.device_put(array)

    return jax.tree.map(leaf, tree)


def build(config, program: str) -> tuple[object, Callable[[], tuple], Callable | None]:
    """(lowered program, its first arguments' maker, the advance function) for ``program`` of ``config``."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel

    from benchmarks import jax_steps, step_parts  # pylint: disable=import-outside-toplevel
    from flax_fld.models import fld  # pylint: disable=import-outside-toplevel
    from flax_fld.training import train  # pylint: disable=import-outside-toplevel

    channels = int(config.data.channels)
    image_shape = (int(config.data.image_size), int(config.data.image_size), channels)
    model = fld.create_fld_model(config.model, len(config.data.class_names), channels)
    batch = int(config.train.per_device_batch_size)
    if program == "step":
        devices = jax.local_device_count()
        state = train.abstract_train_state(config, model, image_shape, steps_per_epoch=10)
        data = jax_steps.random_batch(config, (devices, batch))
        step = train.parallel_train_step(model, ml_collections.FrozenConfigDict(config))
        lowered = step.lower(state, {"image": jax.ShapeDtypeStruct(data["image"].shape, jnp.float32),
                                     "label": jax.ShapeDtypeStruct(data["label"].shape, jnp.int32)})
        return lowered, lambda: (zeros_like(state), data), lambda arguments, output: (output[0], arguments[1])
    function, arguments = step_parts.step_parts(config, model, image_shape, batch)[program]
    return jax.jit(function).lower(*arguments), lambda: tuple(zeros_like(arguments)), None


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import jax  # pylint: disable=import-outside-toplevel

    jax.config.update("jax_enable_compilation_cache", False)  # JAX_COMPILATION_CACHE_DIR would serve a variant
    config = _FLAGS["config"].value
    if _FLAGS["image_size"].value:
        config.data.image_size = _FLAGS["image_size"].value
    if _FLAGS["batch"].value:
        config.train.per_device_batch_size = _FLAGS["batch"].value
    if _FLAGS["num_steps"].value:
        config.adv.num_steps = _FLAGS["num_steps"].value
    name = _FLAGS["name"].value or _FLAGS["options"].value or "default"
    header = {"variant": name, "program": _FLAGS['program'].value, "device": f"{jax.devices()[0].device_kind} x "
              f"{jax.local_device_count()} ({jax.default_backend()})", "jax": jax.__version__,
              "image_size": int(config.data.image_size), "per_device_batch": int(config.train.per_device_batch_size),
              "icfdnet": str(config.model.icfdnet_preset), "classifier": str(config.model.classifier),
              "K": int(config.adv.num_steps), "load_average_start": os.getloadavg()[0]}

    def report(result: dict) -> None:
        if _FLAGS["out"].value:
            write_json_atomically(_FLAGS["out"].value, {**header, **result, "load_average": os.getloadavg()[0]})

    def log(line: str) -> None:
        print(f"compile_variants {_FLAGS['program'].value} {line}", file=sys.stderr, flush=True)

    try:
        options = gpu_compile_options.parse(_FLAGS["options"].value)
    except ValueError as error:
        report({"status": "error", "error": str(error)})
        raise SystemExit(f"compile_variants: {error}") from None
    start = time.perf_counter()
    lowered, make_arguments, advance = build(config, _FLAGS["program"].value)
    header["lower_s"] = round(time.perf_counter() - start, 3)
    log(f"lowered in {header['lower_s']:.1f} s; compiling with {options or 'XLA defaults'}")
    result = measure_variants(lowered, make_arguments, {name: options}, log=log, warmup=_FLAGS["warmup"].value,
                              calls=_FLAGS["calls"].value, advance=advance, report=report)[name]
    if "error" in result:
        report(result)
        sys.exit(3)
    print(f"{name}: {_FLAGS['program'].value} compiled in {result['compile_s']:.1f} s, median of "
          f"{result['calls']} calls {result['median_s']} s, "
          f"peak estimate {(result['memory'] or {}).get('peak_estimate_gib')} GiB")


if __name__ == "__main__":
    _define_flags()
    cli.run_main(main, default_config="paper", compilation_cache=False)
