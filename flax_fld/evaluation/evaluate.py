"""Per-class evaluation of a trained model: clean accuracy and robust accuracy under PGD-CE.

This module only computes (on the devices) and returns report dicts; ``reporting`` shapes them into records,
tables and the best-epoch key, and ``run_outputs`` writes them to files and plots. ``calibration_report``
brings a split's logits to the host for eval.json's ``calibration`` (``flax_fld.evaluation.reliability``).

Every example of the split is counted exactly once (the input pipeline pads the last batch and marks the
padding with ``mask``); confusion matrices are summed over devices inside the pmapped step, and the reports
have the fields of ``WORKDIR/eval.json`` (``metrics.class_report`` plus ``robust``, ``class_names``, ``split``).

``ahead_of_time_jobs`` lists the programs a training run's evaluations will call, for
``runtime.ahead_of_time`` to compile in a background thread before their first use (which waits for them).
"""

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from flax_fld.data import input_pipeline
from flax_fld.evaluation import metrics, reliability
from flax_fld.method import attack
from flax_fld.models import fld
from flax_fld.runtime import ahead_of_time


def attack_name(adv_config: ml_collections.ConfigDict) -> str:
    """The ``robust`` key of a report, e.g. ``pgd10_linf_8/255`` (``... fixed-features`` for the Fig. 2 threat
    model, in which the attacker perturbs Y_c only and the decoupled features are held)."""
    name = f"pgd{int(adv_config.eval_steps)}_linf_{float(adv_config.eval_epsilon) * 255:g}/255"
    return name if adv_config.get("eval_through_decouplers", True) else name + " fixed-features"


def eval_step(
    variables: dict,
    batch: dict,
    key: jax.Array,
    *,
    model: fld.FLDModel,
    robust: bool,
    attack_settings: tuple[float, int, float, bool],
) -> tuple[jax.Array, jax.Array]:
    """Confusion matrices of one per-device batch, summed over the ``batch`` axis (call under pmap).

    Args:
        variables: ``{'params', 'batch_stats'}`` (replicated).
        batch: ``{'image' [B,H,W,C], 'label' int [B], 'mask' bool [B]}``.
        key: PRNG key of the attack's random start (folded with the device index here).
        model: the static FLD model; evaluated in float32 whatever its compute dtype (``fld.float32_model``).
        robust: also attack with PGD-CE.
        attack_settings: ``(epsilon, num_steps, step_size, through_decouplers)``.

    Returns:
        ``(clean, robust)`` int32 ``[K, K]`` confusion matrices over all devices (``robust`` is all zero
        when ``robust`` is False).
    """
    images, labels, mask = batch["image"], batch["label"], batch["mask"]
    model = fld.float32_model(model)  # a bfloat16-trained model's float32 variables, evaluated in float32
    num_classes = model.num_classes
    logits, _ = fld.forward(model, variables, images, train=False)
    clean = metrics.confusion_matrix(labels, jnp.argmax(logits, -1), num_classes, mask)
    adversarial = jnp.zeros_like(clean)
    if robust:
        epsilon, num_steps, step_size, end_to_end = attack_settings
        decoupled, _ = fld.decouple(model, variables, images, train=False)
        logits_fn = fld.attack_logits_fn(model, variables, decoupled, end_to_end=end_to_end)
        key = jax.random.fold_in(key, lax.axis_index("batch"))
        x_adv = attack.pgd_ce(logits_fn, images, labels, epsilon, step_size=step_size, num_steps=num_steps, key=key)
        adversarial = metrics.confusion_matrix(labels, jnp.argmax(logits_fn(x_adv), -1), num_classes, mask)
    return lax.psum(clean, "batch"), lax.psum(adversarial, "batch")


def attack_settings_of(adv_config: ml_collections.ConfigDict) -> tuple[float, int, float, bool]:
    """``eval_step``'s ``attack_settings`` from ``config.adv``: ``(eval_epsilon, eval_steps, eval_step_size,
    eval_through_decouplers)``."""
    return (
        float(adv_config.eval_epsilon),
        int(adv_config.eval_steps),
        float(adv_config.eval_step_size),
        bool(adv_config.get("eval_through_decouplers", True)),
    )


def _eval_program(model: fld.FLDModel, robust: bool, attack_settings: tuple) -> tuple:
    # The ahead_of_time key of _parallel_eval_step(model, robust, attack_settings).
    return ("evaluate.eval_step", model, bool(robust), tuple(attack_settings))


def _logits_program(model: fld.FLDModel) -> tuple:
    return ("evaluate.logits_step", model)


@functools.lru_cache(maxsize=16)
def _parallel_eval_step(model: fld.FLDModel, robust: bool, attack_settings: tuple):
    # Cached per (model, attack) so that evaluating every epoch compiles once. Variables are broadcast
    # (in_axes None) rather than replicated by hand, as flax's examples/imagenet does with its state.
    step = functools.partial(eval_step, model=model, robust=robust, attack_settings=attack_settings)
    return jax.pmap(step, axis_name="batch", in_axes=(None, 0, None), out_axes=None)


def confusion_matrices(
    model: fld.FLDModel,
    variables: dict,
    batches: Iterable[dict],
    *,
    adv_config: ml_collections.ConfigDict,
    robust: bool,
    seed: int = 0,
    on_batch: Callable[[int], Any] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sums the clean (and robust) confusion matrices over ``batches`` of shape ``[D, B, ...]``.

    ``on_batch(done)`` is called after each batch has been computed (a caller's progress line).
    """
    settings = attack_settings_of(adv_config)
    ahead_of_time.before_use(_eval_program(model, bool(robust), settings))  # compiled ahead: waits, if compiling
    step = _parallel_eval_step(model, bool(robust), settings)
    key = jax.random.key(seed)
    clean_total, robust_total = None, None
    for index, batch in enumerate(batches):
        clean, adversarial = step(variables, batch, jax.random.fold_in(key, index))
        # Summed on device; fetched once at the end.
        clean_total = clean if clean_total is None else clean_total + clean
        robust_total = adversarial if robust_total is None else robust_total + adversarial
        if on_batch is not None:
            jax.block_until_ready((clean_total, robust_total))  # computed, not only dispatched
            on_batch(index + 1)
    if clean_total is None:
        raise ValueError("evaluate: the split has no batches")
    return np.asarray(clean_total), (np.asarray(robust_total) if robust else None)


def _split_batches(config: ml_collections.ConfigDict, data: input_pipeline.DataSource, split: str):
    return input_pipeline.eval_batches(
        data,
        split=split,
        per_device_batch_size=int(config.train.eval_batch_size),
        local_device_count=jax.local_device_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def evaluate_split(
    model: fld.FLDModel,
    variables: dict,
    config: ml_collections.ConfigDict,
    data: input_pipeline.DataSource,
    *,
    split: str,
    robust: bool,
    both_threat_models: bool = False,
    on_batch: Callable[[str, int, int], Any] | None = None,
) -> dict[str, Any]:
    """Clean (and robust) per-class report of ``split``: the fields of ``WORKDIR/eval.json``.

    Args:
        model: the FLD model (``fld.create_fld_model``).
        variables: ``{'params', 'batch_stats'}`` (e.g. ``TrainState.inference_variables()``).
        config: the run's config (``data``, ``adv.eval_*``, ``train.eval_batch_size``, ``seed``).
        data: the run's prepared data set (``input_pipeline.prepare_data_source``).
        split: ``train`` | ``validation`` | ``test``.
        robust: add ``robust[attack_name]`` from PGD-CE with ``adv.eval_epsilon/eval_steps/eval_step_size``.
        both_threat_models: with decouplers, also attack under the other threat model than
            ``adv.eval_through_decouplers`` (end to end and fixed features; the configured one comes first).
        on_batch: called ``(pass, done, total)`` before each pass over the split (``done`` 0) and after each
            of its batches; ``pass`` is ``clean`` or the attack's name (``reporting.progress.BatchProgress``).

    Returns:
        ``metrics.class_report`` fields plus ``class_names``, ``split`` and ``robust`` ({} if not robust).
    """
    batches = functools.partial(_split_batches, config, data, split)
    total = input_pipeline.num_eval_batches(
        data, split=split, per_device_batch_size=int(config.train.eval_batch_size),
        local_device_count=jax.local_device_count(), process_count=jax.process_count())

    def progress(name):
        if on_batch is None:
            return None
        on_batch(name, 0, total)
        return lambda done: on_batch(name, done, total)

    clean, adversarial = confusion_matrices(
        model, variables, batches(), adv_config=config.adv, robust=robust, seed=int(config.seed),
        on_batch=progress(attack_name(config.adv) if robust else "clean"))
    class_names = list(data.info.class_names)
    report = metrics.class_report(clean, class_names)
    report["robust"] = {}
    if adversarial is not None:
        report["robust"][attack_name(config.adv)] = metrics.class_report(adversarial, class_names)
        if both_threat_models and model.use_decouplers:
            other = ml_collections.ConfigDict(config.adv.to_dict())
            other.eval_through_decouplers = not bool(config.adv.get("eval_through_decouplers", True))
            _, adversarial = confusion_matrices(
                model, variables, batches(), adv_config=other, robust=True, seed=int(config.seed),
                on_batch=progress(attack_name(other)))
            report["robust"][attack_name(other)] = metrics.class_report(adversarial, class_names)
    report["class_names"] = class_names
    report["split"] = split
    return report


def logits_step(variables: dict, batch: dict, *, model: fld.FLDModel) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Clean logits of one per-device batch, gathered from every device (call under pmap).

    Args:
        variables: ``{'params', 'batch_stats'}`` (replicated).
        batch: ``{'image' [B,H,W,C], 'label' int [B], 'mask' bool [B]}``.
        model: the static FLD model; run in float32, as ``eval_step`` runs it, so that the probabilities
            belong to the predictions the confusion matrices count.

    Returns:
        ``(logits float32 [D, B, K], labels int32 [D, B], mask bool [D, B])`` over all ``D`` devices, the same
        on every device, so that every process holds the whole split (as the summed confusion matrices do).
    """
    model = fld.float32_model(model)
    logits, _ = fld.forward(model, variables, batch["image"], train=False)
    local = (logits.astype(jnp.float32), batch["label"], batch["mask"])
    return jax.tree.map(lambda value: lax.all_gather(value, "batch"), local)


@functools.lru_cache(maxsize=16)
def _parallel_logits_step(model: fld.FLDModel):
    return jax.pmap(functools.partial(logits_step, model=model), axis_name="batch", in_axes=(None, 0),
                    out_axes=None)


def split_logits(
    model: fld.FLDModel,
    variables: dict,
    config: ml_collections.ConfigDict,
    data: input_pipeline.DataSource,
    *,
    split: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Clean logits and labels of every example of ``split`` on the host, evaluation padding dropped.

    Returns:
        ``(logits float32 [N, K], labels int32 [N])``, N the split's size (the order is not the data set's:
        examples come grouped by device); ``softmax(logits)`` gives the probabilities.
    """
    ahead_of_time.before_use(_logits_program(model))
    step = _parallel_logits_step(model)
    logits, labels = [], []
    for batch in _split_batches(config, data, split):
        batch_logits, batch_labels, mask = (np.asarray(value) for value in step(variables, batch))
        mask = mask.reshape(-1)
        logits.append(batch_logits.reshape(-1, batch_logits.shape[-1])[mask])
        labels.append(batch_labels.reshape(-1)[mask])
    if not logits:
        return np.zeros((0, model.num_classes), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(logits), np.concatenate(labels).astype(np.int32)


def array_logits(model: fld.FLDModel, variables: dict, images: np.ndarray, per_device_batch_size: int) -> np.ndarray:
    """Clean logits ``float32 [N, K]`` of in-memory ``images [N, H, W, C]`` in [0, 1], in their order.

    For evaluations that transform a split on the host first (corruptions); padded to whole device batches.
    """
    ahead_of_time.before_use(_logits_program(model))
    step = _parallel_logits_step(model)
    devices = jax.local_device_count()
    per_step = devices * int(per_device_batch_size)
    outputs = []
    for start in range(0, len(images), per_step):
        chunk = np.asarray(images[start:start + per_step], np.float32)
        valid = len(chunk)
        chunk = np.concatenate([chunk, np.zeros((per_step - valid,) + chunk.shape[1:], np.float32)])
        batch = {"image": chunk.reshape((devices, -1) + chunk.shape[1:]),
                 "label": np.zeros((devices, per_step // devices), np.int32),
                 "mask": (np.arange(per_step) < valid).reshape(devices, -1)}
        logits, _, _ = step(variables, batch)
        outputs.append(np.asarray(logits).reshape(per_step, -1)[:valid])
    return np.concatenate(outputs) if outputs else np.zeros((0, model.num_classes), np.float32)


def temperature_scaling_enabled(config: ml_collections.ConfigDict) -> bool:
    """``config.eval.temperature_scaling``; True for runs whose config.json predates the key."""
    section = config.get("eval")
    return True if section is None else bool(section.get("temperature_scaling", True))


def calibration_report(
    model: fld.FLDModel,
    variables: dict,
    config: ml_collections.ConfigDict,
    data: input_pipeline.DataSource,
    *,
    split: str = "test",
) -> dict[str, Any]:
    """The ``calibration`` field of eval.json: ECE of ``split``'s clean softmax probabilities, overall and per
    class, and, with ``eval.temperature_scaling``, the temperature fitted on the validation split and the ECE
    after it (``reliability.calibration_summary``; ECEs are fractions in [0, 1]).

    The temperature is fitted on the validation split, never on the evaluated one (unless that is the
    validation split itself, where the ECE after it is then in-sample); ``temperature_fitted_on`` says which.
    Accuracy is unaffected: dividing logits by T > 0 keeps every argmax.
    """
    logits, labels = split_logits(model, variables, config, data, split=split)
    validation_logits = validation_labels = None
    if temperature_scaling_enabled(config):
        validation_logits, validation_labels = (
            (logits, labels) if split == "validation"
            else split_logits(model, variables, config, data, split="validation"))
        if len(validation_labels) == 0:  # a data set without a validation split: report ECE alone
            validation_logits = validation_labels = None
    summary = reliability.calibration_summary(logits, labels, list(data.info.class_names),
                                              validation_logits=validation_logits,
                                              validation_labels=validation_labels)
    summary["temperature_fitted_on"] = None if validation_logits is None else "validation"
    return summary


def robust_curve(
    model: fld.FLDModel,
    variables: dict,
    config: ml_collections.ConfigDict,
    data: input_pipeline.DataSource,
    *,
    split: str,
    epsilons: Sequence[float],
) -> dict[str, dict]:
    """Robust accuracy against the attack radius: ``{attack_name: class_report}``, one PGD-CE per radius.

    Each radius runs ``adv.eval_steps`` steps of ``adv.eval_step_size * epsilon / adv.eval_epsilon`` (the
    configured attack, scaled, so every radius is crossed in the same number of steps; ``epsilon / 4`` when
    the configured radius is 0), under the threat
    model of ``adv.eval_through_decouplers``. Keys are ``attack_name``'s, so the reports sit beside
    ``evaluate_split``'s ``robust`` entries.

    Args:
        epsilons: L-inf radii in [0, 1] pixel units (e.g. ``(1/255, 2/255, 4/255, 8/255)``).
    """
    class_names = list(data.info.class_names)
    curve = {}
    for epsilon in epsilons:
        adv = ml_collections.ConfigDict(config.adv.to_dict())
        adv.eval_epsilon = float(epsilon)
        configured = float(config.adv.eval_epsilon)
        adv.eval_step_size = (float(config.adv.eval_step_size) * float(epsilon) / configured if configured > 0
                              else float(epsilon) / 4)
        _, adversarial = confusion_matrices(model, variables, _split_batches(config, data, split), adv_config=adv,
                                            robust=True, seed=int(config.seed))
        curve[attack_name(adv)] = metrics.class_report(adversarial, class_names)
    return curve


def ahead_of_time_jobs(
    model: fld.FLDModel,
    variables: dict,
    config: ml_collections.ConfigDict,
    image_shape: Sequence[int],
    *,
    validation_robust: bool,
    test_report: bool = True,
) -> list[tuple[tuple, Callable[[], Any]]]:
    """A training run's evaluation programs as ``ahead_of_time.compile_in_background`` jobs, in the order they
    are first needed: validation's ``eval_step`` (with PGD when ``validation_robust``), then with
    ``test_report`` the test report's (``evaluate_split(robust=True, both_threat_models=True)``) and the
    calibration's logits step.

    Compiled from the shapes known at launch: an evaluation batch (``image float32 [local devices,
    train.eval_batch_size, *image_shape]``, ``label int32``, ``mask bool``), the attack's key and ``variables``
    (arrays or ``jax.ShapeDtypeStruct``s laid out as the calls will pass them, shardings included). After
    validation's program, its job also runs ``confusion_matrices``' small eager operations once (the key's
    fold-in, the sum of two batches' matrices), so that the first validation compiles nothing at all.
    """
    variables = ahead_of_time.abstract(variables)
    shape = (jax.local_device_count(), int(config.train.eval_batch_size))
    batch = {"image": jax.ShapeDtypeStruct(shape + tuple(image_shape), jnp.float32),
             "label": jax.ShapeDtypeStruct(shape, jnp.int32),
             "mask": jax.ShapeDtypeStruct(shape, jnp.bool_)}
    seed = int(config.seed)

    def eval_job(robust: bool, settings: tuple, *, eager_too: bool):
        def compile_program() -> None:
            key = jax.eval_shape(lambda: jax.random.fold_in(jax.random.key(seed), 0))
            compiled = _parallel_eval_step(model, robust, settings).lower(variables, batch, key).compile()
            if eager_too:
                _run_eager_operations(compiled, seed)
        return _eval_program(model, robust, settings), compile_program

    def logits_job():
        def compile_program() -> None:
            _parallel_logits_step(model).lower(variables, batch).compile()
        return _logits_program(model), compile_program

    configured = attack_settings_of(config.adv)
    jobs = [eval_job(bool(validation_robust), configured, eager_too=True)]
    if test_report:
        jobs.append(eval_job(True, configured, eager_too=False))
        if model.use_decouplers:
            other = configured[:3] + (not configured[3],)
            jobs.append(eval_job(True, other, eager_too=False))
        jobs.append(logits_job())
    unique = {}
    for key, job in jobs:
        unique.setdefault(key, job)  # validation's robust program is the test report's configured one
    return list(unique.items())


def _run_eager_operations(compiled: Any, seed: int) -> None:
    # The same eager programs confusion_matrices runs around the step: its key, and one sum of two batches'
    # confusion matrices (placed as the step returns them). Failures only leave them to the first validation.
    try:
        jax.random.fold_in(jax.random.key(seed), 0)
        sharding, info = compiled.output_shardings[0], compiled.out_info[0]
        zeros = jax.device_put(np.zeros(info.shape, info.dtype), sharding)
        jax.block_until_ready(zeros + zeros)
    except Exception:  # pylint: disable=broad-except
        pass
