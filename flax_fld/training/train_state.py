"""The training state of Algorithm 1: weights, optimizer, per-class epsilon/beta and their counters.

A flax struct dataclass, hence a pytree that ``jit``/``pmap`` and orbax handle; the optax transformation is a
static (non-pytree) field so ``apply_gradients`` needs nothing else. K = number of classes.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a training run needs to resume exactly.

    Attributes:
        step: int32 scalar, optimizer steps taken.
        epoch: int32 scalar, completed epochs (drives the calibration warm-up).
        params: ``{'ic1', 'ic2', 'classifier'}`` parameter trees (only ``classifier`` in baseline mode).
        batch_stats: BatchNorm statistics, same keys as ``params``.
        opt_state: optax state of ``tx``.
        class_epsilon: float32 ``[K]``, the attack radius of each class for the current epoch (Eq. 1).
        class_beta: float32 ``[K]``, the TRADES weight of each class in [0, 1) (Eq. 2).
        class_acc: float32 ``[K]``, ``Acc_i`` of the previous epoch (adversarial training accuracy, a
            fraction); kept so a class absent from an epoch keeps its last value.
        adv_correct: int32 ``[K]``, adversarial training examples classified correctly this epoch, per class.
        adv_seen: int32 ``[K]``, adversarial training examples seen this epoch, per class.
        rng: uint32 ``[2]`` raw PRNG key data (raw so checkpoints are plain arrays).
        averaged_params: EMA/FAWA average of ``params`` or None when averaging is off.
        average_count: int32 scalar, updates folded into ``averaged_params``.
        average_enabled: bool scalar, whether this epoch's steps are averaged (FAWA's gate).
        tx: the optax transformation (static).
    """

    step: jax.Array
    epoch: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    class_epsilon: jax.Array
    class_beta: jax.Array
    class_acc: jax.Array
    adv_correct: jax.Array
    adv_seen: jax.Array
    rng: jax.Array
    averaged_params: Any
    average_count: jax.Array
    average_enabled: jax.Array
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        *,
        params: Any,
        batch_stats: Any,
        tx: optax.GradientTransformation,
        class_epsilon: jax.Array,
        class_beta: jax.Array,
        class_acc: jax.Array,
        rng: jax.Array,
        average: bool,
        average_enabled: bool,
    ) -> "TrainState":
        """A fresh state at step 0 with zeroed counters; ``rng`` may be a typed key or raw key data."""
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        num_classes = class_epsilon.shape[0]
        return cls(
            step=jnp.zeros((), jnp.int32),
            epoch=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            class_epsilon=jnp.asarray(class_epsilon, jnp.float32),
            class_beta=jnp.asarray(class_beta, jnp.float32),
            class_acc=jnp.asarray(class_acc, jnp.float32),
            adv_correct=jnp.zeros((num_classes,), jnp.int32),
            adv_seen=jnp.zeros((num_classes,), jnp.int32),
            rng=jnp.asarray(rng, jnp.uint32),
            # A copy, so donating the state never aliases the two trees.
            averaged_params=jax.tree.map(jnp.array, params) if average else None,
            average_count=jnp.zeros((), jnp.int32),
            average_enabled=jnp.asarray(average_enabled, jnp.bool_),
            tx=tx,
        )

    def apply_gradients(self, grads: Any, **changes: Any) -> "TrainState":
        """One optax update of ``params``; ``step`` + 1; other fields replaced by ``changes``."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)

    def inference_variables(self) -> dict:
        """``{'params', 'batch_stats'}`` for ``fld.forward``: the averaged weights once any were averaged."""
        params = self.params
        if self.averaged_params is not None and int(self.average_count) > 0:
            params = self.averaged_params
        return {"params": params, "batch_stats": self.batch_stats}


def current_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The learning rate of the last update, read from the ``inject_hyperparams`` state inside ``opt_state``."""
    states = jax.tree.leaves(opt_state, is_leaf=lambda node: hasattr(node, "hyperparams"))
    for node in states:
        if hasattr(node, "hyperparams") and "learning_rate" in node.hyperparams:
            return jnp.asarray(node.hyperparams["learning_rate"], jnp.float32)
    raise ValueError("opt_state has no injected 'learning_rate' (build the optimizer with optimizer.create_optimizer)")
