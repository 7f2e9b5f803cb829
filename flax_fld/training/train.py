"""Algorithm 1 end to end: feature decoupling + accuracy-based adaptive adversarial training.

Small top-level pure functions in the style of flax's examples/imagenet:

- ``create_train_state`` (its optimizer: ``optimizer.py``);
- ``train_step``: one minibatch of Algorithm 1 on one device (``axis_name="batch"``), pmapped over devices;
- ``end_epoch``: Eqs. 1 and 2 from the epoch's per-class adversarial accuracy, counters reset;
- ``train_and_evaluate``: the epoch loop with logging, validation and checkpoints, then the test report;
- ``load_for_inference``: a trained model back from WORKDIR for eval/predict.

How the state reaches the devices: like flax's current examples/imagenet/train.py, the unreplicated state is
passed to ``jax.pmap(..., in_axes=(None, 0), out_axes=(None, ...))``; pmap broadcasts it and, since the step
averages gradients and BatchNorm statistics (``lax.pmean``) and sums the counters (``lax.psum``), every device
ends with the same state, which comes back as one fully replicated array per leaf. So there is no
``jax_utils.replicate``/``unreplicate`` (or ``device_put_replicated``) bookkeeping, the checkpoint sees one copy,
and batch statistics are in sync at every step, not only before evaluation. The state is donated.
"""

import functools
import os
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from flax_fld.data import input_pipeline
from flax_fld.evaluation import evaluate
from flax_fld.method import calibration, objective
from flax_fld.models import fld, pretrained
from flax_fld.reporting import metric_writers, phase_clock, progress, report_fields, run_outputs, tables
from flax_fld.robustness import shift_eval
from flax_fld.runtime import ahead_of_time, distributed
from flax_fld.training import checkpointing, compile_log, config_validation, epoch_end, optimizer, weight_averaging
from flax_fld.training.train_state import TrainState, current_learning_rate

AXIS_NAME = "batch"


def uniform_class_values(adv_config: ml_collections.ConfigDict, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Algorithm 1's initialisation ``epsilon_i = epsilon``, ``beta_i = beta / (1 + beta)`` (``[K]`` each).

    ``beta / (1 + beta)`` is Eq. 2 at ``mu + Acc_i = 1``: Eq. 3 mixes the clean and robust terms convexly, so
    the TRADES strength (6) is mapped into [0, 1) before use, calibrated or not.
    """
    epsilon = jnp.full((num_classes,), adv_config.epsilon, jnp.float32)
    beta = float(adv_config.beta)
    return epsilon, jnp.full((num_classes,), beta / (1.0 + beta), jnp.float32)


def adversarial_weight_on(adv_config: ml_collections.ConfigDict, epoch: jax.Array) -> jax.Array:
    """Whether Eq. 3's robust term is on in ``epoch`` (0-based): from ``adv.start_epoch`` on.

    Before it ``beta_i = 0``: Lat is the clean cross-entropy, so the classifier (and the decouplers' features
    it reads) first learn the task, then adversarial training refines it, as CFA warms up before its
    class-wise calibration. The attack still runs, so the per-class adversarial accuracy of Eq. 1/2 is
    measured from the first epoch, and the step compiles once.
    """
    return epoch >= int(adv_config.get("start_epoch", 0))


def start_classifier_from(model_config: ml_collections.ConfigDict, variables: dict) -> dict:
    """``variables`` with the classifier's replaced by the torchvision checkpoint ``model.init_from``."""
    state_dict = pretrained.load_state_dict(model_config.init_from)
    classifier = {"params": variables["params"]["classifier"],
                  "batch_stats": variables.get("batch_stats", {}).get("classifier", {})}
    loaded, fresh = pretrained.torchvision_params(state_dict, model_config.classifier, classifier)
    if jax.process_index() == 0:
        print(f"classifier started from {model_config.init_from}; freshly initialised: "
              f"{', '.join(fresh) or 'nothing'}", flush=True)
    return {"params": {**variables["params"], "classifier": loaded["params"]},
            "batch_stats": {**variables.get("batch_stats", {}), "classifier": loaded["batch_stats"]}}


def create_train_state(
    config: ml_collections.ConfigDict,
    model: fld.FLDModel,
    image_shape: tuple[int, int, int],
    rng: jax.Array,
    steps_per_epoch: int,
) -> TrainState:
    """A fresh, unreplicated TrainState: initialised IC1/IC2/classifier, optimizer, uniform epsilon/beta.

    Two jitted programs build it: ``fld.init_variables`` (every submodule at once, cached per model and shape)
    and the rest of the state (cached per config); built op by op, the optimizer's and the counters' small
    arrays were ~150 XLA programs of their own before the first step.
    """
    weight_averaging.check_mode(config.train.weight_averaging)
    if config.adv.calibration not in ("adaptive", "fixed"):
        raise ValueError(f"config.adv.calibration={config.adv.calibration!r}; expected 'adaptive' or 'fixed'")
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    init_key, state_key = jax.random.split(rng)
    variables = fld.init_variables(model, init_key, tuple(image_shape))
    if config.model.get("init_from", ""):
        variables = start_classifier_from(config.model, variables)
    build = _jitted_fresh_state(ml_collections.FrozenConfigDict(config), model.num_classes, int(steps_per_epoch))
    return build(variables, state_key)


@functools.lru_cache(maxsize=8)
def _jitted_fresh_state(config: ml_collections.FrozenConfigDict, num_classes: int, steps_per_epoch: int):
    return jax.jit(functools.partial(_fresh_state, config=config, num_classes=num_classes,
                                     steps_per_epoch=steps_per_epoch))


def _fresh_state(variables: dict, state_key: jax.Array, *, config: ml_collections.FrozenConfigDict,
                 num_classes: int, steps_per_epoch: int) -> TrainState:
    # create_train_state's state around the initial `variables`, traced.
    mode = config.train.weight_averaging
    epsilon, beta = uniform_class_values(config.adv, num_classes)
    beta = jnp.where(adversarial_weight_on(config.adv, jnp.int32(0)), beta, 0.0)
    # The previous accuracy a class keeps until it is first seen; 1 - sigma makes Eq. 1 give epsilon itself.
    class_acc = jnp.full((num_classes,), 1.0 - float(config.adv.sigma), jnp.float32)
    return TrainState.create(
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=optimizer.shared_optimizer(
            ml_collections.FrozenConfigDict(config.optim), int(config.train.num_epochs), int(steps_per_epoch)
        ),
        class_epsilon=epsilon,
        class_beta=beta,
        class_acc=class_acc,
        rng=state_key,
        average=mode != "none",
        average_enabled=mode == "ema",
    )


def train_step(
    state: TrainState, batch: dict, *, model: fld.FLDModel, config: ml_collections.ConfigDict
) -> tuple[TrainState, dict]:
    """One minibatch of Algorithm 1 on one device; call under ``pmap(axis_name="batch")``.

    ``objective.loss_and_gradients`` decouples, attacks (Eq. 3's inner max with the radii of Eq. 1) and
    differentiates Eq. 4 on x'; here gradients and BatchNorm statistics are averaged over devices, the
    optimizer steps, and the per-class adversarial hits are summed into the epoch's counters for Eq. 1/2.

    The one place the model's compute dtype is chosen: the step runs ``model`` in ``train.compute_dtype``
    (``fld.with_compute_dtype``; bfloat16 convolutions and matrix products, float32 parameters, optimizer
    state, normalisation, losses and x'), while the caller's ``model`` (float32) serves evaluation.

    Args:
        state: the replicated TrainState.
        batch: ``{'image': float32 [B,H,W,C] in [0,1], 'label': int32 [B]}`` (this device's share).
        model: static FLD model. config: the run's config (``adv``, ``loss``, ``train``).

    Returns:
        ``(state, metrics)``; metrics are device-averaged scalars: loss, lc, ls, lat, clean_acc, adv_acc
        (accuracy on x'; on x when adversarial training is off), grad_norm, learning_rate.
    """
    model = fld.with_compute_dtype(model, str(config.train.get("compute_dtype", "float32")))
    images, labels = batch["image"], batch["label"]
    key, next_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    # Same next_key on every device (the state stays replicated); distinct randomness per device below.
    attack_key, *dropout_keys = jax.random.split(jax.random.fold_in(key, lax.axis_index(AXIS_NAME)), 3)
    loss, terms, grads, _ = objective.loss_and_gradients(
        state.params, state.batch_stats, images, labels, state.class_epsilon, state.class_beta,
        (attack_key, *dropout_keys), model=model, config=config)
    grads, batch_stats = lax.pmean((grads, terms.batch_stats), AXIS_NAME)
    adv_hits = jnp.argmax(terms.logits_adv, -1) == labels
    correct, seen = lax.psum(objective.count_by_class(labels, adv_hits, model.num_classes), AXIS_NAME)
    state = state.apply_gradients(grads, batch_stats=batch_stats, adv_correct=state.adv_correct + correct,
                                  adv_seen=state.adv_seen + seen, rng=jax.random.key_data(next_key))
    if state.averaged_params is not None:
        averaged, count = weight_averaging.maybe_update(
            state.averaged_params, state.params, state.average_count, state.average_enabled,
            float(config.train.ema_decay))
        state = state.replace(averaged_params=averaged, average_count=count)
    metrics = lax.pmean({"loss": loss, "lc": terms.lc, "ls": terms.ls, "lat": terms.lat,
                         "clean_acc": jnp.mean(jnp.argmax(terms.logits_clean, -1) == labels),
                         "adv_acc": jnp.mean(adv_hits)}, AXIS_NAME)
    return state, {**metrics, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": current_learning_rate(state.opt_state)}


def end_epoch(state: TrainState, adv_config: ml_collections.ConfigDict) -> TrainState:
    """Algorithm 1's epoch end: ``Acc_i`` from the counters, then Eq. 1 and Eq. 2; counters reset.

    ``Acc_i = adv_correct_i / adv_seen_i`` (a class unseen this epoch keeps its previous value). With
    ``adv.calibration == "adaptive"`` and at least ``adv.warmup_epochs`` epochs completed:
    ``epsilon_i = (sigma + Acc_i) epsilon`` (Eq. 1) and ``beta_i = (mu + Acc_i) beta / (1 + (mu + Acc_i) beta)``
    (Eq. 2); otherwise (``fixed``, plain TRADES, or during the warm-up) ``epsilon`` and ``beta / (1 + beta)``.
    Before ``adv.start_epoch`` every ``beta_i`` is 0 (``adversarial_weight_on``). Pure; jit it with the
    config closed over.

    Args:
        state: TrainState with this epoch's counters (``[K]`` int32).
        adv_config: ``config.adv``.

    Returns:
        The state for the next epoch (``epoch`` + 1, ``class_acc`` = this epoch's ``Acc_i``).
    """
    acc = calibration.class_accuracy(state.adv_correct, state.adv_seen, state.class_acc)
    epoch = state.epoch + 1
    uniform_epsilon, uniform_beta = uniform_class_values(adv_config, acc.shape[0])
    if adv_config.calibration == "adaptive":
        calibrate = epoch >= int(adv_config.warmup_epochs)
        epsilon = jnp.where(calibrate, calibration.class_epsilon(acc, adv_config.epsilon, adv_config.sigma),
                            uniform_epsilon)
        beta = jnp.where(calibrate, calibration.class_beta(acc, adv_config.beta, adv_config.mu), uniform_beta)
    else:
        epsilon, beta = uniform_epsilon, uniform_beta
    beta = jnp.where(adversarial_weight_on(adv_config, epoch), beta, 0.0)
    zeros = jnp.zeros_like(state.adv_correct)
    return state.replace(
        epoch=epoch, class_acc=acc, class_epsilon=epsilon, class_beta=beta, adv_correct=zeros, adv_seen=zeros
    )


def replicate(tree: Any) -> Any:
    """Places ``tree`` fully replicated on the local devices, the layout ``parallel_train_step`` returns.

    Starting from that layout (rather than a single-device state that pmap would broadcast) means the first
    and every later step see the same input sharding, so the step compiles once instead of twice.
    """
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), (AXIS_NAME,))
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


@functools.lru_cache(maxsize=8)
def parallel_train_step(model: fld.FLDModel, config: ml_collections.FrozenConfigDict):
    """``train_step`` pmapped over the local devices, state broadcast in and donated (see module docstring).

    Cached per (model, frozen config) so repeated runs in one process (tests, ablations) compile once.
    """
    step = functools.partial(train_step, model=model, config=config)
    return jax.pmap(step, axis_name=AXIS_NAME, in_axes=(None, 0), out_axes=(None, None), donate_argnums=(0,))


def abstract_train_state(config: ml_collections.ConfigDict, model: fld.FLDModel, image_shape: tuple[int, int, int],
                         steps_per_epoch: int) -> TrainState:
    """``replicate(create_train_state(...))`` as shapes, dtypes and shardings (``jax.ShapeDtypeStruct``), traced
    but never computed or compiled (a ``model.init_from`` checkpoint has the initial variables' shapes)."""
    key = jax.random.key(0)
    variables = jax.eval_shape(lambda init_key: fld.init_variables(model, init_key, tuple(image_shape)), key)
    build = _jitted_fresh_state(ml_collections.FrozenConfigDict(config), model.num_classes, int(steps_per_epoch))
    state = jax.eval_shape(build, variables, key)
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), (AXIS_NAME,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding,
                                                          weak_type=leaf.weak_type), state)


def compile_step_in_background(step_fn, config: ml_collections.ConfigDict, model: fld.FLDModel,
                               image_shape: tuple[int, int, int], steps_per_epoch: int) -> Callable[[], None]:
    """Lowers and compiles ``step_fn`` (``parallel_train_step``) in a thread, from the state's and a batch's
    shapes; returns a function that waits for it (call it before the first step, and again at the end).

    The compile then overlaps the state's initialisation (a program of its own) and the run's setup, and its
    executable lands in the cache the first step looks up (same trace, shardings and lowering), so the first
    step does not compile again. Single-process runs only (several processes feed host-local batches); if the
    thread fails, the first step compiles as it always did.
    """
    if jax.process_count() > 1:
        return lambda: None

    def compile_step() -> None:
        try:
            state = abstract_train_state(config, model, image_shape, steps_per_epoch)
            shape = (jax.local_device_count(), int(config.train.per_device_batch_size))
            batch = {"image": jax.ShapeDtypeStruct(shape + tuple(image_shape), jnp.float32),
                     "label": jax.ShapeDtypeStruct(shape, jnp.int32)}
            step_fn.lower(state, batch).compile()
        except Exception:  # pylint: disable=broad-except  # the first step compiles it instead
            pass

    thread = threading.Thread(target=compile_step, name="compile_train_step", daemon=True)
    thread.start()
    return thread.join


def compile_evaluation_in_background(end_epoch_fn, state: TrainState, config: ml_collections.ConfigDict,
                                     model: fld.FLDModel, image_shape: tuple[int, int, int]) -> Callable[[], None]:
    """Compiles the programs of the epochs' ends ahead of the first, in a thread: ``end_epoch_fn``
    (``jitted_end_epoch``), then ``evaluate.ahead_of_time_jobs`` (validation's step, the test report's two
    threat models, the calibration's logits). Started once the train step has compiled, it runs beside the
    first epoch's steps instead of in front of the first validation.

    From ``state``'s layout (the one the steps keep); a first use waits for its program while it compiles
    (``ahead_of_time.before_use``). Returns ``finish`` (cancels what has not started, waits for the rest).
    Single-process runs only, as ``compile_step_in_background``; ``FLAX_FLD_AHEAD_OF_TIME=0`` turns it off.
    """
    if jax.process_count() > 1 or not ahead_of_time.enabled():
        return lambda: None
    abstract_state = ahead_of_time.abstract(state)
    jobs = [(end_epoch_program(config), lambda: end_epoch_fn.lower(abstract_state).compile())]
    jobs += evaluate.ahead_of_time_jobs(model, {"params": state.params, "batch_stats": state.batch_stats}, config,
                                        image_shape, validation_robust=bool(config.train.validate_robust))
    return ahead_of_time.compile_in_background(jobs, name="compile_evaluation")


def end_epoch_program(config: ml_collections.ConfigDict) -> tuple:
    """The ``ahead_of_time`` key of ``jitted_end_epoch(config.adv)``."""
    return ("train.end_epoch", ml_collections.FrozenConfigDict(config.adv))


@functools.lru_cache(maxsize=8)
def jitted_end_epoch(adv_config: ml_collections.FrozenConfigDict):
    """``end_epoch`` jitted with ``adv_config`` closed over (its floats become constants)."""
    return jax.jit(functools.partial(end_epoch, adv_config=adv_config), donate_argnums=(0,))


def _mean_metrics(history: list[dict]) -> dict[str, float]:
    """Host-side mean of per-step metric dicts (one device_get for the whole window)."""
    history = jax.device_get(history)
    return {key: float(np.mean([entry[key] for entry in history])) for key in history[0]}


def train_epoch(state: TrainState, train_step_fn, train_iter, *, epoch: int, log_every: int,
                outputs: run_outputs.RunOutputs) -> tuple[TrainState, dict[str, float]]:
    """One pass over the training set (``epoch`` 1-based); returns the state and the epoch's mean metrics.

    Metrics stay on the device until a logging window closes, so the host does not wait on every step.
    """
    first_step = int(state.step)
    last_step = first_step + train_iter.steps_per_epoch
    window, history = [], []
    for step in range(first_step + 1, last_step + 1):
        state, step_metrics = train_step_fn(state, next(train_iter))
        window.append(step_metrics)
        if step % log_every == 0 or step == last_step:
            summary = _mean_metrics(window)
            metric_writers.check_finite(summary, step)  # before any checkpoint of this epoch: never save a NaN
            outputs.train_window(step, epoch, summary)
            history.extend(window)
            window = []
    return state, _mean_metrics(history)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains with Algorithm 1 (resuming from WORKDIR/checkpoints if any), then evaluates the test split.

    Writes WORKDIR/{config.json, dataset_info.json, metrics.jsonl, tensorboard/, checkpoints/,
    checkpoints_best/, eval.json, plots/} and prints progress and the paper-style table.
    Returns the eval.json content (test split, best checkpoint).
    """
    config_validation.validate_config(config)  # before any data preparation or compilation
    clock = phase_clock.PhaseClock()
    compiles, compiled_before = compile_log.process_log(), len(compile_log.process_log().programs)
    workdir = os.path.abspath(workdir)
    changes = checkpointing.config_changes(workdir, config)
    if changes and not config.train.get("resume_with_changes", False):
        raise ValueError(
            f"{workdir} holds a run trained with other settings ({'; '.join(changes)}): use a new --workdir to "
            "start fresh, or add --config.train.resume_with_changes=True to continue it with the new settings")
    os.makedirs(workdir, exist_ok=True)
    data_dir = input_pipeline.resolve_data_dir(config.data, workdir)
    # Several processes on one file system: process 0 builds the data set, the others then find it ready.
    with clock.phase("data"):
        data = distributed.main_process_first(lambda: input_pipeline.prepare_data_source(config.data, data_dir))
    info = data.info
    model = fld.create_fld_model(config.model, len(info.class_names), info.image_shape[-1])
    train_iter = input_pipeline.TrainIterator(
        data, per_device_batch_size=int(config.train.per_device_batch_size),
        local_device_count=jax.local_device_count(), seed=int(config.seed),
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    steps_per_epoch, num_epochs = train_iter.steps_per_epoch, int(config.train.num_epochs)
    frozen_config = ml_collections.FrozenConfigDict(config)
    p_train_step = parallel_train_step(model, frozen_config)
    # The step's compile (the longest before the first step) runs beside the state's init and the setup.
    wait_for_step_compile = compile_step_in_background(p_train_step, config, model, info.image_shape,
                                                       steps_per_epoch)
    with clock.phase("setup"):  # the initial state's programs, beside the step's compile
        state = create_train_state(config, model, info.image_shape, jax.random.key(int(config.seed)),
                                   steps_per_epoch)
        state = replicate(state)
    checkpointing.write_run_files(workdir, config, info)
    checkpointer = checkpointing.Checkpointer(
        workdir, keep=int(config.train.keep_checkpoints), async_save=bool(config.train.async_checkpointing)
    )
    meta = {"best_value": None, "best_epoch": None}
    try:
        restored = checkpointer.restore(state, "latest")
    except BaseException:
        # A process that exits while XLA compiles the step in its thread aborts at shutdown ("terminate
        # called ...") and buries the one-line error under a crash dump: let the compile end first.
        wait_for_step_compile()
        checkpointer.close()
        raise
    if restored is not None:
        state, meta = restored
        checkpointer.complete_best(state, meta)
        train_iter.set_state(meta["iterator"])
        print(f"resuming {workdir} from step {int(state.step)} (epoch {int(state.epoch)})", flush=True)
    p_end_epoch = jitted_end_epoch(frozen_config.adv)
    end_epoch_key = end_epoch_program(config)

    def end_epoch_when_compiled(epoch_state: TrainState) -> TrainState:
        ahead_of_time.before_use(end_epoch_key)  # waits while the background thread compiles it
        return p_end_epoch(epoch_state)
    outputs = run_outputs.RunOutputs(
        workdir, info.class_names, total_steps=steps_per_epoch * num_epochs, initial_step=int(state.step),
        log_every=max(int(config.train.log_every_steps), 1), plot_every=int(config.train.plot_every_epochs),
        active=jax.process_index() == 0, clock=clock)
    if int(state.epoch) < num_epochs:
        outputs.say(f"training {report_fields.method_name(config)}: {num_epochs} epochs x {steps_per_epoch} steps, "
                    f"global batch {config.train.per_device_batch_size * jax.device_count()}; "
                    "the first step compiles")
        with clock.phase("compile"):  # what the step's compile adds after the setup it overlapped
            wait_for_step_compile()
        outputs.say(compiles.summary(since=compiled_before))
        # Validation's programs (and end_epoch) then compile in the background, beside the first epoch's steps.
        finish_compiling_ahead = compile_evaluation_in_background(p_end_epoch, state, config, model,
                                                                  info.image_shape)
    else:
        finish_compiling_ahead = lambda: None  # noqa: E731  # a finished run resumed: the test report only

    def validate(variables):
        with clock.phase("validation"):
            return evaluate.evaluate_split(model, variables, config, data, split="validation",
                                           robust=bool(config.train.validate_robust),
                                           on_batch=progress.BatchProgress(outputs.say, "validation"))

    closing = epoch_end.EpochEnd(config=config, end_epoch=end_epoch_when_compiled, validate=validate,
                                 replicate=replicate, checkpointer=checkpointer, outputs=outputs)
    patience = int(config.train.get("early_stopping_patience", 0))
    try:
        for epoch in range(int(state.epoch) + 1, num_epochs + 1):
            if epoch_end.patience_ran_out(epoch - 1, meta.get("best_epoch"), patience):
                break  # a resumed run that had already stopped early
            with clock.phase("training"):
                state, train_means = train_epoch(state, p_train_step, train_iter, epoch=epoch,
                                                 log_every=outputs.progress.every_steps, outputs=outputs)
            state, meta = epoch_end.finish_epoch(state, closing, epoch=epoch, train_means=train_means, meta=meta,
                                                 iterator_state=train_iter.get_state())
        checkpointer.wait()
        best = checkpointer.restore(state, "best")
        final_state = best[0] if best else state
        variables = final_state.inference_variables()
        with clock.phase("test report"):
            report = evaluate.evaluate_split(model, variables, config, data, split="test", robust=True,
                                             both_threat_models=True,
                                             on_batch=progress.BatchProgress(outputs.say, "test split"))
            report["calibration"] = evaluate.calibration_report(model, variables, config, data, split="test")
        if config.get("eval", {}).get("shift", False):
            try:  # an extra of the report: its failure (say, no disk for site B's data) keeps eval.json
                with clock.phase("scanner shift"):
                    report["shift"] = shift_eval.evaluate_shift(model, variables, config, data, data_dir=data_dir,
                                                                log=outputs.say)
                outputs.say("test split under scanner shift:\n"
                            + tables.format_shift(report["shift"], report_fields.method_name(config)))
            except (OSError, ValueError) as error:
                outputs.say(f"WARNING: the shift evaluation failed ({error}); launch/eval.py --shift retries it")
        report["checkpoint"] = f"best checkpoint (epoch {best[1]['best_epoch']})" if best else "final state"
        report["epoch"] = int(best[1]["best_epoch"]) if best else num_epochs
        report["last_epoch"] = int(meta.get("epoch", num_epochs))  # earlier than num_epochs after early stopping
        report["method"] = report_fields.method_name(config)
        report["unsettled_classes"] = outputs.unsettled_classes()
        outputs.test_report(int(state.step), report, config, lambda path: run_outputs.plot_decoupling_examples(
            model, variables, config, data, path))
        outputs.time_by_phase(int(state.step), compiles.summary(since=compiled_before, so_far=False))
        return report
    finally:
        finish_compiling_ahead()  # nothing left after a whole run; cancels the rest after an error
        wait_for_step_compile()  # a finished run resumed never waited for it
        checkpointer.wait()
        checkpointer.close()
        outputs.close()


def load_for_inference(workdir: str, which: str = "best") -> tuple[ml_collections.ConfigDict, fld.FLDModel, dict, Any]:
    """``(config, model, variables, info)`` of a trained run; ``which`` is ``best`` or ``latest``.

    Falls back to the latest checkpoint when there is no best one. ``variables`` (``{'params',
    'batch_stats'}`` for ``fld.forward``) are the averaged weights when EMA/FAWA averaged any.
    """
    config, info_dict = checkpointing.read_run_files(workdir)
    if info_dict:
        info = input_pipeline.DatasetInfo.from_dict(info_dict)
    else:
        data_dir = input_pipeline.resolve_data_dir(config.data, workdir)
        info = input_pipeline.prepare_data_source(config.data, data_dir).info
    model = fld.create_fld_model(config.model, len(info.class_names), info.image_shape[-1])
    template = create_train_state(config, model, info.image_shape, jax.random.key(0), steps_per_epoch=1)
    checkpointer = checkpointing.Checkpointer(workdir, keep=1, async_save=False)
    try:
        restored = checkpointer.restore(template, which)
        if restored is None and which == "best":
            restored = checkpointer.restore(template, "latest")
    finally:
        checkpointer.close()
    if restored is None:
        raise ValueError(f"no checkpoint in {os.path.join(workdir, checkpointing.PERIODIC_DIRNAME)}")
    return config, model, restored[0].inference_variables(), info
