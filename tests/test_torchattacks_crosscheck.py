"""Our worst-case robust accuracy against attacks nobody here wrote: torchattacks' APGD (CE) and APGD-T (DLR).

The PyTorch twin (benchmarks/) holds the same weights as a small model (Table 2's baseline: colour transform +
SqueezeNet; the decouplers would only make the CPU test slower, the attack code is the same). torchattacks
must not find a per-class robust accuracy more than 1 point below ours on the same images. The images are labelled with the model's own clean predictions and the radius
is small, and the head's bias is centred on these images' mean logits so that the untrained network predicts
several classes: robust accuracy is then neither 0 nor 100, and the comparison can fail.
"""

import os
import sys

import jax
import numpy as np
import pytest

from flax_fld.robustness import robust_eval
from flax_fld.runtime.config_files import load_config
from flax_fld.models import fld
from torch_helpers import torch_or_skip, torchvision_models

torch = torch_or_skip()
torchvision_models()  # torchattacks imports torchvision; see torch_helpers for why this goes first
torchattacks = pytest.importorskip("torchattacks", reason="pip install torchattacks==3.5.1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # benchmarks/ is a top-level folder, not part of the installed package
    sys.path.insert(0, REPO)
from benchmarks import flax_to_torch, torch_fld  # noqa: E402

NUM_CLASSES, SIZE, COUNT, EPSILON = 4, 32, 48, 0.25 / 255
TOLERANCE = 1.0  # percentage points


class _TwinLogits(torch.nn.Module):
    """The twin as torchattacks wants a model: NCHW images in [0, 1] -> logits, eval mode."""

    def __init__(self, twin):
        super().__init__()
        self.twin = twin

    def forward(self, x):
        return self.twin(x, train=False)


def _models(images: np.ndarray):
    config = load_config("tiny")
    config.data.image_size = SIZE
    config.model.use_decouplers = False
    model = fld.create_fld_model(config.model, NUM_CLASSES, image_channels=1)
    variables = fld.init_variables(model, jax.random.key(3), (SIZE, SIZE, 1))
    logits = fld.forward(model, variables, images, train=False)[0]
    head = variables["params"]["classifier"]["classifier_conv"]
    head["bias"] = head["bias"] - jax.numpy.mean(logits, axis=0)
    twin = torch_fld.build_fld_model(config.model, NUM_CLASSES, 1, (SIZE, SIZE), dropout_rate=0.0)
    flax_to_torch.load_flax_variables(twin, variables)
    return model, variables, _TwinLogits(twin).eval()


def _per_class(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.array([100.0 * correct[labels == c].mean() if np.any(labels == c) else np.nan
                     for c in range(NUM_CLASSES)])


@pytest.mark.slow  # minutes: 100-step APGD runs on both sides
def test_torchattacks_apgd_finds_no_more_than_our_worst_case():
    images = np.random.default_rng(0).uniform(0.2, 0.8, (COUNT, SIZE, SIZE, 1)).astype(np.float32)
    model, variables, twin = _models(images)
    logits_fn = jax.jit(lambda x: fld.forward(model, variables, x, train=False)[0])
    labels = np.asarray(jax.numpy.argmax(logits_fn(images), axis=-1))
    torch_images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():  # the twin agrees with the model on the clean images (tests/test_torch_twin.py)
        assert (twin(torch_images).argmax(-1).numpy() == labels).mean() >= 0.98

    ours = robust_eval.robust_accuracy_per_class(
        logits_fn, images, labels, EPSILON, num_classes=NUM_CLASSES,
        settings=robust_eval.StrongSettings(pgd_steps=20, steps=20, restarts=1, targets=3), batch_size=COUNT)

    torch_labels = torch.from_numpy(labels.astype(np.int64))
    survived = np.ones(COUNT, bool)
    for attack in (torchattacks.APGD(twin, norm="Linf", eps=EPSILON, steps=20, n_restarts=1, loss="ce", seed=0),
                   torchattacks.APGDT(twin, norm="Linf", eps=EPSILON, steps=20, n_restarts=1, n_classes=NUM_CLASSES,
                                      seed=0)):
        adversarial = attack(torch_images, torch_labels)
        assert float((adversarial - torch_images).abs().max().detach()) <= EPSILON + 1e-6
        with torch.no_grad():
            survived &= twin(adversarial).argmax(-1).numpy() == labels
    theirs = _per_class(survived, labels)

    worst = np.asarray(ours["worst"])
    present = ~np.isnan(theirs)
    assert present.sum() >= 3, f"the centred model predicts fewer than three classes: {labels}"
    # Not vacuous: the attacks break some images but not all of them.
    assert 0.0 < np.nanmean(worst) < 100.0, ours
    assert np.all(theirs[present] >= worst[present] - TOLERANCE), {"ours (worst case)": worst, "torchattacks": theirs}
