"""The PyTorch twin (benchmarks/) computes what the Flax code computes when it holds the same weights.

test_train_step_matches_flax runs one training step of Algorithm 1 per case on both sides, with the same
weights (random, BatchNorm statistics included), images, labels, per-class epsilon/beta (gathered by label)
and attack start noise (drawn in JAX from the key ``attack.trades_pgd`` uses). Dropout is off on both sides
(rate 0): the step runs in train mode as ``train.train_step`` does (BatchNorm on batch statistics, running
statistics updated), the K = 3-step attack in eval mode.

It runs in float64 on both sides. At 32 px SqueezeNet's and the ResNets' last stages see 1x1 maps, where
train-mode BatchNorm normalises 4 values per channel and amplifies rounding differences up to
1/sqrt(eps) ~ 300x: in float32 the two sides' logits differed by up to 3e-4 (relative) for that reason
alone. In float64 they agree to ~1e-12, so the tolerances below separate a real difference from rounding:
- logits, x_c, Lc, Ls, Lat, L, BatchNorm statistics: |torch - flax| <= 1e-9 * max(1, max |flax|);
- gradients, per parameter leaf: max |torch - flax| <= 1e-7 * max |flax| + 1e-10 (attention key biases
  have an exactly-zero true gradient, softmax being shift-invariant: both sides give ~1e-14 of noise);
- x' after 3 sign steps: a pixel whose ascent gradient is ~0 may step the other way, so up to 1% of pixels
  may differ (by at most 2 steps per iteration); none did in float64. Losses and gradients are compared
  with both sides on the flax x', which keeps such a flip out of them.

The other tests check the pieces (pooling, resize, colour, standardize, classifier_input) in float32, the
weight pairing for every configured model, the optimizer against optax and the benchmark entry points.
Compiling the JAX step programs is most of this file's time on a 2-core CPU (see FAST_COMPILE).
"""

import functools
import math
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: pip install torch==2.13.0 torchvision==0.28.0 (the CPU build of "
                    "torch; unpinned pulls CUDA)")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import optax  # noqa: E402

from flax_fld.method import objective  # noqa: E402
from flax_fld.models import color  # noqa: E402
from flax_fld.training import optimizer  # noqa: E402
from flax_fld.runtime.config_files import load_config  # noqa: E402
from flax_fld.models import fld, get_classifier, icfdnet, registry, squeezenet  # noqa: E402
from flax_fld.models.vit import VIT_PRESETS  # noqa: E402  (flax_fld.models.vit is shadowed by the function)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # benchmarks/ is a top-level folder, not part of the installed package
    sys.path.insert(0, REPO)

from benchmarks import flax_to_torch, torch_fld, torch_layers, torch_models, torch_train  # noqa: E402

BATCH, SIZE, CHANNELS, CLASSES, STEPS = 4, 32, 1, 4, 3
LABELS = np.array([2, 0, 3, 1])
CLASS_EPSILON = np.array([8, 6, 4, 10], np.float32) / 255  # gathered by label: per-example radii
CLASS_BETA = np.array([0.2, 0.5, 0.6, 0.9], np.float32)
VALUE_RTOL, GRAD_RTOL, GRAD_ATOL = 1e-9, 1e-7, 1e-10


def close(actual, expected, rtol: float = VALUE_RTOL) -> None:
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=rtol * max(1.0, np.abs(expected).max()))


def nchw(array) -> torch.Tensor:
    return torch.from_numpy(np.array(np.asarray(array).transpose(0, 3, 1, 2)))


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread for the twin while a test runs (restored after): on a shared 2-core machine torch's
    spinning worker threads oversubscribe it (the fld_vit_end_to_end step: 18.7 s with 2 threads, 0.2 s with 1)."""
    with torch_train.intra_op_threads(1):
        yield


def random_variables(module: nn.Module, shape, rng: np.random.Generator) -> dict:
    """Variables of init's shapes from numpy (no init compile): He-scaled kernels, perturbed norms/statistics."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape), train=False))

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return rng.uniform(0.8, 1.2, leaf.shape).astype(np.float32)
        if name in ("bias", "mean"):
            return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        fan_in = max(1, int(np.prod(leaf.shape[:-1])))
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(fill, abstract)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def fld_variables(model: fld.FLDModel, rng: np.random.Generator) -> dict:
    shapes = {"ic1": (1, SIZE, SIZE, CHANNELS), "ic2": (1, SIZE, SIZE, CHANNELS),
              "classifier": (1, SIZE, SIZE, model.classifier_channels)}
    parts = {name: random_variables(module, shapes[name], rng) for name, module in fld._submodules(model).items()}
    return {collection: {name: part[collection] for name, part in parts.items()}
            for collection in ("params", "batch_stats")}


# ------------------------------------------------------------------------------------------- the step cases

# Each case is one JAX compile, which dominates this file's time, so the networks are kept small: the
# decouplers are the "tiny" preset (IC1 of fld_squeezenet_bn) or a one-level ICFDNet (MINI), the ResNets are
# narrow (and, with attention, one block per stage); the code and every branch (projection shortcuts, SE,
# CBAM, attention pooling) are the same. Across cases both norms, both attack modes, detach/standardize and
# every colour space appear. The ResNets and SqueezeNet without BatchNorm run as the Table 2 baseline (no
# decouplers). Full-size layouts are checked by test_weights_pair_up_for_every_config, the "cpu" preset's
# forward pass by test_cpu_preset_icfdnet_matches_flax.
MINI = dict(widths=(4,), block_depths=(1,), attn_max_tokens=64)  # attention pools 16x16 -> 8x8
CASES = {
    "fld_squeezenet_bn": dict(classifier="squeezenet1_1", batch_norm=True, ic1=("tiny", "batch", {}),
                              ic2=("tiny", "group", MINI), color="ycbcr", standardize=True, detach=False,
                              through=False),
    "fld_vit_end_to_end": dict(classifier="vit", ic1=("tiny", "group", MINI), ic2=("tiny", "batch", MINI),
                               color="gray", standardize=False, detach=True, through=True),
    "resnet18": dict(classifier="resnet18", overrides=dict(width=8), color="hsv"),
    "cbam_resnet18": dict(classifier="cbam_resnet18", overrides=dict(width=16, stage_sizes=(1, 1, 1, 1)), color="lab"),
    "se_resnet18": dict(classifier="se_resnet18", overrides=dict(width=16, stage_sizes=(1, 1, 1, 1)), color="rgb"),
    "squeezenet1_1": dict(classifier="squeezenet1_1", batch_norm=False, color="gray"),
}
FEATURES = 2
# XLA's CPU backend at optimisation level 1 and without LLVM's expensive passes compiles these programs ~3x
# faster (fld_squeezenet_bn: 60-100 s -> 17-28 s on the shared, loaded 2-core machine) and runs them barely
# slower at 32 px: a net win for programs run once. (Level 0 compiles no faster but returned NaN for
# cbam_resnet18's x', which the default and these options do not.)
FAST_COMPILE = {"xla_backend_optimization_level": 1, "xla_llvm_disable_expensive_passes": True}


def build_pair(case: dict) -> tuple[fld.FLDModel, torch_fld.TorchFLD]:
    """The same composite model on both sides, dropout off (IC1 and IC2 may differ in preset and norm)."""
    name, overrides = case["classifier"], dict(case.get("overrides", {}))
    if name == "squeezenet1_1":
        overrides["batch_norm"] = case["batch_norm"]
    if name in ("vit", "squeezenet1_1"):
        overrides["dropout_rate"] = 0.0
    ic1 = ic2 = twin_ic1 = twin_ic2 = None
    if "ic1" in case:
        (preset1, norm1, extra1), (preset2, norm2, extra2) = case["ic1"], case["ic2"]
        ic1 = icfdnet.icfdnet(preset1, features=FEATURES, head="class", num_classes=CLASSES, norm=norm1, **extra1)
        ic2 = icfdnet.icfdnet(preset2, features=FEATURES, head="reconstruct", num_classes=CLASSES, norm=norm2, **extra2)
        twin_ic1 = torch_models.build_icfdnet(preset1, CHANNELS, FEATURES, "class", CLASSES, norm1, **extra1)
        twin_ic2 = torch_models.build_icfdnet(preset2, CHANNELS, FEATURES, "reconstruct", CLASSES, norm2, **extra2)
    model = fld.FLDModel(ic1=ic1, ic2=ic2, classifier=get_classifier(name, CLASSES, **overrides),
                         color_space=case["color"], image_channels=CHANNELS, num_classes=CLASSES,
                         standardize_features=case.get("standardize", False), detach_features=case.get("detach", False))
    batch_norm = overrides.pop("batch_norm", False)
    twin_classifier = torch_models.build_classifier(name, model.classifier_channels, CLASSES, (SIZE, SIZE),
                                                    squeezenet_batch_norm=batch_norm, **overrides)
    twin = torch_fld.TorchFLD(twin_ic1, twin_ic2, twin_classifier, case["color"], CLASSES,
                              case.get("standardize", False), case.get("detach", False))
    return model, twin


def flax_step(model: fld.FLDModel, settings: torch_fld.StepSettings):
    """What ``train.train_step`` computes on one device (``objective.loss_and_gradients``), plus the eval
    logits and x_c the test compares and the attack's start noise (trades_pgd's draw from the same key)."""
    l1, l2, l3 = settings.weights
    config = ml_collections.ConfigDict(dict(
        adv=dict(enabled=settings.adv_enabled, through_decouplers=settings.through_decouplers,
                 step_size=settings.step_size, epsilon=settings.epsilon, num_steps=settings.num_steps),
        loss=dict(l1=l1, l2=l2, l3=l3, charbonnier_xi=settings.charbonnier_xi)))

    def run(variables, images, labels, class_epsilon, class_beta, attack_seed):
        # The key made and the noise drawn in here: outside, each was an (x64) program of its own.
        attack_key = jax.random.key(attack_seed)
        keys = (attack_key, attack_key, attack_key)  # dropout rate 0 on both sides: its keys are never used
        loss, terms, grads, x_adv = objective.loss_and_gradients(
            variables["params"], variables["batch_stats"], images, labels, class_epsilon, class_beta, keys,
            model=model, config=config)
        x_c = fld.classifier_input(model, images, fld.decouple(model, variables, images, train=True)[0])
        # Eval-mode classifier on the train-mode x_c: the eval-mode decouplers are exercised by the
        # end-to-end attack (a whole extra eval forward of IC1/IC2 would add to every compile).
        return grads, dict(loss=loss, lc=terms.lc, ls=terms.ls, lat=terms.lat, x_c=x_c,
                           logits_clean=terms.logits_clean, logits_adv=terms.logits_adv, x_adv=x_adv,
                           batch_stats=terms.batch_stats,
                           logits_eval=fld.classify(model, variables, x_c, train=False)[0],
                           noise=jax.random.normal(attack_key, images.shape, images.dtype))

    return jax.jit(run, compiler_options=FAST_COMPILE)


def assert_trees_close(actual: dict, expected: dict, rtol: float, atol: float, what: str) -> None:
    flat_actual, flat_expected = flax_to_torch.flatten(actual), flax_to_torch.flatten(expected)
    assert flat_actual.keys() == flat_expected.keys()
    if not flat_expected:
        return
    worst = max(((np.abs(flat_actual[k] - np.asarray(v)).max() - rtol * np.abs(np.asarray(v)).max(), k)
                 for k, v in flat_expected.items()))
    assert worst[0] <= atol, f"{what}: {'/'.join(worst[1])} differs by {worst[0]:.3g} beyond rtol={rtol}"


# The three ResNet-family cases take one to two minutes each (compile): `make test-slow` runs them, with
# CI; SqueezeNet with and without the decouplers and ViT end to end stay in `make test`.
SLOW_CASES = ("resnet18", "cbam_resnet18", "se_resnet18")


@pytest.mark.parametrize("case_name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_CASES else name
                                       for name in CASES])
def test_train_step_matches_flax(case_name):
    case = CASES[case_name]
    rng = np.random.default_rng(sorted(CASES).index(case_name))
    model, twin = build_pair(case)
    variables = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), fld_variables(model, rng))
    twin.double()
    # step_i = eps_i / 2: within 3 steps the projection onto each example's ball is active, as is the clip to
    # [0, 1] on the black rows.
    settings = torch_fld.StepSettings(step_size=4 / 255, num_steps=STEPS, through_decouplers=case.get("through", False),
                                      weights=(1.0, 0.5, 2.0))
    images = rng.uniform(0.0, 1.0, (BATCH, SIZE, SIZE, CHANNELS))
    images[:, :4] = 0.0  # exactly black rows, as B-mode scans have: projection into [0, 1] is active there
    epsilon, beta = CLASS_EPSILON.astype(np.float64), CLASS_BETA.astype(np.float64)
    with jax.enable_x64(True):
        grads, aux = flax_step(model, settings)(variables, images, LABELS, epsilon, beta, 7)
        grads, aux = jax.tree.map(np.asarray, (grads, aux))
    noise = nchw(aux["noise"])  # trades_pgd's start: x + 0.001 N(0, 1)
    x, labels = nchw(images), torch.from_numpy(LABELS)
    epsilon, beta = torch.from_numpy(epsilon), torch.from_numpy(beta)

    # 1. Eval-mode logits and the attack's x' (the twin runs its own K-step TRADES inner max).
    flax_to_torch.load_flax_variables(twin, variables)
    with torch.no_grad(), torch_layers.frozen_batch_stats(twin):
        x_c = twin.classifier_input(x, twin.decouple(x, train=True))
        close(nhwc(x_c), aux["x_c"])
        close(twin.classify(x_c, train=False), aux["logits_eval"])
    x_adv = nhwc(torch_fld.fld_loss(twin, x, labels, epsilon, beta, settings, noise=noise).x_adv)
    difference = np.abs(x_adv - aux["x_adv"])
    assert np.mean(difference > 1e-9) <= 0.01, f"x' differs in {np.mean(difference > 1e-9):.2%} of pixels"
    assert difference.max() <= 2 * STEPS * settings.step_size * CLASS_EPSILON.max() / settings.epsilon + 1e-9
    radius = CLASS_EPSILON[LABELS][:, None, None, None]
    assert np.all(np.abs(x_adv - images) <= radius + 1e-9)
    assert np.mean(np.abs(aux["x_adv"] - images) > radius - 1e-9) > 0.2  # the ball's boundary was reached

    # 2. Losses, train-mode logits, gradients and BatchNorm statistics on the same x', from the same weights.
    flax_to_torch.load_flax_variables(twin, variables)
    out = torch_fld.fld_loss(twin, x, labels, epsilon, beta, settings, x_adv=nchw(aux["x_adv"]))
    for name in ("loss", "lc", "ls", "lat", "logits_clean", "logits_adv"):
        close(getattr(out, name).detach(), aux[name])
    if "ic1" not in case:
        assert float(out.lc) == float(out.ls) == 0.0
    out.loss.backward()
    twin_grads = flax_to_torch.twin_to_flax(twin, variables, grads=True)
    assert_trees_close(twin_grads, grads, GRAD_RTOL, GRAD_ATOL, "gradients")
    stats = flax_to_torch.twin_to_flax(twin, variables, "batch_stats")
    assert_trees_close(stats, aux["batch_stats"], VALUE_RTOL, 0.0, "batch statistics")


# ---------------------------------------------------------------------------------------------- the pieces

def test_presets_match_flax():
    assert torch_models.ICFDNET_PRESETS == icfdnet.ICFDNET_PRESETS
    assert torch_models.VIT_PRESETS == VIT_PRESETS
    assert torch_fld.COLOR_SPACES == color.COLOR_SPACES


POOL_WINDOWS = (2, 3, 4)  # SAME with odd sizes pads bottom/right; padded zeros are not counted
CEIL_SIZES = (2, 7, 8)  # ceil mode, also below the 3x3 window
RESIZES = ((14, 18), (28, 36), (7, 9))  # x2 (the model's only use), x4, identity


@jax.jit
def flax_pooling_and_resize(x: jax.Array) -> dict:
    """The flax side of test_pooling_and_resize_match_flax as one program (op by op, each was one of its own)."""
    return dict(avg=[nn.avg_pool(x, (w, w), (w, w), padding="SAME", count_include_pad=False) for w in POOL_WINDOWS],
                max=nn.max_pool(x, (2, 2), (2, 2), padding="SAME"),
                ceil=[squeezenet.max_pool_ceil(x[:, :size, :size]) for size in CEIL_SIZES],
                resize=[icfdnet.resize_to(x, height, width) for height, width in RESIZES])


def test_pooling_and_resize_match_flax():
    x = np.random.default_rng(0).standard_normal((2, 7, 9, 3)).astype(np.float32)
    xt = nchw(x)
    flax_side = flax_pooling_and_resize(x)
    for window, expected in zip(POOL_WINDOWS, flax_side["avg"]):
        close(nhwc(torch_layers.avg_pool_same(xt, window, window)), expected, 1e-6)
    close(nhwc(torch_layers.max_pool_same(xt, 2, 2)), flax_side["max"], 1e-6)
    for size, expected in zip(CEIL_SIZES, flax_side["ceil"]):
        close(nhwc(torch_models.max_pool_ceil(xt[:, :, :size, :size])), expected, 1e-6)
    for (height, width), expected in zip(RESIZES, flax_side["resize"]):
        close(nhwc(torch_layers.resize_to(xt, height, width)), expected, 1e-6)


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def flax_colors(image: jax.Array, weights: dict) -> tuple[dict, dict]:
    """Y_c(image) and d sum(weights * Y_c) / d image for every colour space."""
    values = {space: color.color_transform(image, space) for space in color.COLOR_SPACES}
    grads = {space: jax.grad(lambda x, space=space: jnp.sum(color.color_transform(x, space) * weights[space]))(image)
             for space in color.COLOR_SPACES}
    return values, grads


def test_color_transforms_standardize_and_classifier_input_match_flax():
    rng = np.random.default_rng(1)
    rgb = rng.uniform(0.0, 1.0, (2, 6, 5, 3)).astype(np.float32)
    rgb[0, 0] = 0.0  # black: hue and saturation undefined
    rgb[0, 1] = 0.5  # gray: R = G = B
    rgb[1, 0, :3] = np.eye(3)  # pure red, green, blue
    for image in (rgb, rgb[..., :1]):
        weights = {space: rng.standard_normal((color.num_color_channels(space),)).astype(np.float32)
                   for space in color.COLOR_SPACES}
        values, grads = flax_colors(image, weights)
        for space in color.COLOR_SPACES:
            x = nchw(image).requires_grad_(True)
            y = torch_fld.color_transform(x, space)
            (y * torch.from_numpy(weights[space]).view(1, -1, 1, 1)).sum().backward()
            close(nhwc(y), values[space], 1e-5)
            close(nhwc(x.grad), grads[space], 1e-5)

    feat1, feat2 = (rng.standard_normal((2, 6, 5, 2)).astype(np.float32) * 3 + 1 for _ in range(2))
    image = rgb[..., :1]
    for standardize, detach in ((True, False), (False, True)):
        model = fld.FLDModel(ic1=None, ic2=None, classifier=None, color_space="ycbcr", image_channels=1, num_classes=2,
                             standardize_features=standardize, detach_features=detach)
        twin = torch_fld.TorchFLD(None, None, torch.nn.Identity(), "ycbcr", 2, standardize, detach)
        weights = rng.standard_normal(7).astype(np.float32)

        def objective(f1, f2, x):
            # As the classifier's loss builds it: detach_features stops the features' gradient there.
            x_c = fld.classifier_input(model, x, fld.for_classifier_loss(model, fld.Decoupled(f1, None, f2, None)))
            return jnp.sum(x_c * weights), x_c

        value_and_grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True))
        (_, x_c), grads = value_and_grads(feat1, feat2, image)
        inputs = [nchw(a).requires_grad_(True) for a in (feat1, feat2, image)]
        y = twin.classifier_input(inputs[2], torch_fld.Decoupled(inputs[0], None, inputs[1], None), for_loss=True)
        (y * torch.from_numpy(weights).view(1, -1, 1, 1)).sum().backward()
        close(nhwc(y), x_c, 1e-5)
        for tensor, grad in zip(inputs, grads):
            close(np.zeros_like(grad) if tensor.grad is None else nhwc(tensor.grad), grad, 1e-5)


def test_cpu_preset_icfdnet_matches_flax():
    """The "cpu" preset (configs/default.py's decouplers: three levels, mid_ratio 1), GroupNorm, eval forward."""
    module = icfdnet.icfdnet("cpu", features=4, head="class", num_classes=CLASSES, norm="group")
    rng = np.random.default_rng(2)
    variables = random_variables(module, (1, SIZE, SIZE, CHANNELS), rng)
    images = rng.uniform(0.0, 1.0, (2, SIZE, SIZE, CHANNELS)).astype(np.float32)
    features, logits = jax.jit(lambda v, x: module.apply(v, x, train=False), compiler_options=FAST_COMPILE)(
        variables, images)
    twin = torch_fld.TorchFLD(torch_models.build_icfdnet("cpu", CHANNELS, 4, "class", CLASSES, "group"),
                              None, torch.nn.Identity(), "gray", CLASSES)
    flax_to_torch.load_flax_variables(twin, {"params": {"ic1": variables["params"]}, "batch_stats": {}})
    with torch.no_grad():
        twin_features, twin_logits = twin.ic1.eval()(nchw(images))
    close(nhwc(twin_features), features, 1e-4)
    close(twin_logits, logits, 1e-4)


# ------------------------------------------------------------------------------ configs, optimizer, benchmark

def config_variants():
    """configs/default.py itself, then each classifier of the registry in the baseline (no decouplers)."""
    yield "default", load_config("default")
    for name in list(registry) + ["squeezenet1_1 without BN"]:
        config = load_config("default")
        config.model.use_decouplers = False
        config.model.classifier = name.split()[0]
        config.model.squeezenet_batch_norm = "without" not in name
        yield name, config


@pytest.mark.parametrize("label, config", list(config_variants()), ids=[label for label, _ in config_variants()])
def test_weights_pair_up_for_every_config(label, config):
    """build_twin(config) holds exactly the flax model's variables (names, shapes), both ways, full size."""
    config.data.image_size = SIZE  # shapes only; the ViT's position embedding follows the image size
    model = fld.create_fld_model(config.model, len(config.data.class_names), config.data.channels)
    variables = jax.tree.map(np.asarray, fld_variables(model, np.random.default_rng(3)))
    twin = torch_train.build_twin(config).model
    flax_to_torch.load_flax_variables(twin, variables)  # raises on any leaf or tensor without a partner
    for collection in ("params", "batch_stats"):
        assert_trees_close(flax_to_torch.twin_to_flax(twin, variables, collection), variables[collection], 0.0, 0.0,
                           collection)
    decayed = {name for name, p in twin.named_parameters() if torch_train.flax_ndim(name, p) > 1}
    flax_decayed = {flax_to_torch.torch_name(path) for path, on in
                    flax_to_torch.flatten(optimizer.decay_mask(variables["params"])).items() if on}
    assert decayed == flax_decayed


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd"])
def test_optimizer_matches_optax(optimizer_name):
    """Clip-by-global-norm + AdamW/SGD with the decay mask and the warm-up + cosine schedule, three steps."""
    config = load_config("tiny")
    config.model.use_decouplers, config.model.classifier = False, "vit"
    config.optim = ml_collections.ConfigDict(dict(config.optim.to_dict(), name=optimizer_name, warmup_epochs=1 / 3))
    config.train.num_epochs = 2
    steps_per_epoch = 3  # warm-up of one step (learning rate 0), then cosine over five
    model = fld.create_fld_model(config.model, CLASSES, CHANNELS)
    variables = jax.tree.map(np.asarray, fld_variables(model, np.random.default_rng(4)))
    trainer = torch_train.build_twin(config, steps_per_epoch=steps_per_epoch, num_classes=CLASSES)
    flax_to_torch.load_flax_variables(trainer.model, variables)
    tx = optimizer.create_optimizer(config.optim, optimizer.create_learning_rate_fn(config.optim, 2, steps_per_epoch))
    params, rng = variables["params"], np.random.default_rng(5)
    opt_state = jax.jit(tx.init)(params)  # one program each: op by op, init and the update were ~60

    @jax.jit
    def update(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)

    parameters = dict(trainer.model.named_parameters())
    for scale in (1.0, 0.01, 3.0):  # global norms ~20 (clipped to 5), ~0.2, ~60
        grads = jax.tree.map(lambda p: (scale * rng.standard_normal(p.shape)).astype(np.float32), params)
        for path, grad in flax_to_torch.flatten(grads).items():
            parameters[flax_to_torch.torch_name(path)].grad = torch.from_numpy(
                np.array(flax_to_torch.to_torch_layout(path, grad)))
        norm, _ = trainer.apply_gradients()
        params, opt_state, flax_norm = update(grads, opt_state, params)
        close(norm, flax_norm, 1e-6)
        assert_trees_close(flax_to_torch.twin_to_flax(trainer.model, variables), params, 1e-6, 1e-7, "parameters")


def test_learning_rate_schedule_matches_optax():
    schedules = (("cosine", 0), ("cosine", 1), ("constant", 0), ("constant", 1.5))
    optims = [ml_collections.ConfigDict(dict(load_config("default").optim.to_dict(), schedule=schedule,
                                             warmup_epochs=warmup_epochs)) for schedule, warmup_epochs in schedules]
    steps = np.arange(14)
    # Every schedule at every step in one program: step by step, each of their ops was a program of its own.
    theirs = jax.device_get(jax.jit(lambda steps: [jax.vmap(optimizer.create_learning_rate_fn(optim, 3, 4))(steps)
                                                   for optim in optims])(steps))
    for (schedule, _), optim, values in zip(schedules, optims, theirs):
        ours = torch_train.learning_rate_fn(optim, 3, 4)
        for step in steps:
            assert math.isclose(ours(int(step)), float(values[step]), rel_tol=1e-5, abs_tol=1e-9), (schedule, step)


@pytest.mark.parametrize("config_name", ["tiny", "default"])
def test_build_twin_and_train_step_for_the_benchmark(config_name):
    """What launch/benchmark.py times: build_twin(config) and train_step on a flax-side (NHWC) batch."""
    config = load_config(config_name)
    config.model.squeezenet_batch_norm = True
    config.adv.start_epoch = 0
    trainer = torch_train.build_twin(config, steps_per_epoch=2)
    size = config.data.image_size
    rng = np.random.default_rng(6)
    batch = torch_train.batch_from_numpy(rng.uniform(0, 1, (BATCH, size, size, config.data.channels)), LABELS)
    assert batch["image"].shape == (BATCH, config.data.channels, size, size)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for _ in range(2):
        metrics = trainer.train_step(batch)
        assert all(bool(torch.isfinite(value)) for value in metrics.values()), metrics
        assert float(metrics["lc"]) > 0 and float(metrics["ls"]) > 0 and float(metrics["lat"]) > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.step == 2 and int(trainer.adv_seen.sum()) == 2 * BATCH
    assert torch.equal(trainer.class_beta, torch.full((CLASSES,), config.adv.beta / (1 + config.adv.beta)))
