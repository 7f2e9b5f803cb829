"""Robust evaluation that does not fool itself: per-class accuracy under several attacks, their per-example
worst case, and sanity checks that flag an evaluation too weak to trust.

For every example: clean; random-sign noise of the same radius (a floor any attack must beat); PGD-CE
(``attack.pgd_ce``, PGD-20 by default); the APGD-style ``strong_attack``; and ``worst``, which is correct only
when the example survives PGD *and* the strong attack. Every attack is scored by ``argmax(logits_fn(x_adv))``.

Two entry points: ``robust_accuracy_per_class`` (any ``logits_fn`` on given images, e.g. to cross-check against
another library's APGD) and ``evaluate_strong`` (a trained FLD model on a split; the ``strong_robust`` field of
eval.json). ``sanity_checks`` takes the per-class numbers of either.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from flax_fld.data import input_pipeline
from flax_fld.evaluation import metrics
from flax_fld.method import attack
from flax_fld.models import fld
from flax_fld.robustness import strong_attack

ATTACKS = ("clean", "noise", "pgd", "strong", "worst")


@dataclasses.dataclass(frozen=True)
class StrongSettings:
    """The attack budget (python ints: static under jit); the radii are arguments of the calls.

    Cost per example, in forward-backward passes: ``pgd_steps + (2 * restarts + min(targets, K - 1)) *
    (steps + 1)``.
    """

    pgd_steps: int = 20  # PGD-CE steps of the ``pgd`` column
    steps: int = 100  # steps of each strong-attack run
    restarts: int = 1  # random restarts of each untargeted loss (CE and DLR)
    targets: int = 3  # targeted-DLR runs, one per most likely wrong class (at most K - 1)


def settings_from_config(adv: ml_collections.ConfigDict) -> StrongSettings:
    """``StrongSettings`` from ``config.adv``; a key missing (a config written before it) gets the dataclass
    default above (APGD's 100 steps: an old run is evaluated slower rather than weaker)."""
    default = StrongSettings()
    return StrongSettings(
        pgd_steps=int(adv.get("strong_pgd_steps", default.pgd_steps)),
        steps=int(adv.get("strong_steps", default.steps)),
        restarts=int(adv.get("strong_restarts", default.restarts)),
        targets=int(adv.get("strong_targets", default.targets)),
    )


def random_sign_noise(x: jax.Array, epsilon: float | jax.Array, key: jax.Array) -> jax.Array:
    """``x + epsilon * s`` with independent random signs ``s``, clipped to [0, 1]: ``[B, H, W, C]``.

    A corner of the ball, the largest perturbation that carries no information about the model.
    """
    signs = jnp.where(jax.random.bernoulli(key, 0.5, x.shape), 1.0, -1.0).astype(x.dtype)
    return attack.project(x + epsilon * signs, x, epsilon)


def attack_predictions(
    logits_fn: strong_attack.LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    epsilon: float | jax.Array,
    pgd_step_size: float | jax.Array,
    *,
    settings: StrongSettings,
) -> dict[str, jax.Array]:
    """Predicted classes ``{attack: int [B]}`` for each of ``ATTACKS`` (jittable; radii may be traced).

    ``worst`` is PGD's prediction where PGD fooled the model, else the strong attack's, so it is correct
    exactly when both attacks failed.
    """
    noise_key, pgd_key, strong_key = jax.random.split(key, 3)

    def predict(images):
        return jnp.argmax(logits_fn(images), axis=-1).astype(labels.dtype)

    x_pgd = attack.pgd_ce(logits_fn, x, labels, epsilon, step_size=pgd_step_size, num_steps=settings.pgd_steps,
                          key=pgd_key)
    x_strong, _ = strong_attack.strong_attack(
        logits_fn, x, labels, epsilon, num_steps=settings.steps, num_restarts=settings.restarts,
        num_targets=settings.targets, key=strong_key,
    )
    preds = {"clean": predict(x), "noise": predict(random_sign_noise(x, epsilon, noise_key)),
             "pgd": predict(x_pgd), "strong": predict(x_strong)}
    preds["worst"] = jnp.where(preds["pgd"] != labels, preds["pgd"], preds["strong"])
    return preds


def _confusions(preds: dict, labels: jax.Array, num_classes: int, mask: jax.Array | None) -> jax.Array:
    """int32 ``[len(ATTACKS), K, K]``, one confusion matrix per attack in ``ATTACKS`` order."""
    return jnp.stack([metrics.confusion_matrix(labels, preds[name], num_classes, mask) for name in ATTACKS])


def per_class_accuracy(confusions) -> dict[str, list[float]]:
    """``{attack: [K] percent}`` from ``[len(ATTACKS), K, K]`` confusion matrices (NaN for an empty class)."""
    confusions = np.asarray(confusions, np.float64)
    support = confusions.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = 100.0 * np.diagonal(confusions, axis1=-2, axis2=-1) / support
    return {name: [float(p) for p in row] for name, row in zip(ATTACKS, percent)}


def robust_accuracy_per_class(
    logits_fn: strong_attack.LogitsFn,
    images,
    labels,
    epsilon: float,
    *,
    num_classes: int,
    settings: StrongSettings = StrongSettings(),
    pgd_step_size: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Per-class accuracy (percent) under every attack of ``ATTACKS`` on the given examples: one call.

    Args:
        logits_fn: ``[B, H, W, C] -> [B, K]``, inference mode, examples independent.
        images: ``[N, H, W, C]`` in [0, 1]; labels: int ``[N]``.
        epsilon: L-inf radius; ``pgd_step_size`` defaults to ``epsilon / 4`` (2/255 at 8/255).
        num_classes: ``K``; settings: the attack budget.
        batch_size: examples per compiled call (the last batch is padded and masked).
        seed: PRNG seed of the random starts (batch ``i`` uses ``fold_in(key(seed), i)``).

    Returns:
        ``{attack: [K] percent}``; NaN for a class without examples.
    """
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    step = epsilon / 4 if pgd_step_size is None else pgd_step_size
    batch_confusions = _jitted_confusions(logits_fn, num_classes, settings)
    total = np.zeros((len(ATTACKS), num_classes, num_classes), np.int64)
    for index, start in enumerate(range(0, len(labels), batch_size)):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        pad = batch_size - len(y)  # one compiled shape for every batch
        mask = np.arange(batch_size) < len(y)
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        y = np.concatenate([y, np.zeros((pad,), y.dtype)])
        key = jax.random.fold_in(jax.random.key(seed), index)
        total += np.asarray(batch_confusions(x, y, mask, key, jnp.float32(epsilon), jnp.float32(step)))
    return per_class_accuracy(total)


@functools.lru_cache(maxsize=8)
def _jitted_confusions(logits_fn: strong_attack.LogitsFn, num_classes: int, settings: StrongSettings) -> Callable:
    # Cached per logits_fn with traced radii: evaluating one model at several radii compiles once.
    def batch_confusions(x, y, mask, key, epsilon, pgd_step_size):
        preds = attack_predictions(logits_fn, x, y, key, epsilon, pgd_step_size, settings=settings)
        return _confusions(preds, y, num_classes, mask)

    return jax.jit(batch_confusions)


def sanity_checks(
    per_class: dict[str, list[float]],
    class_names: list[str],
    *,
    large_radius_accuracy: float | None = None,
    max_large_radius_accuracy: float = 10.0,
) -> list[dict]:
    """Checks a trustworthy robust evaluation passes: ``[{'name', 'passed', 'detail'}]``.

    Per class: ``clean >= noise >= pgd >= strong >= worst``. Noise above clean or strong above PGD is not
    impossible, but a gap means the attack is weak here (or gradients are masked); worst above strong is a bug.
    ``large_radius_accuracy`` (percent, the strong attack at a radius such as 64/255) must be at most
    ``max_large_radius_accuracy``: at such a radius an attack that works breaks nearly every image.
    """
    checks = []
    for index, name in enumerate(class_names):
        values = [per_class[attack_name][index] for attack_name in ATTACKS]
        if any(np.isnan(values)):
            checks.append({"name": f"order {name}", "passed": True, "detail": "skipped: no examples"})
            continue
        broken = [f"{ATTACKS[i]} {values[i]:.2f} < {ATTACKS[i + 1]} {values[i + 1]:.2f}"
                  for i in range(len(values) - 1) if values[i] < values[i + 1]]
        chain = " >= ".join(f"{n} {v:.2f}" for n, v in zip(ATTACKS, values))
        checks.append({"name": f"order {name}", "passed": not broken,
                       "detail": chain if not broken else "violated: " + "; ".join(broken)})
    if large_radius_accuracy is not None:
        passed = bool(large_radius_accuracy <= max_large_radius_accuracy)
        checks.append({"name": "large radius", "passed": passed,
                       "detail": f"strong accuracy {large_radius_accuracy:.2f}% "
                                 f"{'<=' if passed else '>'} {max_large_radius_accuracy:g}%"})
    return checks


def warnings(checks: list[dict]) -> list[str]:
    """One ``WARNING:`` line per failed check."""
    return [f"WARNING: sanity check '{c['name']}' failed: {c['detail']}" for c in checks if not c["passed"]]


def fld_step(variables: dict, batch: dict, key: jax.Array, epsilon: jax.Array, pgd_step_size: jax.Array, *,
             model: fld.FLDModel, settings: StrongSettings, end_to_end: bool) -> jax.Array:
    """``[len(ATTACKS), K, K]`` confusions of one per-device batch of the FLD model, summed over the ``batch``
    axis (call under pmap). ``end_to_end`` is the threat model of ``fld.attack_logits_fn``. The model runs in
    float32 whatever its compute dtype (``fld.float32_model``)."""
    model = fld.float32_model(model)
    images, labels, mask = batch["image"], batch["label"], batch["mask"]
    decoupled, _ = fld.decouple(model, variables, images, train=False)
    logits_fn = fld.attack_logits_fn(model, variables, decoupled, end_to_end=end_to_end)
    key = jax.random.fold_in(key, lax.axis_index("batch"))
    preds = attack_predictions(logits_fn, images, labels, key, epsilon, pgd_step_size, settings=settings)
    return lax.psum(_confusions(preds, labels, model.num_classes, mask), "batch")


@functools.lru_cache(maxsize=4)
def _parallel_fld_step(model: fld.FLDModel, settings: StrongSettings, end_to_end: bool) -> Callable:
    # Radii are traced, so the large-radius check reuses the executable of the main evaluation.
    step = functools.partial(fld_step, model=model, settings=settings, end_to_end=end_to_end)
    return jax.pmap(step, axis_name="batch", in_axes=(None, 0, None, None, None), out_axes=None)


def evaluate_strong(model: fld.FLDModel, variables: dict, config: ml_collections.ConfigDict,
                    data: input_pipeline.DataSource, *, split: str = "test",
                    on_batch: Callable[[int, int], Any] | None = None) -> dict:
    """The ``strong_robust`` field of eval.json for ``split``, under ``adv.eval_through_decouplers``' threat model.

    Radius and PGD step: ``adv.eval_epsilon`` / ``adv.eval_step_size``; budget: ``adv.strong_*``. The
    large-radius check runs on the first batches holding ``adv.strong_sanity_examples`` examples at
    ``adv.strong_sanity_epsilon`` (PGD step a quarter of it) and passes when the strong attack leaves at most
    ``adv.strong_sanity_max_accuracy`` percent of them correct. ``on_batch(done, total)`` is called after each
    evaluation batch (a caller's progress line: through the decouplers this evaluation can take an hour).

    Returns:
        ``{'threat_model', 'epsilon', 'pgd_step_size', 'settings', 'attacks': {attack: class_report},
        'per_class_accuracy': {attack: {class: percent}}, 'large_radius', 'sanity_checks', 'warnings'}``.
    """
    adv, class_names = config.adv, list(data.info.class_names)
    settings = settings_from_config(adv)
    end_to_end = bool(adv.get("eval_through_decouplers", True))
    step = _parallel_fld_step(model, settings, end_to_end)
    epsilon, pgd_step = float(adv.eval_epsilon), float(adv.eval_step_size)
    large_epsilon = float(adv.get("strong_sanity_epsilon", 64 / 255))
    large_examples = int(adv.get("strong_sanity_examples", 64))
    max_large = float(adv.get("strong_sanity_max_accuracy", 10.0))
    batches = input_pipeline.eval_batches(
        data, split=split, per_device_batch_size=int(config.train.eval_batch_size),
        local_device_count=jax.local_device_count(), process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    num_batches = input_pipeline.num_eval_batches(
        data, split=split, per_device_batch_size=int(config.train.eval_batch_size),
        local_device_count=jax.local_device_count(), process_count=jax.process_count())
    key, large_key = jax.random.split(jax.random.key(int(config.seed)))
    total, large, large_count = None, None, 0
    for index, batch in enumerate(batches):
        confusions = step(variables, batch, jax.random.fold_in(key, index), epsilon, pgd_step)
        total = confusions if total is None else total + confusions
        if large_count < large_examples:  # PGD's step scaled with the radius: 2/255 at 8/255 becomes 16/255
            confusions = step(variables, batch, jax.random.fold_in(large_key, index), large_epsilon,
                              large_epsilon / 4)
            large = confusions if large is None else large + confusions
            large_count += int(np.sum(batch["mask"]))
        if on_batch is not None:
            jax.block_until_ready(total)  # the batch is computed, not only dispatched
            on_batch(index + 1, num_batches)
    if total is None:
        raise ValueError("robust_eval: the split has no batches")
    total, large = np.asarray(total), np.asarray(large)
    per_class = per_class_accuracy(total)
    strong_large = large[ATTACKS.index("strong")]
    large_accuracy = float(100.0 * np.trace(strong_large) / strong_large.sum())
    checks = sanity_checks(per_class, class_names, large_radius_accuracy=large_accuracy,
                           max_large_radius_accuracy=max_large)
    attacks = {name: metrics.class_report(matrix, class_names) for name, matrix in zip(ATTACKS, total)}
    notes = warnings(checks)
    if attacks["clean"]["collapsed"] and notes:
        notes.append("WARNING: the model predicts one class for every image; no attack can change a constant "
                     "prediction, so failed checks here describe the model, not the attack")
    return {
        "threat_model": "end-to-end" if end_to_end else "fixed-features",
        "epsilon": epsilon,
        "pgd_step_size": pgd_step,
        "settings": dataclasses.asdict(settings),
        "attacks": attacks,
        "per_class_accuracy": {name: dict(zip(class_names, values)) for name, values in per_class.items()},
        "large_radius": {"epsilon": large_epsilon, "num_examples": int(strong_large.sum()),
                         "accuracy": {name: float(100.0 * np.trace(m) / m.sum()) for name, m in zip(ATTACKS, large)},
                         "max_accuracy": max_large},
        "sanity_checks": checks,
        "warnings": notes,
    }


