"""Default config: the main job on the embedded synthetic B-mode data set, sized for a 2-core CPU.

Launch (this is what `make demo` runs):

    python launch/train.py --config=configs/default.py --workdir=workdir/demo

Override any key from the command line, e.g. `--config.model.classifier=resnet18`.
Defaults the paper does not state name their source (TRADES: Zhang et al. 2019; CFA: Wei et al. 2023).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # Seeds init, data order, augmentation and the attack's random start.

    config.data = data = ml_collections.ConfigDict()
    data.name = "synthetic_fatty_liver"  # One of: synthetic_fatty_liver, class_folders, byra_liver, medmnist_npz.
    data.data_dir = ""  # Where prepared TFDS data sets live; "" means WORKDIR/../tfds_data (shared by sibling runs).
    data.image_size = 64  # Side of the square images fed to the model (pixels).
    data.channels = 1  # 1 for grayscale B-mode, 3 for RGB screenshots.
    # Class order = label index. class_folders: () takes the class folders' names, sorted (printed).
    data.class_names = ("normal", "mild", "moderate", "severe")
    data.num_examples = 1056  # synthetic only: images in train+validation+test (4x the paper's 264-image test split).
    # synthetic only: 2 is the physical B-mode simulator (flax_fld/data/datasets/bmode_physics.py), 1 the
    # earlier procedural one whose grade global image statistics read (kept for comparison).
    data.simulator_version = 2
    # synthetic version 2 only: whose scanners image the patients. A: 2-3.5 MHz, TGC presets 0.5/0.6
    # dB/cm/MHz; B: 3.5-5 MHz, presets 0.4/0.7 (the scanner-shift test: launch/eval.py --shift); all: both.
    data.simulator_site = "A"
    # class_folders: root/<class>/images (the project splits them) or root/{train,validation,test}/<class>/images
    # (your split, used as it is); byra_liver/medmnist_npz: the file path.
    data.root = ""
    # class_folders, root/<class>/ layout: shares of every class's images in train/validation/test (each > 0,
    # sum 1) and the seed of that split; the assignment is written to split_assignment.csv.
    data.split_fractions = (0.7, 0.15, 0.15)
    data.split_seed = 0
    # class_folders: regular expression on an image's file name whose first group (or whole match) is its
    # patient id, e.g. '^(P\d+)_' for P017_frame03.png; every patient's frames then go to one split. "": none.
    data.patient_regex = ""
    # class_folders, DICOM files (.dcm): every frame is an image and all go to the file's split; this keeps
    # all files of one patient | study (PatientID | StudyInstanceUID, stored hashed) in one split, or each
    # file on its own (file). data.patient_regex groups the other images.
    data.dicom_group_by = "patient"
    data.augment = True  # Train-time flip / shift / gain jitter (never a vertical flip: depth is physical).

    config.model = model = ml_collections.ConfigDict()
    model.classifier = "squeezenet1_1"  # squeezenet1_1 | resnet18 | cbam_resnet18 | se_resnet18 | vit (Table 1).
    model.vit_preset = "tiny"  # vit only: tiny | deit_tiny.
    model.icfdnet_preset = "cpu"  # tiny | cpu | paper: widths/depth of both decouplers.
    model.feature_channels = 4  # Channels of each decoupled feature map concatenated into x_c.
    model.use_decouplers = True  # False: the baseline of Table 2 (classifier sees the color-transformed image only).
    model.color_space = "ycbcr"  # gray | ycbcr | hsv | lab: the color transform Y_c of Algorithm 1.
    # squeezenet1_1 only: BatchNorm after each convolution (not in torchvision). Without it the network sat
    # at chance for 6 of 10 epochs on real digit scans and never left it on users' photographs.
    model.squeezenet_batch_norm = True
    # batch | group: normalization inside IC1/IC2. group has no batch statistics, so the features the
    # classifier trains on (train mode) and is evaluated and attacked on (eval mode) are the same; it is
    # also faster than BatchNorm in the decouplers on CPU.
    model.icfdnet_norm = "group"
    model.standardize_features = True  # Standardise Feat1/Feat2 per image and channel before concatenation.
    model.detach_features = False  # True: the classifier's loss does not update IC1/IC2 (only Ls, Lc do).
    # Path of a torchvision ImageNet state_dict (.pth, or .npz) to start the classifier from (resnet18 family,
    # or squeezenet1_1 with squeezenet_batch_norm=False); "" trains from scratch (flax_fld/models/pretrained.py).
    model.init_from = ""

    config.adv = adv = ml_collections.ConfigDict()
    adv.enabled = True  # Adversarial training on/off (the "+AT" column of Table 2).
    adv.calibration = "adaptive"  # adaptive: Eq. 1/2 per class (the paper); fixed: plain TRADES.
    adv.epsilon = 8 / 255  # Initial L-inf radius in [0,1] pixel units (TRADES/CFA CIFAR default).
    # TRADES regularization strength. TRADES' default 6 (configs/paper.py) puts >= 75% of every example's
    # weight on the KL term (Eq. 2 at any accuracy); in the CPU demo's 10 epochs that kept the classifier
    # at chance, so the demo uses 1 (beta_i between 0.33 and 0.6).
    adv.beta = 1.0
    adv.sigma = 0.5  # Eq. 1 floor on epsilon_i (CFA's lambda default 0.5).
    adv.mu = 0.5  # Eq. 2 floor on beta_i (CFA default 0.5).
    adv.num_steps = 3  # Inner-max steps (TRADES uses 10; 3 keeps the CPU demo within its time budget).
    adv.step_size = 2 / 255  # Inner-max step, scaled per class by epsilon_i / epsilon (TRADES 2/255).
    adv.warmup_epochs = 1  # Epochs with uniform epsilon/beta before calibration starts (CFA's warm-up).
    # Epochs of clean training (beta_i = 0) before the TRADES term of Eq. 3 is switched on: adversarial
    # training from the first step cost 4 points of test average on the benchmark.
    adv.start_epoch = 3
    adv.through_decouplers = False  # True: perturb x before IC1/IC2 (end-to-end); False: Fig. 2, features held fixed.
    # Where x' lives: image (x' is an image; see through_decouplers) | classifier_input (every channel of
    # x_c = cat(Feat1, Feat2, Y_c) moves inside the ball, Algorithm 1's max KL(f(x_c), f(x')) read literally).
    adv.attack_space = "image"
    # Start of the inner max: small (TRADES: x + 0.001 N(0,1)) | uniform (anywhere in the ball; with
    # num_steps=1 and step_size ~1.25 epsilon this is fast adversarial training, Wong et al. 2020).
    adv.random_start = "small"
    adv.eval_epsilon = 8 / 255  # PGD-CE evaluation radius.
    adv.eval_steps = 5  # PGD-CE evaluation steps (PGD-20 in paper.py; end-to-end PGD costs ~2.5 s/step/64 images on CPU).
    adv.eval_step_size = 2 / 255  # PGD-CE evaluation step.
    # Robust evaluation threat model: True perturbs the input image seen by IC1, IC2 and the colour transform
    # (an attacker only controls the image); False holds the decoupled features fixed as in training (Fig. 2).
    adv.eval_through_decouplers = True
    # launch/eval.py --robust=strong (flax_fld/robustness/robust_eval.py): per-example worst case of PGD-CE and an
    # APGD-style attack (flax_fld/robustness/strong_attack.py) at adv.eval_epsilon, under the threat model above.
    adv.strong_pgd_steps = 20  # PGD-CE steps of that evaluation (PGD-20, step adv.eval_step_size).
    # Steps of each strong-attack run (APGD uses 100; with 20 the CPU demo's test split takes ~30 minutes).
    adv.strong_steps = 20
    adv.strong_restarts = 1  # Random restarts of each untargeted loss (CE and DLR), from random points of the ball.
    adv.strong_targets = 3  # Targeted-DLR runs, one per most likely wrong class (at most classes - 1).
    adv.strong_sanity_epsilon = 64 / 255  # Radius of the check that a working attack breaks nearly every image.
    adv.strong_sanity_examples = 64  # Test examples (the first evaluation batches) that this check attacks.
    adv.strong_sanity_max_accuracy = 10.0  # Percent: more strong-attack accuracy at that radius is a warning.

    config.loss = loss = ml_collections.ConfigDict()
    loss.l1 = 1.0  # lambda_1: weight of Lc, IC2's reconstruction (Eq. 4).
    loss.l2 = 1.0  # lambda_2: weight of Ls, IC1's BCE class head (Eq. 4).
    loss.l3 = 1.0  # lambda_3: weight of Lat, the class-adaptive TRADES loss (Eq. 4).
    loss.charbonnier_xi = 1e-3  # xi of Eq. 5.

    config.optim = optim = ml_collections.ConfigDict()
    optim.name = "adamw"  # adamw | sgd.
    optim.learning_rate = 2e-3  # Peak learning rate.
    optim.schedule = "cosine"  # cosine | constant.
    optim.warmup_epochs = 1  # Linear warm-up epochs before the schedule.
    optim.weight_decay = 1e-4  # Decoupled weight decay (adamw) or L2 (sgd).
    optim.momentum = 0.9  # sgd only.
    optim.grad_clip_norm = 5.0  # Global-norm clipping; 0 disables.

    config.train = train = ml_collections.ConfigDict()
    train.num_epochs = 15  # Passes over the training split (~25-35 s each with the attack on a 2-core CPU).
    # Stop when the validation figure of best_metric has not improved for this many epochs (0: never); the
    # learning-rate schedule still spans num_epochs, so set num_epochs as the longest run you would accept.
    train.early_stopping_patience = 0
    train.per_device_batch_size = 32  # Batch per device; global batch = this x device count.
    train.eval_batch_size = 64  # Per-device batch for evaluation.
    train.log_every_steps = 10  # Console/TensorBoard logging period.
    train.checkpoint_every_epochs = 1  # Periodic checkpoint period.
    train.keep_checkpoints = 3  # Periodic checkpoints kept (the best one is kept separately).
    train.weight_averaging = "none"  # none | ema | fawa (CFA's fairness-aware weight averaging).
    train.ema_decay = 0.999  # ema/fawa decay.
    train.fawa_threshold = 0.2  # fawa: average only when the worst class's validation robust accuracy >= this.
    # Also run PGD-CE on the validation split every epoch (robust curves, fawa, robust_* best_metric); off for
    # the CPU demo, where it would double the run time (the final test report is always robust too).
    train.validate_robust = False
    # Which validation figure picks WORKDIR/checkpoints_best: average | balanced_accuracy | worst_class
    # (clean, the paper's balance goal) | robust_average | robust_worst_class. Ties go to the higher
    # balanced accuracy, then average (reporting.selection_key). worst_class, as in configs/ablation.py, so
    # that the demo is the ablation's +ICFDNet+AT run for seed 0.
    train.best_metric = "worst_class"
    # Re-running a workdir resumes it; a run-defining setting that differs from WORKDIR/config.json stops the
    # run with the list of differences unless this is True (checkpointing.RESUMABLE_KEYS may always change).
    train.resume_with_changes = False
    train.async_checkpointing = True  # Write checkpoints in a background thread while training continues.
    train.plot_every_epochs = 1  # Redraw WORKDIR/plots/class_*.png every N epochs (0: only at the end).
    train.num_grid_examples = 8  # Test images shown in WORKDIR/plots/decoupling_grid.png.
    # float32 | bfloat16: what the training step's convolutions and matrix products compute in. For
    # accelerators (GPU tensor cores, TPU); on a CPU bfloat16 is usually slower. Parameters, optimizer state,
    # normalisation, losses, the image and x' stay float32 either way, checkpoints are identical in structure,
    # and evaluation, robust evaluation and prediction always run in float32.
    train.compute_dtype = "float32"

    # The test report (eval.json 'calibration', WORKDIR/plots/reliability_diagram.png; flax_fld/evaluation/reliability.py).
    config.eval = eval_config = ml_collections.ConfigDict()
    # Also fit a softmax temperature on the validation split (NLL) and report the test ECE after it beside
    # the ECE before; accuracy never changes (argmax is invariant). False: the ECE before only.
    eval_config.temperature_scaling = True
    # Also evaluate the test split under scanner shift (eval.json 'shift'; flax_fld/robustness/shift_eval.py):
    # the other site's scanners (simulator version 2) and ten ultrasound corruptions at five severities.
    # About a minute at 64 px on a 2-core CPU; launch/eval.py --shift adds it to a finished run.
    eval_config.shift = False
    return config
