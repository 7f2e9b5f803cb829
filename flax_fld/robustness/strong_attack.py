"""A stronger L-inf evaluation attack than PGD-CE, in the spirit of APGD (Croce & Hein, ICML 2020).

PGD with a fixed step and one loss can report robustness that is not there: a model whose softmax saturates
has CE gradients of exactly zero (gradient masking), and a fixed step either overshoots or crawls. Here:

- losses: cross-entropy, DLR (a margin divided by the logit spread, so scaling the logits changes nothing)
  and targeted DLR towards each of the ``num_targets`` most likely wrong classes;
- each run starts at a random point of the ball, takes ``num_steps`` signed-gradient steps with momentum,
  starts with a step of 2 eps and halves an example's step at checkpoints where its loss stopped rising
  (restarting it from its best point so far);
- every run keeps, per example, the image of lowest margin ``z_y - max_{j != y} z_j`` it visited (a negative
  margin is a misclassification), and ``strong_attack`` keeps the lowest over all runs.

Like flax_fld/method/attack.py, attacks take ``logits_fn`` (``[B, H, W, C] -> [B, K]``, images in [0, 1]) that must
treat examples independently; everything is jittable (``lax.fori_loop``/``lax.scan``, fixed shapes). Logits
are read as float32 (``_float32_logits``) and the images stay float32: robust evaluation runs in float32
whatever dtype the model was trained in (``robust_eval.fld_step`` builds the float32 model).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_fld.method.attack import per_example, project

LogitsFn = Callable[[jax.Array], jax.Array]

CE, DLR, TARGETED_DLR = 0, 1, 2  # loss ids, traced inside the scan over runs
MOMENTUM = 0.75  # APGD's alpha: weight of the new step against the previous displacement
STALL_FRACTION = 0.75  # APGD's rho: halve the step when fewer steps than this fraction raised the loss
_TINY = 1e-12  # keeps the DLR denominator positive when the logits tie


def _float32_logits(logits_fn: LogitsFn) -> LogitsFn:
    """``logits_fn`` with float32 logits: margins, DLR and the loop's carried state stay float32."""
    return lambda images: (lambda logits: logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))(logits_fn(images))


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``z_y - max_{j != y} z_j`` per example: ``[B, K], [B] -> [B]``; negative means misclassified."""
    num_classes = logits.shape[-1]
    true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), -jnp.inf, logits)
    return true - jnp.max(others, axis=-1)


def _spread(logits: jax.Array, targeted: bool) -> jax.Array:
    """DLR's scale ``[B]``: top logit minus the 3rd (untargeted) or the mean of the 3rd and 4th (targeted).

    Needs K >= 3 (with 2 classes the spread is the margin itself, so the losses fall back to the raw margin);
    with 3 classes the targeted form uses the 3rd logit for the missing 4th.
    """
    top = jnp.sort(logits, axis=-1)[:, ::-1]
    num_classes = logits.shape[-1]
    third = top[:, min(2, num_classes - 1)]
    if targeted:
        third = 0.5 * (third + top[:, min(3, num_classes - 1)])
    return top[:, 0] - third + _TINY


def dlr_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Untargeted DLR, to maximise: ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3))``; ``[B, K], [B] -> [B]``."""
    if logits.shape[-1] < 3:  # no third logit to scale by
        return -margin(logits, labels)
    return -margin(logits, labels) / _spread(logits, targeted=False)


def targeted_dlr_loss(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
    """Targeted DLR, to maximise: ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``; ``[B, K], [B], [B] -> [B]``."""
    true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    target = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    if logits.shape[-1] < 3:
        return target - true
    return (target - true) / _spread(logits, targeted=True)


def run_loss(loss_id: jax.Array, logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
    """The per-example loss ``[B]`` named by ``loss_id`` (``CE``, ``DLR``, ``TARGETED_DLR``; may be traced)."""
    branches = (
        lambda z, y, t: optax.softmax_cross_entropy_with_integer_labels(z, y),
        lambda z, y, t: dlr_loss(z, y),
        targeted_dlr_loss,
    )
    return jax.lax.switch(loss_id, branches, logits, labels, targets)


def target_classes(logits: jax.Array, labels: jax.Array, rank: jax.Array) -> jax.Array:
    """The ``rank``-th most likely class other than the label (rank 1: the runner-up); ``[B, K], [B] -> [B]``."""
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    order = jnp.argsort(-others, axis=-1)
    return order[:, jnp.clip(rank, 1, logits.shape[-1] - 1) - 1].astype(labels.dtype)


def checkpoints(num_steps: int) -> tuple[int, ...]:
    """Step counts (1-based) after which the step size is reviewed, from APGD's schedule.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; checkpoint ``j`` is
    ``ceil(p_j * num_steps)``. Early checkpoints are far apart (explore with a large step), later ones close.
    """
    marks, previous, current = [], 0.0, 0.22
    while current <= 1.0:
        mark = int(np.ceil(round(current * num_steps, 6)))  # 0.57 * 100 is 57.000000000000007 in floats
        if 1 <= mark <= num_steps and (not marks or mark > marks[-1]):
            marks.append(mark)
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return tuple(marks)


def _schedule(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(is_check [N + 1] bool, window [N + 1] int)`` indexed by the steps taken so far: whether the step
    size is reviewed there and how many steps the review looks back over (static arrays)."""
    is_check, window, last = np.zeros(num_steps + 1, bool), np.ones(num_steps + 1, np.int32), 0
    for mark in checkpoints(num_steps):
        is_check[mark], window[mark], last = True, mark - last, mark
    return is_check, window


def _per_example(value, x: jax.Array) -> jax.Array:
    """A scalar or ``[B]`` radius as ``[B, 1, 1, 1]``: ``attack.per_example`` with a scalar broadcast too,
    since the loop carries one step size per example."""
    return jnp.broadcast_to(per_example("epsilon", value, x), (x.shape[0],) + (1,) * (x.ndim - 1))


def apgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    epsilon: float | jax.Array,
    *,
    loss_id: int | jax.Array,
    targets: jax.Array,
    num_steps: int,
    key: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """One APGD-style run; returns ``(x_adv [B, H, W, C], margin [B])``, the lowest-margin image visited.

    Args:
        logits_fn: ``[B, H, W, C] -> [B, K]`` in inference mode.
        x: clean images ``[B, H, W, C]`` in [0, 1].
        labels: int ``[B]``.
        epsilon: L-inf radius, scalar or ``[B]``.
        loss_id: ``CE``, ``DLR`` or ``TARGETED_DLR`` (python int or traced scalar).
        targets: int ``[B]`` target classes (read by ``TARGETED_DLR`` only).
        num_steps: python int >= 1.
        key: PRNG key of the random start.
    """
    logits_fn = _float32_logits(logits_fn)
    eps = _per_example(epsilon, x)
    is_check, window = (jnp.asarray(a) for a in _schedule(num_steps))

    def evaluate(x_adv):
        def objective(z):
            logits = logits_fn(z)
            per_example = run_loss(loss_id, logits, labels, targets)
            return jnp.sum(per_example), (per_example, logits)

        (_, (loss, logits)), grad = jax.value_and_grad(objective, has_aux=True)(x_adv)
        return loss, grad, margin(logits, labels)

    def pick(mask, new, old):  # per-example select, mask [B]
        return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    # Each iteration evaluates the current point, reviews the step size, then steps: the random start and
    # the num_steps iterates are evaluated by one copy of the model's gradient (half the compile time of
    # evaluating the start outside the loop), and the step after the last evaluation is discarded.
    x0 = project(x + eps * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0), x, eps)
    low = jnp.full(x.shape[:1], -jnp.inf, x.dtype)
    state = dict(
        x=x0, x_prev=x0, step=2.0 * eps, loss=low, rises=jnp.zeros(x.shape[:1], jnp.int32),
        x_max=x0, grad_max=jnp.zeros_like(x), loss_max=low, loss_max_at_check=low,
        reduced_at_check=jnp.ones(x.shape[:1], bool), x_adv=x0, margin=jnp.full(x.shape[:1], jnp.inf, x.dtype),
    )

    def body(i, s):
        loss, grad, m = evaluate(s["x"])
        found = m < s["margin"]
        rises = s["rises"] + ((loss > s["loss"]) & (i > 0)).astype(jnp.int32)
        improved = loss > s["loss_max"]
        x_max, grad_max = pick(improved, s["x"], s["x_max"]), pick(improved, grad, s["grad_max"])
        loss_max = jnp.where(improved, loss, s["loss_max"])
        # At a checkpoint an example whose loss rose too rarely, or whose best loss did not move since the
        # last checkpoint without a halving then, goes back to its best point with half the step.
        check = is_check[i]
        stalled = rises < STALL_FRACTION * window[i]
        no_gain = ~s["reduced_at_check"] & (loss_max <= s["loss_max_at_check"])
        reduce = check & (stalled | no_gain)
        here, grad = pick(reduce, x_max, s["x"]), pick(reduce, grad_max, grad)
        before = pick(reduce, x_max, s["x_prev"])  # momentum from an abandoned path would pull back onto it
        step = pick(reduce, 0.5 * s["step"], s["step"])
        alpha = jnp.where(i == 0, 1.0, MOMENTUM)
        z = project(here + step * jnp.sign(grad), x, eps)
        return dict(
            x=project(here + alpha * (z - here) + (1.0 - alpha) * (here - before), x, eps), x_prev=here,
            step=step, loss=jnp.where(reduce, loss_max, loss), rises=jnp.where(check, 0, rises),
            x_max=x_max, grad_max=grad_max, loss_max=loss_max,
            loss_max_at_check=jnp.where(check, loss_max, s["loss_max_at_check"]),
            reduced_at_check=jnp.where(check, reduce, s["reduced_at_check"]),
            x_adv=pick(found, s["x"], s["x_adv"]), margin=jnp.where(found, m, s["margin"]),
        )

    state = jax.lax.fori_loop(0, num_steps + 1, body, state)
    return state["x_adv"], state["margin"]


def run_plan(num_restarts: int, num_targets: int, num_classes: int) -> tuple[tuple[int, int], ...]:
    """The runs of ``strong_attack`` as ``(loss_id, index)``: ``num_restarts`` CE and DLR runs (index = restart),
    then one targeted DLR run per target rank ``1 .. min(num_targets, K - 1)`` (index = rank)."""
    plan = [(CE, r) for r in range(num_restarts)] + [(DLR, r) for r in range(num_restarts)]
    return tuple(plan + [(TARGETED_DLR, t) for t in range(1, min(num_targets, num_classes - 1) + 1)])


def strong_attack(
    logits_fn: LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    epsilon: float | jax.Array,
    *,
    num_steps: int,
    num_restarts: int,
    num_targets: int,
    key: jax.Array,
    x_init: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-example worst case over the runs of ``run_plan``; returns ``(x_adv [B, H, W, C], margin [B])``.

    The candidate an example starts with is its clean image (or ``x_init``, e.g. PGD's output, projected onto
    the ball), so the result is never better for the model than the clean image or ``x_init``. Run keys are
    ``fold_in(key, 1000 * loss_id + index)``: adding restarts or targets only adds runs, so it never raises
    an example's margin. A negative margin means ``x_adv`` is misclassified; callers take predictions from
    ``argmax(logits_fn(x_adv))`` so that every attack is scored the same way.

    Args:
        logits_fn: ``[B, H, W, C] -> [B, K]`` in inference mode, examples independent.
        x: clean images ``[B, H, W, C]`` in [0, 1].
        labels: int ``[B]``.
        epsilon: L-inf radius, scalar or ``[B]``.
        num_steps, num_restarts, num_targets: python ints (``num_steps >= 1``).
        key: PRNG key.
        x_init: optional ``[B, H, W, C]`` starting candidate.
    """
    for name, value, low in (("num_steps", num_steps, 1), ("num_restarts", num_restarts, 0),
                             ("num_targets", num_targets, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"strong_attack: {name} must be a python int >= {low}, got {value!r}")
    if jnp.shape(labels) != (x.shape[0],):
        raise ValueError(f"strong_attack: labels must have shape ({x.shape[0]},), got {jnp.shape(labels)}")
    logits_fn = _float32_logits(logits_fn)
    x = jax.lax.stop_gradient(x)
    start = x if x_init is None else project(jax.lax.stop_gradient(x_init), x, _per_example(epsilon, x))
    clean_logits = logits_fn(x)
    start_margin = margin(clean_logits if x_init is None else logits_fn(start), labels)
    plan = run_plan(num_restarts, num_targets, clean_logits.shape[-1])
    if not plan:
        return start, start_margin
    loss_ids = jnp.asarray([loss_id for loss_id, _ in plan], jnp.int32)
    indices = jnp.asarray([index for _, index in plan], jnp.int32)

    def one_run(carry, run):
        best_x, best_margin = carry
        loss_id, index = run
        targets = target_classes(clean_logits, labels, index)
        run_key = jax.random.fold_in(key, 1000 * loss_id + index)
        x_adv, m = apgd(logits_fn, x, labels, epsilon, loss_id=loss_id, targets=targets,
                        num_steps=num_steps, key=run_key)
        better = m < best_margin
        best_x = jnp.where(better.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, best_x)
        return (best_x, jnp.where(better, m, best_margin)), None

    (best_x, best_margin), _ = jax.lax.scan(one_run, (start, start_margin), (loss_ids, indices))
    return jax.lax.stop_gradient(best_x), best_margin
