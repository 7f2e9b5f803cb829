"""The JAX side of the benchmark: the exact training step and evaluation forward pass that training runs.

Each builder returns a ``Contender``: a call that blocks until its result is ready, the images it processes
per call, and XLA's FLOP count for it (``cost_analysis`` of the compiled program; None where XLA gives none).
"""

import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from flax_fld.models import fld
from flax_fld.training import train


class Contender(NamedTuple):
    call: Callable[[], Any]
    images_per_call: int
    flops_per_call: Optional[float]
    compile_s: Optional[float] = None  # trace + lower + compile, when measured apart from the first call


def random_batch(config: ml_collections.ConfigDict, leading: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Images in [0, 1] and labels shaped ``leading + (H, W, C)`` / ``leading``."""
    rng = np.random.default_rng(seed)
    size, channels = config.data.image_size, config.data.channels
    return {"image": rng.random((*leading, size, size, channels), dtype=np.float32),
            "label": rng.integers(0, len(config.data.class_names), leading, dtype=np.int32)}


def initial_state(config: ml_collections.ConfigDict) -> tuple[fld.FLDModel, Any]:
    """(model, train state) for ``config``, placed as the pmapped step returns it (so call 2 does not recompile)."""
    size, channels = config.data.image_size, config.data.channels
    model = fld.create_fld_model(config.model, len(config.data.class_names), channels)
    state = train.create_train_state(config, model, (size, size, channels), jax.random.key(config.seed),
                                     steps_per_epoch=100)
    return model, train.replicate(jax.tree.map(jax.numpy.asarray, state))


def _flops(compiled) -> Optional[float]:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def train_step(config: ml_collections.ConfigDict, batch: Optional[dict] = None, keep_state: bool = False):
    """``train.parallel_train_step`` on all local devices with a numpy batch (as the training loop feeds it).

    The step donates its state, so the call keeps the newest state and feeds it back. ``batch``
    [devices, B, ...] defaults to random data; ``keep_state`` also returns the holder of the newest state.
    """
    model, state = initial_state(config)
    devices = jax.local_device_count()
    if batch is None:
        batch = random_batch(config, (devices, config.train.per_device_batch_size))
    step = train.parallel_train_step(model, ml_collections.FrozenConfigDict(config))
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def call():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    contender = Contender(call, devices * config.train.per_device_batch_size, _flops(compiled), compile_s)
    return (contender, holder) if keep_state else contender


def eval_forward(config: ml_collections.ConfigDict, batch_size: int) -> Contender:
    """``fld.forward`` in eval mode, jitted on one device."""
    model, state = initial_state(config)
    variables = jax.device_put({"params": state.params, "batch_stats": state.batch_stats}, jax.local_devices()[0])
    images = jax.device_put(random_batch(config, (batch_size,))["image"])
    forward = jax.jit(lambda v, x: fld.forward(model, v, x, train=False)[0])
    start = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    return Contender(lambda: forward(variables, images).block_until_ready(), batch_size, _flops(compiled), compile_s)


def compile_seconds(config: ml_collections.ConfigDict) -> float:
    """Seconds to trace, lower and compile the pmapped training step for ``config`` (no compilation cache)."""
    model, state = initial_state(config)
    batch = random_batch(config, (jax.local_device_count(), config.train.per_device_batch_size))
    step = train.parallel_train_step(model, ml_collections.FrozenConfigDict(config))
    start = time.perf_counter()
    step.lower(state, batch).compile()
    return time.perf_counter() - start
