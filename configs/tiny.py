"""Tiny config for tests and smoke runs: 32 px, a few dozen synthetic images, tiny models, 2 epochs.

  python launch/train.py --config=configs/tiny.py --workdir=/tmp/fld_tiny

Everything not overridden here is configs/default.py (see the comments there).
"""

import ml_collections

from flax_fld.config_files import load_config


def get_config() -> ml_collections.ConfigDict:
    config = load_config("default")
    config.data.image_size = 32  # The smallest size every classifier accepts.
    config.data.num_examples = 96  # 60/15/25 split: ~57 train, ~14 validation, ~25 test images.
    config.model.icfdnet_preset = "tiny"  # Two-stage ICFDNet.
    config.model.feature_channels = 2  # Two channels per decoupled feature map.
    config.adv.num_steps = 2  # Enough to exercise the inner maximisation.
    config.adv.eval_steps = 2  # Same for the PGD-CE evaluation.
    config.optim.warmup_epochs = 0  # No warm-up: learning starts at the first step.
    config.adv.start_epoch = 1  # The TRADES term switches on in the second epoch, so both phases run.
    config.train.num_epochs = 2  # Two epochs: one calibration of epsilon/beta happens in between.
    config.train.per_device_batch_size = 8  # Global batch 16 on the 2 forced test devices.
    config.train.eval_batch_size = 8  # 16 per evaluation step: the test split needs a padded last batch.
    config.train.log_every_steps = 1  # Every step is logged.
    config.train.async_checkpointing = False  # Deterministic file system state for tests.
    config.train.plot_every_epochs = 0  # Plots only at the end.
    config.train.num_grid_examples = 4  # Rows of the decoupling grid.
    return config
