"""Config validation (flax_fld/training/config_validation.py) and one-line errors for bad --config overrides."""

import json
import os
import subprocess
import sys

import pytest

from flax_fld.runtime.config_files import load_config
from flax_fld.training import config_validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(name="default"):
    return load_config(name)


@pytest.mark.parametrize("name", ["default", "tiny", "paper", "ablation", "robust"])
def test_shipped_configs_are_valid(name):
    shipped = config(name)
    # Validation skips keys an older config lacks, so a shipped config missing a key would pass unchecked.
    missing = [key for key in config_validation.CHECKS
               if config_validation._lookup(shipped, key) is config_validation._MISSING]
    assert missing == [], f"configs/{name}.py lacks {missing}"
    config_validation.validate_config(shipped)


@pytest.mark.parametrize("key, value, message", [
    ("adv.epsilon", -0.1, r"config.adv.epsilon=-0.1: expected a finite number in \(0, 1\]"),
    ("adv.beta", float("nan"), r"config.adv.beta=nan: expected a finite number in \[0, inf\)"),
    ("adv.num_steps", 0, r"config.adv.num_steps=0: expected an integer in \[1, inf\)"),
    ("adv.start_epoch", -1, r"config.adv.start_epoch=-1: expected an integer in \[0, inf\)"),
    ("optim.learning_rate", float("inf"), "config.optim.learning_rate=inf"),
    ("optim.momentum", 1.0, r"config.optim.momentum=1.0: expected a finite number in \[0, 1\)"),
    ("loss.l3", 0.0, "config.loss.l3=0.0"),
    ("data.image_size", 16, r"config.data.image_size=16: expected an integer in \[32, inf\)"),
    ("data.channels", 2, r"config.data.channels=2: expected one of \(1, 3\)"),
    ("model.classifier", "resnet19", "config.model.classifier='resnet19': expected one of"),
    ("model.icfdnet_norm", "layer", "config.model.icfdnet_norm='layer'"),
    ("train.best_metric", "f1", "config.train.best_metric='f1'"),
    ("train.ema_decay", 1.0, "config.train.ema_decay=1.0"),
])
def test_bad_values_are_refused_with_key_value_and_range(key, value, message):
    bad = config()
    section, field = key.split(".")
    with bad.unlocked():
        bad[section][field] = value
    with pytest.raises(ValueError, match=message):
        config_validation.validate_config(bad)


def test_class_names_and_robust_consistency():
    bad = config()
    bad.data.class_names = ("normal", "normal")
    with pytest.raises(ValueError, match="distinct"):
        config_validation.validate_config(bad)
    bad = config()
    bad.train.weight_averaging = "fawa"
    with pytest.raises(ValueError, match="validate_robust=True"):
        config_validation.validate_config(bad)


def test_a_key_missing_from_an_older_config_is_skipped_and_the_others_still_checked():
    older = config()
    del older.adv["start_epoch"]
    config_validation.validate_config(older)  # an older run's config.json still resumes
    older.adv.epsilon = -0.1
    with pytest.raises(ValueError, match=r"config.adv.epsilon=-0.1"):
        config_validation.validate_config(older)


@pytest.mark.parametrize("override, expected", [
    ("--config.adv.epsilonn=0.1", 'bad config override (\'epsilonn\' Did you mean "epsilon" instead of "epsilonn"?)'),
    ("--config.adv.epsilon=-0.1", "error: config.adv.epsilon=-0.1: expected a finite number in (0, 1]"),
])
def test_launch_train_refuses_bad_overrides_in_one_line(tmp_path, override, expected):
    result = subprocess.run(
        [sys.executable, "launch/train.py", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", override],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert expected in last and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "tfds_data")  # refused before any data preparation


def test_resume_with_other_settings_lists_the_changed_keys(tmp_path):
    from flax_fld.training import checkpointing, train

    run = config("tiny")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(run.to_json_best_effort())
    assert checkpointing.config_changes(str(workdir), run) == []  # no checkpoint yet: nothing to resume
    (workdir / "checkpoints" / "12").mkdir(parents=True)
    changed = config("tiny")
    changed.data.image_size = 48
    changed.model.classifier = "resnet18"
    changed.train.num_epochs = 9  # may change on a resume
    assert checkpointing.config_changes(str(workdir), changed) == [
        "data.image_size: 32 -> 48", "model.classifier: 'squeezenet1_1' -> 'resnet18'"]
    with pytest.raises(ValueError, match=r"other settings \(data.image_size: 32 -> 48; model.classifier"):
        train.train_and_evaluate(changed, str(workdir))
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json"]  # nothing written, nothing prepared


def test_a_run_from_before_the_split_keys_resumes_only_with_their_defaults(tmp_path):
    from flax_fld.training import checkpointing

    old = json.loads(config("tiny").to_json_best_effort())
    for key in ("split_fractions", "split_seed", "patient_regex"):
        del old["data"][key]
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "3").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(old))
    assert checkpointing.config_changes(str(workdir), config("tiny")) == []
    other = config("tiny")
    other.data.split_seed = 5
    assert checkpointing.config_changes(str(workdir), other) == ["data.split_seed: '<unset>' -> 5"]
