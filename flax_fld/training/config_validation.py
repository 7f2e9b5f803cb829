"""Refuse a nonsensical config before any data preparation or compilation, with one line naming the key.

``validate_config(config)`` checks the type, finiteness and range of every number and the spelling of every
name that the training path reads (configs/default.py documents each key). A negative epsilon or a NaN beta
would otherwise train for an hour and exit 0, or fail only after compiling.
"""

import math
import os
import re
from collections.abc import Callable

import ml_collections

from flax_fld.data import datasets
from flax_fld.data.datasets import dicom_files, folder_split
from flax_fld.method.attack import RANDOM_STARTS
from flax_fld.method.objective import ATTACK_SPACES
from flax_fld.models import color, pretrained, registry
from flax_fld.models.fld import COMPUTE_DTYPES
from flax_fld.models.icfdnet import ICFDNET_PRESETS, NORMS
from flax_fld.models.vit import VIT_PRESETS
from flax_fld.training import weight_averaging

BEST_METRICS = ("average", "balanced_accuracy", "worst_class", "robust_average", "robust_worst_class")
MIN_IMAGE_SIZE = 32  # the smallest size every classifier accepts


def _number(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False,
            integer: bool = False) -> Callable[[object], str]:
    """A check: '' when the value is a finite number in the interval, else what is allowed."""
    left, right = ("(" if low_open else "["), (")" if high_open or high == math.inf else "]")
    allowed = f"{'an integer' if integer else 'a finite number'} in {left}{low:g}, {high:g}{right}"

    def check(value) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return allowed
        if integer and not float(value).is_integer():
            return allowed
        if not math.isfinite(value):
            return allowed
        if value < low or (low_open and value == low) or value > high or (high_open and value == high):
            return allowed
        return ""

    return check


def _one_of(choices) -> Callable[[object], str]:
    choices = tuple(choices)
    return lambda value: "" if value in choices else f"one of {choices}"


def _boolean(value) -> str:
    return "" if isinstance(value, bool) else "True or False"


def _split_fractions(value) -> str:
    try:
        folder_split.check_fractions(value)
    except ValueError:
        return "three fractions (train, validation, test), each > 0, summing to 1"
    return ""


def _regular_expression(value) -> str:
    if not isinstance(value, str):
        return "a regular expression string ('' for none)"
    try:
        re.compile(value)
    except re.error as error:
        return f"a regular expression that compiles ({error})"
    return ""


POSITIVE_INT = _number(1, integer=True)
NON_NEGATIVE_INT = _number(0, integer=True)
NON_NEGATIVE = _number(0)
UNIT = _number(0, 1)

# key -> check; a key missing from the config is skipped (configs written before it existed).
CHECKS: dict[str, Callable[[object], str]] = {
    "seed": NON_NEGATIVE_INT,
    "data.name": _one_of(sorted(datasets.BUILDERS)),
    "data.image_size": _number(MIN_IMAGE_SIZE, integer=True),
    "data.channels": _one_of((1, 3)),
    "data.augment": _boolean,
    "data.simulator_version": _one_of((1, 2)),
    "data.simulator_site": _one_of(("A", "B", "all")),
    "eval.shift": _boolean,
    "data.split_fractions": _split_fractions,
    "data.split_seed": NON_NEGATIVE_INT,
    "data.patient_regex": _regular_expression,
    "data.dicom_group_by": _one_of(dicom_files.GROUP_BY),
    "model.classifier": _one_of(sorted(registry)),
    "model.vit_preset": _one_of(sorted(VIT_PRESETS)),
    "model.icfdnet_preset": _one_of(sorted(ICFDNET_PRESETS)),
    "model.feature_channels": POSITIVE_INT,
    "model.use_decouplers": _boolean,
    "model.color_space": _one_of(color.COLOR_SPACES),
    "model.squeezenet_batch_norm": _boolean,
    "model.icfdnet_norm": _one_of(NORMS),
    "model.standardize_features": _boolean,
    "model.detach_features": _boolean,
    "model.init_from": lambda value: "" if isinstance(value, str) and (not value or os.path.isfile(value)) else (
        "'' or the path of an existing torchvision .pth/.npz file"),
    "adv.enabled": _boolean,
    "adv.calibration": _one_of(("adaptive", "fixed")),
    "adv.epsilon": _number(0, 1, low_open=True),
    "adv.beta": NON_NEGATIVE,
    "adv.sigma": NON_NEGATIVE,
    "adv.mu": NON_NEGATIVE,
    "adv.num_steps": POSITIVE_INT,
    "adv.step_size": _number(0, 1, low_open=True),
    "adv.warmup_epochs": NON_NEGATIVE_INT,
    "adv.start_epoch": NON_NEGATIVE_INT,
    "adv.through_decouplers": _boolean,
    "adv.attack_space": _one_of(ATTACK_SPACES),
    "adv.random_start": _one_of(RANDOM_STARTS),
    "adv.eval_epsilon": UNIT,
    "adv.eval_steps": NON_NEGATIVE_INT,
    "adv.eval_step_size": UNIT,
    "adv.eval_through_decouplers": _boolean,
    "adv.strong_pgd_steps": NON_NEGATIVE_INT,
    "adv.strong_steps": POSITIVE_INT,
    "adv.strong_restarts": POSITIVE_INT,
    "adv.strong_targets": NON_NEGATIVE_INT,
    "adv.strong_sanity_epsilon": _number(0, 1, low_open=True),
    "adv.strong_sanity_examples": POSITIVE_INT,
    "adv.strong_sanity_max_accuracy": _number(0, 100),
    "loss.l1": NON_NEGATIVE,
    "loss.l2": NON_NEGATIVE,
    "loss.l3": _number(0, low_open=True),
    "loss.charbonnier_xi": _number(0, low_open=True),
    "optim.name": _one_of(("adamw", "sgd")),
    "optim.learning_rate": _number(0, low_open=True),
    "optim.schedule": _one_of(("cosine", "constant")),
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.momentum": _number(0, 1, high_open=True),
    "optim.grad_clip_norm": NON_NEGATIVE,
    "train.num_epochs": POSITIVE_INT,
    "train.early_stopping_patience": NON_NEGATIVE_INT,
    "train.per_device_batch_size": POSITIVE_INT,
    "train.eval_batch_size": POSITIVE_INT,
    "train.log_every_steps": POSITIVE_INT,
    "train.checkpoint_every_epochs": POSITIVE_INT,
    "train.keep_checkpoints": POSITIVE_INT,
    "train.weight_averaging": _one_of(weight_averaging.AVERAGING_MODES),
    "train.ema_decay": _number(0, 1, high_open=True),
    "train.fawa_threshold": UNIT,
    "train.validate_robust": _boolean,
    "train.best_metric": _one_of(BEST_METRICS),
    "train.async_checkpointing": _boolean,
    "train.resume_with_changes": _boolean,
    "train.plot_every_epochs": NON_NEGATIVE_INT,
    "train.num_grid_examples": NON_NEGATIVE_INT,
    "train.compute_dtype": _one_of(COMPUTE_DTYPES),
    "eval.temperature_scaling": _boolean,
}


def _lookup(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError with one line (``config.KEY=VALUE: expected ...``) on the first bad setting."""
    for key, check in CHECKS.items():
        value = _lookup(config, key)
        if value is _MISSING:
            continue
        problem = check(value)
        if problem:
            raise ValueError(f"config.{key}={value!r}: expected {problem}")
    names = tuple(config.data.class_names)
    from_folders = not names and config.data.name == "class_folders"  # () takes the class folders' names
    if not from_folders and (len(names) < 2 or len(set(names)) != len(names)
                             or not all(isinstance(n, str) and n for n in names)):
        raise ValueError(f"config.data.class_names={names!r}: expected two or more distinct, non-empty names"
                         " (or () with data.name='class_folders' to take the class folders' names)")
    init_from = config.model.get("init_from", "")
    if init_from and config.model.classifier not in pretrained.SUPPORTED:
        raise ValueError(f"config.model.init_from={init_from!r}: classifier {config.model.classifier!r} has no "
                         f"torchvision counterpart; expected one of {pretrained.SUPPORTED}")
    if init_from and config.model.classifier == "squeezenet1_1" and config.model.get("squeezenet_batch_norm"):
        raise ValueError(f"config.model.init_from={init_from!r}: torchvision's SqueezeNet has no BatchNorm; "
                         "set config.model.squeezenet_batch_norm=False")
    if config.adv.get("attack_space", "image") == "classifier_input" and config.adv.through_decouplers:
        raise ValueError("config.adv.attack_space='classifier_input' perturbs x_c after the decouplers: "
                         "expected config.adv.through_decouplers=False")
    robust_needed = config.train.weight_averaging == "fawa" or str(config.train.best_metric).startswith("robust_")
    if robust_needed and not config.train.validate_robust:
        raise ValueError(
            f"config.train.weight_averaging={config.train.weight_averaging!r} / best_metric="
            f"{config.train.best_metric!r} need robust validation: set config.train.validate_robust=True")
