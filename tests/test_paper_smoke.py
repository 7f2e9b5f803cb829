"""configs/paper.py end to end at toy size: the 'paper' ICFDNet, FAWA, robust validation and the test report
under both threat models, for two epochs on a few 32 px images (K = 1, PGD-1; compile time does not depend
on either, both are fori_loops). `make paper-smoke` is the same at 224 px with the config's own K and PGD-20.

Also the compile discipline a paper-scale run relies on: every program compiles before or in the first epoch
(the training step in a background thread, before the first step; end_epoch and the evaluation programs in
another, beside the first epoch's steps), and the second epoch compiles nothing.
"""

import json
import os

import pytest

from flax_fld.runtime.config_files import load_config
from flax_fld.training import compile_log, epoch_end, train


def smoke_config():
    config = load_config("paper")
    assert config.model.icfdnet_preset == "paper" and config.train.weight_averaging == "fawa"
    assert config.train.validate_robust
    config.data.image_size = 32
    config.data.num_examples = 24  # 13 train, 4 validation, 7 test images
    config.adv.num_steps = 1
    config.adv.eval_steps = 1
    config.adv.start_epoch = 1  # the TRADES term switches on in the second epoch, so both phases run
    config.train.num_epochs = 2
    config.train.per_device_batch_size = 2  # global 4 on the 2 forced test devices: 3 steps per epoch
    config.train.eval_batch_size = 2
    config.train.log_every_steps = 1
    config.train.async_checkpointing = False
    config.train.plot_every_epochs = 1
    config.train.num_grid_examples = 0  # the decoupling grid's forward is one more program (make paper-smoke draws it)
    return config


def _counting(monkeypatch, module, name, counts):
    original = getattr(module, name)

    def counted(*args, **kwargs):
        before = len(compile_log.process_log().programs)
        result = original(*args, **kwargs)
        # The main thread's: the background thread may still be compiling the test report's programs.
        counts.append((name, [p.name for p in compile_log.process_log().programs[before:]
                              if p.thread == "MainThread"]))
        return result

    monkeypatch.setattr(module, name, counted)


@pytest.mark.slow
def test_paper_config_runs_two_epochs_with_every_feature_and_compiles_each_program_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAX_FLD_AHEAD_OF_TIME", "1")  # what an accelerator does by default; off on a CPU
    counts = []
    _counting(monkeypatch, train, "train_epoch", counts)
    _counting(monkeypatch, epoch_end, "finish_epoch", counts)
    report = train.train_and_evaluate(smoke_config(), str(tmp_path / "run"))

    # Epoch 1: the step compiled before its first call; end_epoch and validation in the background beside it.
    # Epoch 2: nothing new (no Python scalar or shape changes between epochs).
    assert [name for name, _ in counts] == ["train_epoch", "finish_epoch"] * 2
    assert counts[0][1] == [], f"the first epoch's steps compiled {counts[0][1]}"
    assert "jit(_fun)" not in counts[1][1], f"the first validation compiled {counts[1][1]}"  # compiled ahead
    assert counts[2][1] == [] and counts[3][1] == [], f"the second epoch compiled {counts[2][1] + counts[3][1]}"

    robust = report["robust"]
    assert any(name.endswith("fixed-features") for name in robust) and len(robust) == 2  # both threat models
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8")]
    epochs = [record for record in records if record["kind"] == "epoch"]
    assert len(epochs) == 2 and all("val_robust_average" in record and "fawa_averaging" in record
                                    for record in epochs)
    for name in ("eval.json", "config.json", os.path.join("checkpoints_best")):
        assert os.path.exists(tmp_path / "run" / name), name
