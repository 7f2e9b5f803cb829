"""Where the train step's compile time goes: its four parts jitted alone, and XLA's own account of a compile.

The FLD + TRADES step (``train.train_step``) is one XLA program; its compile time grows with the number of
kernels XLA emits for it (K does not change it: the attack is a ``fori_loop``). ``step_parts`` splits the
step into the four pieces it is made of, each a program of its own with abstract (shape-only) inputs on one
device, in the step's compute dtype:

- ``decouplers``: IC1/IC2's train-mode forward and backward (the ``jax.vjp`` of ``objective.loss_and_gradients``);
- ``attack``: the inner maximisation (``objective.adversarial_examples``, a K-step ``fori_loop``), on given features;
- ``loss``: Eq. 4's value and gradient on given features and x' (the classifier's clean and adversarial passes);
- ``update``: the optimizer step, the weight average and the gradient norm, on given gradients.

``compile_trace_summary`` compiles a lowered program under ``jax.profiler.trace`` and totals the trace's events
by name: on a CPU ``FusionCompiler::Compile`` counts the kernels XLA emitted and ``JitCompiler::Compile`` is
LLVM's code generation; on a GPU other names (ptxas, autotuning) appear, which is what the summary is for.
Durations are summed over XLA's compile threads, so they can exceed the wall time. Run it with the persistent
compilation cache off (``compile_probe.py`` does): JAX decides once per process whether to use the cache.
"""

import collections
import glob
import gzip
import json
import os
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flax_fld.method import objective
from flax_fld.models import fld
from flax_fld.training import train, weight_averaging

PART_NAMES = ("decouplers", "attack", "loss", "update")


def step_parts(config: ml_collections.ConfigDict, model: fld.FLDModel, image_shape: tuple[int, int, int],
               batch: int) -> dict[str, tuple[Callable, tuple]]:
    """``{part: (function, abstract arguments)}`` for the four parts of the step; jit and lower each.

    Args:
        config: the run's config (``adv``, ``loss``, ``optim``, ``train``). model: the FLD model (decouplers on).
        image_shape: ``(H, W, C)``. batch: examples per device.
    """
    if not model.use_decouplers or not config.adv.enabled:
        raise ValueError(f"step_parts: model.use_decouplers={model.use_decouplers}, adv.enabled={config.adv.enabled}; "
                         "the parts are those of the FLD + TRADES step (both True)")
    # One device's shapes, without the replicated state's mesh sharding: the parts are what pmap compiles per device.
    state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, weak_type=leaf.weak_type),
                         train.abstract_train_state(config, model, tuple(image_shape), steps_per_epoch=10))
    model = fld.with_compute_dtype(model, str(config.train.get("compute_dtype", "float32")))  # as train_step does
    images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    per_class = jax.ShapeDtypeStruct((model.num_classes,), jnp.float32)
    key = state.rng  # raw key data, wrapped inside as the step does

    params, stats = state.params, state.batch_stats

    def decouplers(params, stats, images):
        def decouple(params):
            return fld.decouple(model, {"params": params, "batch_stats": stats}, images, train=True)

        decoupled, pullback, _ = jax.vjp(decouple, params, has_aux=True)
        return pullback(decoupled)[0]

    decoupled = jax.eval_shape(
        lambda params, stats, x: fld.decouple(model, {"params": params, "batch_stats": stats}, x, train=True)[0],
        params, stats, images)

    def attack(params, stats, images, labels, decoupled, class_epsilon, key):
        return objective.adversarial_examples(model, {"params": params, "batch_stats": stats}, images, labels,
                                              decoupled, class_epsilon, jax.random.wrap_key_data(key), config.adv)

    settings = objective.LossSettings.from_config(model, config)

    def loss(params, stats, decoupled, images, labels, x_adv, class_beta, key):
        keys = tuple(jax.random.split(jax.random.wrap_key_data(key)))
        batch = objective.LossBatch(images, labels, x_adv, class_beta, keys)
        return jax.grad(objective.fld_loss, argnums=(0, 1), has_aux=True)(params, decoupled, stats, batch, settings)

    def update(state, grads):
        new = state.apply_gradients(grads, batch_stats=state.batch_stats)
        if new.averaged_params is not None:
            averaged, count = weight_averaging.maybe_update(new.averaged_params, new.params, new.average_count,
                                                            new.average_enabled, float(config.train.ema_decay))
            new = new.replace(averaged_params=averaged, average_count=count)
        return new, optax.tree.norm(grads)

    x_adv = images
    if config.adv.get("attack_space", "image") == "classifier_input":
        x_adv = jax.eval_shape(lambda x, d: fld.classifier_input(model, x, d), images, decoupled)
    return {
        "decouplers": (decouplers, (params, stats, images)),
        "attack": (attack, (params, stats, images, labels, decoupled, per_class, key)),
        "loss": (loss, (params, stats, decoupled, images, labels, x_adv, per_class, key)),
        "update": (update, (state, params)),
    }


def compile_trace_summary(lowered, top: int = 12) -> tuple[float, list[tuple[str, float, int]]]:
    """Compiles ``lowered`` under the profiler; returns (wall s, [(event, summed s, count)] largest first).

    Raises RuntimeError when the trace holds no backend compile (the persistent cache served the program).
    """
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            start = time.perf_counter()
            lowered.compile()
            wall = time.perf_counter() - start
        events = trace_totals(trace_dir, top=None)
    if not any(name == "backend_compile_and_load" for name, _, _ in events):
        raise RuntimeError("compile_trace_summary: nothing was compiled (a persistent compilation cache hit?); "
                           "run with the cache off, e.g. FLAX_FLD_COMPILATION_CACHE=0")
    return wall, events[:top]


def trace_totals(trace_dir: str, top: int | None) -> list[tuple[str, float, int]]:
    """The ``top`` (None: all) complete events of the Perfetto trace under ``trace_dir``, by summed duration."""
    paths = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(paths[0]) as file:
        trace = json.load(file)
    seconds, counts = collections.Counter(), collections.Counter()
    for event in trace["traceEvents"] if isinstance(trace, dict) else trace:
        if event.get("ph") == "X" and not event["name"].startswith("$"):  # "$file:line" are Python frames
            seconds[event["name"]] += event.get("dur", 0) / 1e6
            counts[event["name"]] += 1
    return [(name, total, counts[name]) for name, total in seconds.most_common(top)]
