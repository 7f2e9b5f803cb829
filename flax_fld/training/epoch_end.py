"""Between two epochs of Algorithm 1: calibrate, validate, keep the best, record, save.

``finish_epoch`` runs the steps in order; each decision in it is a small function of host values that a test
(or a reader) can take alone: ``epoch_record``, ``fawa_gate``, ``improves``, ``patience_ran_out``,
``epoch_line``.
"""

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from flax_fld.reporting import report_fields
from flax_fld.reporting.run_outputs import RunOutputs
from flax_fld.training import checkpointing, weight_averaging
from flax_fld.training.train_state import TrainState


def epoch_record(epoch: int, train_means: dict, class_epsilon: Any, class_beta: Any, class_acc: Any,
                 validation: dict) -> dict:
    """The ``epoch`` record of metrics.jsonl: the epoch's mean training metrics (``train_*``), the epsilon_i /
    beta_i it trained with, its adversarial training accuracy Acc_i, and the validation figures (``val_*``)."""
    record = {"epoch": epoch, **{f"train_{key}": value for key, value in train_means.items()}}
    record.update(class_epsilon=class_epsilon, class_beta=class_beta, train_adv_class_acc=class_acc,
                  **report_fields.validation_record(validation))
    return record


def fawa_gate(record: dict, train_config: ml_collections.ConfigDict) -> Optional[bool]:
    """Whether FAWA averages the next epoch's weights (CFA); None when FAWA is off or there is no robust
    validation to decide from."""
    if train_config.weight_averaging != "fawa" or "val_robust_class_acc" not in record:
        return None
    return weight_averaging.fawa_gate(record["val_robust_class_acc"], float(train_config.fawa_threshold))


def improves(value: list[float], previous: Any) -> bool:
    """Whether an epoch's selection key (``report_fields.selection_key``) beats the best so far (None: no best yet).

    Checkpoints written before the tie-breakers hold a single number; it compares with the key's first entry.
    """
    if previous is None:
        return True
    return value > (list(previous) if isinstance(previous, list) else [previous])


def patience_ran_out(epoch: int, best_epoch: Optional[int], patience: int) -> bool:
    """Early stopping: whether ``patience`` epochs (> 0) have passed since the best one without a better one.

    ``patience`` 0 never stops. The selection metric is ``train.best_metric``'s, so the run stops when the
    checkpoint it would keep has stopped changing.
    """
    return patience > 0 and best_epoch is not None and epoch - best_epoch >= patience


def epoch_line(epoch: int, num_epochs: int, validation: dict, record: dict, is_best: bool) -> str:
    """The console line of an epoch's end."""
    return (f"epoch {epoch}/{num_epochs}: validation average {validation['average']:.2f}% "
            f"worst class {record['val_worst_class']:.2f}%"
            + (f" robust {record['val_robust_average']:.2f}%" if "val_robust_average" in record else "")
            + (" (best so far)" if is_best else "")
            + (" COLLAPSED: every image predicted as one class" if validation["collapsed"] else ""))


@dataclasses.dataclass(frozen=True)
class EpochEnd:
    """What closes every epoch of one run, built once by ``train.train_and_evaluate`` before its first epoch.

    The three functions come from the training loop (they hold the pmapped programs and the data), so that
    this module needs no import of ``train``.
    """

    config: ml_collections.ConfigDict
    end_epoch: Callable[[TrainState], TrainState]  # train.end_epoch, pmapped: Eq. 1 and 2 from the counters
    validate: Callable[[dict], dict]  # variables -> the validation report (evaluate.evaluate_split)
    replicate: Callable[[Any], Any]  # places a new state leaf like the others, so the step does not recompile
    checkpointer: checkpointing.Checkpointer
    outputs: RunOutputs


def finish_epoch(state: TrainState, run: EpochEnd, *, epoch: int, train_means: dict, meta: dict,
                 iterator_state: dict) -> tuple[TrainState, dict]:
    """Closes epoch ``epoch`` (1-based): Eq. 1/2, validation, FAWA's gate, best selection, record, checkpoints
    (a periodic one also when early stopping ends the run here, so that a resume finds it finished).

    Args:
        state: the state after the epoch's last step.
        run: the run's fixed collaborators (``EpochEnd``).
        train_means: the epoch's mean training metrics.
        meta: ``{'best_value', 'best_epoch', ...}`` of the checkpoints so far.
        iterator_state: the data iterator's position after this epoch, saved with the checkpoint.

    Returns:
        ``(state for the next epoch, meta)``.
    """
    config, outputs, checkpointer = run.config, run.outputs, run.checkpointer
    step = int(state.step)
    epsilon_used, beta_used = jax.device_get((state.class_epsilon, state.class_beta))
    state = run.end_epoch(state)
    validation = run.validate({"params": state.params, "batch_stats": state.batch_stats})
    record = epoch_record(epoch, train_means, epsilon_used, beta_used, jax.device_get(state.class_acc), validation)
    gate = fawa_gate(record, config.train)
    if gate is not None:
        state = state.replace(average_enabled=run.replicate(jnp.asarray(gate)))
        record["fawa_averaging"] = int(gate)
    value = report_fields.selection_key(validation, str(config.train.best_metric))
    is_best = improves(value, meta["best_value"])
    if is_best:
        meta = {"best_value": value, "best_epoch": epoch}
    record.update(best_metric_value=value[0], best_epoch=meta["best_epoch"])
    outputs.epoch_done(step, record, epoch_line(epoch, int(config.train.num_epochs), validation, record, is_best))
    meta = dict(meta, iterator=iterator_state, epoch=epoch)
    stop = patience_ran_out(epoch, meta["best_epoch"], int(config.train.get("early_stopping_patience", 0)))
    if stop:
        outputs.say(f"early stopping after epoch {epoch}: no better validation {config.train.best_metric} in "
                    f"{epoch - meta['best_epoch']} epochs (best: epoch {meta['best_epoch']})")
    with outputs.clock.phase("checkpoints"):
        if is_best:
            checkpointer.save(state, meta, best=True)
        if epoch % int(config.train.checkpoint_every_epochs) == 0 or epoch == int(config.train.num_epochs) or stop:
            checkpointer.save(state, meta)
    return state, meta
