"""The optimizer: a learning-rate schedule (linear warm-up, cosine decay) and AdamW or momentum SGD.

The paper gives no optimizer; configs/paper.py follows TRADES/CFA (SGD, momentum 0.9, weight decay 5e-4).
"""

import functools
from typing import Any

import jax
import ml_collections
import optax


def create_learning_rate_fn(
    optim_config: ml_collections.ConfigDict, num_epochs: int, steps_per_epoch: int
) -> optax.Schedule:
    """Linear warm-up for ``optim.warmup_epochs`` then cosine decay to 0 (or constant) at step granularity."""
    total_steps = max(int(num_epochs * steps_per_epoch), 1)
    warmup_steps = min(int(optim_config.warmup_epochs * steps_per_epoch), total_steps - 1)
    peak = float(optim_config.learning_rate)
    if optim_config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps, end_value=0.0)
    if optim_config.schedule == "constant":
        warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
        return optax.join_schedules([warmup, optax.constant_schedule(peak)], [warmup_steps])
    raise ValueError(f"config.optim.schedule={optim_config.schedule!r}; expected 'cosine' or 'constant'")


def decay_mask(params: Any) -> Any:
    # Kernels only: decaying biases and normalisation scales only hurts (standard practice since AdamW).
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(optim_config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
    """``adamw`` or ``sgd`` (momentum, L2 via decayed weights) with optional global-norm clipping.

    The learning rate is injected (``optax.inject_hyperparams``) so the step can report the value it used.
    """
    weight_decay = float(optim_config.weight_decay)
    if optim_config.name == "adamw":
        tx = optax.inject_hyperparams(optax.adamw)(
            learning_rate=learning_rate_fn, weight_decay=weight_decay, mask=decay_mask
        )
    elif optim_config.name == "sgd":
        def sgd_with_decay(learning_rate):
            return optax.chain(
                optax.add_decayed_weights(weight_decay, mask=decay_mask),
                optax.sgd(learning_rate, momentum=float(optim_config.momentum)),
            )

        tx = optax.inject_hyperparams(sgd_with_decay)(learning_rate=learning_rate_fn)
    else:
        raise ValueError(f"config.optim.name={optim_config.name!r}; expected 'adamw' or 'sgd'")
    if optim_config.grad_clip_norm and optim_config.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(optim_config.grad_clip_norm)), tx)
    return tx


@functools.lru_cache(maxsize=32)
def shared_optimizer(
    optim_config: ml_collections.FrozenConfigDict, num_epochs: int, steps_per_epoch: int
) -> optax.GradientTransformation:
    # The optimizer is a static field of the state, hence part of its tree structure: one object per setting
    # lets the jit/pmap caches hit when a process builds several states (resume, tests, ablations).
    return create_optimizer(optim_config, create_learning_rate_fn(optim_config, num_epochs, steps_per_epoch))
