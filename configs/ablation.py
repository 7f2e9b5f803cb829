"""Table 2 of the paper: baseline, +ICFDNet and +ICFDNet+AT for each backbone, on the CPU-sized default.

  python launch/ablation.py --config=configs/ablation.py --workdir=workdir/ablation

Each run is configs/default.py with the row's switches (see launch/ablation.py); for a paper-scale ablation
start from configs/paper.py values via --config.* overrides.
"""

import importlib.util
import os

import ml_collections


def _default_config() -> ml_collections.ConfigDict:
    # Loaded by path: config files are run by config_flags as scripts, not imported from a package.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
    spec = importlib.util.spec_from_file_location("flax_fld_default_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    config = _default_config()
    config.ablation = ablation = ml_collections.ConfigDict()
    # The four CNN backbones of Table 2 (ViT appears in Table 1 only).
    ablation.backbones = ("resnet18", "cbam_resnet18", "se_resnet18", "squeezenet1_1")
    ablation.seeds = 3  # Seeds 0, 1, 2: each cell is mean +- std (the paper reports one run).
    ablation.rows = ("baseline", "icfdnet", "icfdnet_at")  # Table 2's three rows per backbone.
    config.train.validate_robust = False  # The ablation reports clean accuracy; robust validation only costs time.
    config.train.best_metric = "worst_class"  # Same selection rule for every row.
    return config
