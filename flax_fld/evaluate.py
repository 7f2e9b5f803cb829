"""Per-class evaluation of a trained model: clean accuracy and robust accuracy under PGD-CE.

Every example of the split is counted exactly once (the input pipeline pads the last batch and marks the
padding with ``mask``); confusion matrices are summed over devices inside the pmapped step, and the reports
have the fields of ``WORKDIR/eval.json`` (``metrics.class_report`` plus ``robust``, ``class_names``, ``split``).
"""

import functools
import json
import os
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from flax_fld import attack, input_pipeline, metrics, names
from flax_fld.models import fld


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
        model: the static FLD model.
        robust: also attack with PGD-CE.
        attack_settings: ``(epsilon, num_steps, step_size, through_decouplers)``.

    Returns:
        ``(clean, robust)`` int32 ``[K, K]`` confusion matrices over all devices (``robust`` is all zero
        when ``robust`` is False).
    """
    images, labels, mask = batch["image"], batch["label"], batch["mask"]
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
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sums the clean (and robust) confusion matrices over ``batches`` of shape ``[D, B, ...]``."""
    settings = (
        float(adv_config.eval_epsilon),
        int(adv_config.eval_steps),
        float(adv_config.eval_step_size),
        bool(adv_config.get("eval_through_decouplers", True)),
    )
    step = _parallel_eval_step(model, bool(robust), settings)
    key = jax.random.key(seed)
    clean_total, robust_total = None, None
    for index, batch in enumerate(batches):
        clean, adversarial = step(variables, batch, jax.random.fold_in(key, index))
        # Summed on device; fetched once at the end.
        clean_total = clean if clean_total is None else clean_total + clean
        robust_total = adversarial if robust_total is None else robust_total + adversarial
    if clean_total is None:
        raise ValueError("evaluate: the split has no batches")
    return np.asarray(clean_total), (np.asarray(robust_total) if robust else None)


def evaluate_split(
    model: fld.FLDModel,
    variables: dict,
    config: ml_collections.ConfigDict,
    data_dir: str,
    *,
    split: str,
    robust: bool,
    both_threat_models: bool = False,
) -> dict[str, Any]:
    """Clean (and robust) per-class report of ``split``: the fields of ``WORKDIR/eval.json``.

    Args:
        model: the FLD model (``fld.create_fld_model``).
        variables: ``{'params', 'batch_stats'}`` (e.g. ``TrainState.inference_variables()``).
        config: the run's config (``data``, ``adv.eval_*``, ``train.eval_batch_size``, ``seed``).
        data_dir: where the prepared data set lives.
        split: ``train`` | ``validation`` | ``test``.
        robust: add ``robust[attack_name]`` from PGD-CE with ``adv.eval_epsilon/eval_steps/eval_step_size``.
        both_threat_models: with decouplers, also attack under the other threat model than
            ``adv.eval_through_decouplers`` (end to end and fixed features; the configured one comes first).

    Returns:
        ``metrics.class_report`` fields plus ``class_names``, ``split`` and ``robust`` ({} if not robust).
    """
    def batches():
        return input_pipeline.eval_batches(
            config.data,
            data_dir,
            split=split,
            per_device_batch_size=int(config.train.eval_batch_size),
            local_device_count=jax.local_device_count(),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    clean, adversarial = confusion_matrices(
        model, variables, batches(), adv_config=config.adv, robust=robust, seed=int(config.seed)
    )
    class_names = list(config.data.class_names)
    report = metrics.class_report(clean, class_names)
    report["robust"] = {}
    if adversarial is not None:
        report["robust"][attack_name(config.adv)] = metrics.class_report(adversarial, class_names)
        if both_threat_models and model.use_decouplers:
            other = ml_collections.ConfigDict(config.adv.to_dict())
            other.eval_through_decouplers = not bool(config.adv.get("eval_through_decouplers", True))
            _, adversarial = confusion_matrices(
                model, variables, batches(), adv_config=other, robust=True, seed=int(config.seed)
            )
            report["robust"][attack_name(other)] = metrics.class_report(adversarial, class_names)
    report["class_names"] = class_names
    report["split"] = split
    return report


def class_accuracies(report: dict) -> list[float]:
    """Per-class accuracies (percent) of a report in label order."""
    return [float(report["per_class_accuracy"][name]) for name in report["class_names"]]


def table_rows(report: dict, method: str) -> list[tuple[str, dict]]:
    """``metrics.format_table`` rows: the clean report and one row per robust attack."""
    rows = [(method, report)]
    for name, robust_report in report.get("robust", {}).items():
        rows.append((f"{method} ({name})", robust_report))
    return rows


def selection_value(report: dict, best_metric: str) -> float:
    """The validation figure named by ``config.train.best_metric`` (higher is better) of a report."""
    source = report
    if best_metric.startswith("robust_"):
        if not report["robust"]:
            raise ValueError(f"config.train.best_metric={best_metric!r} needs config.train.validate_robust=True")
        source = next(iter(report["robust"].values()))
        best_metric = best_metric[len("robust_"):]
    if best_metric == "worst_class":
        return float(np.nanmin(list(source["per_class_accuracy"].values())))
    if best_metric in ("average", "balanced_accuracy"):
        return float(source[best_metric])
    raise ValueError(
        f"config.train.best_metric={best_metric!r}; expected average | balanced_accuracy | worst_class | "
        "robust_average | robust_worst_class"
    )


def selection_key(report: dict, best_metric: str) -> list[float]:
    """What ranks epochs for the best checkpoint: ``best_metric`` first, ties broken by the clean balanced
    accuracy, then the clean average (compare lists lexicographically; higher is better).

    Without the tie-breakers a figure that stays flat (a worst class at 0 % for every epoch of a short run)
    would keep the first epoch's model.
    """
    return [selection_value(report, best_metric), float(report["balanced_accuracy"]), float(report["average"])]


def collapse_warning(report: dict) -> str:
    """A line for the log when the clean predictions collapsed or a class is never recognised; else ''."""
    if report["collapsed"]:
        return (f"WARNING: the model predicts one class for every {report['split']} image (collapsed): it has "
                "learned only a class prior; this table does not measure the method")
    if report["classes_at_zero"]:
        return f"WARNING: no {report['split']} image of {', '.join(report['classes_at_zero'])} is recognised (0 %)"
    return ""


def unsettled_classes(class_curves: list[list[float]], class_names: list[str], last: int = 3) -> list[str]:
    """Classes whose validation accuracy is 0 in one of the last ``last`` epochs after >= 50 % in an earlier one
    of them.

    ``class_curves``: per epoch, the per-class validation accuracies in percent (``val_clean_class_acc`` of
    metrics.jsonl). A class that swings like that means the chosen epoch is luck, not a trained model.
    """
    window = np.asarray(class_curves[-last:], np.float64)
    if len(window) < 2:
        return []
    # Highest accuracy before each epoch of the window, so 60 -> 30 -> 0 counts as a fall, not only 60 -> 0.
    best_before = np.maximum.accumulate(window, axis=0)[:-1]
    falls = (best_before >= 50.0) & (window[1:] == 0.0)
    return [name for name, fell in zip(class_names, falls.any(axis=0)) if fell]


def validation_record(report: dict) -> dict:
    """The ``val_*`` fields of an ``epoch`` record of metrics.jsonl (per-class lists in percent)."""
    record = {
        "val_average": report["average"],
        "val_balanced_accuracy": report["balanced_accuracy"],
        "val_best_worst": report["best_worst"],
        "val_worst_class": float(np.nanmin(class_accuracies(report))),
        "val_collapsed": bool(report["collapsed"]),
        "val_clean_class_acc": class_accuracies(report),
    }
    for robust_report in report["robust"].values():
        robust_report = dict(robust_report, class_names=report["class_names"])
        record["val_robust_average"] = robust_report["average"]
        record["val_robust_worst_class"] = float(np.nanmin(class_accuracies(robust_report)))
        record["val_robust_class_acc"] = class_accuracies(robust_report)
    return record


def method_name(config: ml_collections.ConfigDict) -> str:
    """The paper's row label of a config, e.g. ``SqueezeNet+ICFDNet+AT`` (Tables 1 and 2)."""
    return names.method_name(config.model.classifier, config.model.use_decouplers, config.adv.enabled)


def write_report(workdir: str, report: dict, config: ml_collections.ConfigDict) -> str:
    """Writes WORKDIR/eval.json and WORKDIR/plots/confusion_matrix.png; returns the paper-style table.

    A report of another split than ``test`` goes to ``eval_<split>.json`` / ``confusion_matrix_<split>.png``.
    """
    from flax_fld import plots  # matplotlib only when a report is written

    suffix = "" if report["split"] == "test" else f"_{report['split']}"
    path = os.path.join(workdir, f"eval{suffix}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    os.replace(path + ".tmp", path)
    plots_dir = os.path.join(workdir, "plots")
    os.makedirs(plots_dir, exist_ok=True)
    plots.plot_confusion_matrix(
        report["confusion_matrix"], report["class_names"], os.path.join(plots_dir, f"confusion_matrix{suffix}.png"),
        title=f"{report['split']} confusion matrix (clean)",
    )
    return metrics.format_table(table_rows(report, method_name(config)))


def plot_decoupling_examples(
    model: fld.FLDModel, variables: dict, config: ml_collections.ConfigDict, data_dir: str, path: str
) -> str | None:
    """The first ``train.num_grid_examples`` test images with IC2's reconstruction and both feature maps."""
    from flax_fld import plots

    count = int(config.train.get("num_grid_examples", 8))
    if count <= 0:
        return None
    batch = next(iter(input_pipeline.eval_batches(
        config.data, data_dir, split="test", per_device_batch_size=count, local_device_count=1
    )))
    mask = batch["mask"].reshape(-1)
    images = batch["image"].reshape((-1,) + batch["image"].shape[2:])[mask]
    labels = batch["label"].reshape(-1)[mask]
    forward = jax.jit(lambda v, x: fld.forward(model, v, x, train=False))
    logits, parts = forward(variables, images)
    probabilities = np.asarray(jax.nn.softmax(logits, -1))
    return plots.plot_decoupling_grid(
        images, parts.get("x_hat"), parts.get("feat1"), parts.get("feat2"), labels.tolist(),
        list(config.data.class_names), path, predictions=probabilities.argmax(-1).tolist(),
        probabilities=probabilities,
    )
