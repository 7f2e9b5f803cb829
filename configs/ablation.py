"""Table 2 of the paper: baseline, +ICFDNet and +ICFDNet+AT for each backbone, on the CPU-sized default.

  python launch/ablation.py --config=configs/ablation.py --workdir=workdir/ablation

Each run is configs/default.py with the row's switches (see flax_fld/runs/ablation.py); for a paper-scale ablation
start from configs/paper.py values via --config.* overrides.
"""

import ml_collections

from flax_fld.config_files import load_config


def get_config() -> ml_collections.ConfigDict:
    config = load_config("default")
    config.ablation = ablation = ml_collections.ConfigDict()
    # The four CNN backbones of Table 2 (ViT appears in Table 1 only).
    ablation.backbones = ("resnet18", "cbam_resnet18", "se_resnet18", "squeezenet1_1")
    ablation.seeds = 3  # Seeds 0, 1, 2: each cell is mean +- std (the paper reports one run).
    ablation.rows = ("baseline", "icfdnet", "icfdnet_at")  # Table 2's three rows per backbone.
    ablation.linear_floor = True  # First row: logistic regression on the raw pixels (flax_fld.evaluation.linear_probe).
    # Second row: logistic regression on intensity histogram, GLCM and gradient features (flax_fld.evaluation.texture_features).
    ablation.texture_floor = True
    # Simulator version 2 only: logistic regression on the anatomical cues measured with its tissue masks.
    ablation.anatomy_floor = True
    config.train.validate_robust = False  # The ablation reports clean accuracy; robust validation only costs time.
    config.train.best_metric = "worst_class"  # Same selection rule for every row.
    config.eval.shift = True  # Every row also under scanner shift (the table's second part).
    return config
