"""The composite FLD model of Fig. 2 / Algorithm 1 as pure functions over explicit variables.

Two ICFDNet decouplers see the image x [B,H,W,C]: IC1 gives Feat1 [B,H,W,F] and class logits (for Ls), IC2
gives Feat2 [B,H,W,F] and a reconstruction x_hat (for Lc, Eq. 5). The classifier f sees
x_c = cat(Feat1, Feat2, Y_c(x)) [B,H,W,2F+Cc], where Y_c is the color transform. The baseline of Table 2
has no decouplers: x_c = Y_c(x).

Variables are one dict {'params': {'ic1', 'ic2', 'classifier'}, 'batch_stats': {same keys}} so the trainer
holds one tree; each function here slices out the submodule it runs. Nothing here closes over arrays, so
every function is safe under jit/pmap with the (hashable) FLDModel as a static closure.

Mixed precision (``train.compute_dtype``): ``with_compute_dtype(model, "bfloat16")`` is the same model with
its convolutions and matrix products computed in bfloat16; parameters (and so checkpoints) are float32 in
either dtype, normalisation computes in float32, and ``decouple`` and ``classify`` hand back float32
features, reconstructions and logits, so losses, the attack and x' stay float32. Only the training step
uses it (``train.train_step``); evaluation and prediction run ``float32_model``.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flax_fld.models import color, get_classifier, paired_icfdnet
from flax_fld.models.icfdnet import ICFDNet, icfdnet_preset

DECOUPLERS = ("ic1", "ic2")
# train.compute_dtype -> the dtype the submodules compute in (their ``dtype`` attribute).
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # None: no cast (float32 params, float32 math)


@dataclasses.dataclass(frozen=True)
class FLDModel:
    """Static description of the composite model; hashable, safe to close over in jit."""

    ic1: Optional[nn.Module]  # ICFDNet with a class head (None in baseline mode)
    ic2: Optional[nn.Module]  # ICFDNet with a reconstruction head (None in baseline mode)
    classifier: nn.Module
    color_space: str
    image_channels: int
    num_classes: int
    standardize_features: bool = False  # per-image, per-channel standardisation of Feat1/Feat2 in x_c
    detach_features: bool = False  # the classifier's loss does not update IC1/IC2 (only Ls and Lc do)
    compute_dtype: str = "float32"  # a key of COMPUTE_DTYPES: what the submodules compute in (with_compute_dtype)

    @property
    def use_decouplers(self) -> bool:
        return self.ic1 is not None

    @property
    def classifier_channels(self) -> int:
        """Channels of x_c: 2F + Cc with decouplers, Cc without."""
        decoupled = self.ic1.features + self.ic2.features if self.use_decouplers else 0
        return decoupled + color.num_color_channels(self.color_space)


class Decoupled(NamedTuple):
    """Outputs of the two decouplers (all None in baseline mode)."""

    feat1: Optional[jax.Array]  # [B,H,W,F] IC1 features
    class_logits: Optional[jax.Array]  # [B,K] IC1 class head (for Ls)
    feat2: Optional[jax.Array]  # [B,H,W,F] IC2 features
    x_hat: Optional[jax.Array]  # [B,H,W,C] IC2 reconstruction in [0,1] (for Lc)


def create_fld_model(model_config: ml_collections.ConfigDict, num_classes: int, image_channels: int) -> FLDModel:
    """Builds the FLDModel from `config.model` (classifier, vit_preset, icfdnet_preset, feature_channels,
    use_decouplers, color_space)."""
    if image_channels not in (1, 3):
        raise ValueError(f"fld.py: image_channels={image_channels}; expected 1 or 3")
    color.num_color_channels(model_config.color_space)  # fails early, with color's message, on a bad name
    classifier_kwargs: dict[str, Any] = {}
    if model_config.classifier == "vit":
        classifier_kwargs["preset"] = model_config.vit_preset
    if model_config.classifier == "squeezenet1_1":
        classifier_kwargs["batch_norm"] = bool(model_config.get("squeezenet_batch_norm", False))
    classifier = get_classifier(model_config.classifier, num_classes, **classifier_kwargs)
    ic1 = ic2 = None
    if model_config.use_decouplers:
        if model_config.feature_channels < 1:
            raise ValueError(f"fld.py: model.feature_channels={model_config.feature_channels}; must be >= 1")
        preset = dict(icfdnet_preset(model_config.icfdnet_preset), norm=model_config.get("icfdnet_norm", "batch"))
        ic1 = ICFDNet(features=model_config.feature_channels, head="class", num_classes=num_classes, **preset)
        ic2 = ICFDNet(features=model_config.feature_channels, head="reconstruct", num_classes=num_classes, **preset)
    return FLDModel(ic1=ic1, ic2=ic2, classifier=classifier, color_space=model_config.color_space,
                    image_channels=image_channels, num_classes=num_classes,
                    standardize_features=bool(model_config.get("standardize_features", False)),
                    detach_features=bool(model_config.get("detach_features", False)))


def with_compute_dtype(model: FLDModel, compute_dtype: str) -> FLDModel:
    """``model`` with every submodule computing in ``compute_dtype`` ("float32" | "bfloat16"), parameters
    unchanged (float32): the same variables fit both. Returns ``model`` itself when it already computes so."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"fld.py: compute_dtype={compute_dtype!r}; expected one of {tuple(COMPUTE_DTYPES)}")
    if model.compute_dtype == compute_dtype:
        return model
    dtype = COMPUTE_DTYPES[compute_dtype]
    recast = lambda module: module if module is None else module.clone(dtype=dtype)  # noqa: E731
    return dataclasses.replace(model, ic1=recast(model.ic1), ic2=recast(model.ic2),
                               classifier=recast(model.classifier), compute_dtype=compute_dtype)


def float32_model(model: FLDModel) -> FLDModel:
    """``model`` computing in float32, as evaluation, robust evaluation and prediction always run it."""
    return with_compute_dtype(model, "float32")


def _float32(array: Optional[jax.Array]) -> Optional[jax.Array]:
    # At least float32: bfloat16 outputs go up, a float64 (x64) computation keeps its precision.
    return None if array is None else array.astype(jnp.promote_types(array.dtype, jnp.float32))


def _submodules(model: FLDModel) -> dict[str, nn.Module]:
    modules = {"classifier": model.classifier}
    if model.use_decouplers:
        modules.update(ic1=model.ic1, ic2=model.ic2)
    return modules


def _variables_of(variables: dict, name: str) -> dict:
    return {"params": variables["params"][name], "batch_stats": variables.get("batch_stats", {}).get(name, {})}


def init_variables(model: FLDModel, key: jax.Array, image_shape: tuple[int, int, int]) -> dict:
    """Initial {'params': {...}, 'batch_stats': {...}} for image_shape = (H, W, C); keys 'ic1', 'ic2',
    'classifier' ('classifier' only in baseline mode; {} batch_stats for a module without BatchNorm).

    One jitted program initialises every submodule (cached per model and shape): op by op, init of a ResNet
    is slower than compiling it, and one program per submodule paid XLA's per-program overhead three times.
    """
    if len(image_shape) != 3 or image_shape[-1] != model.image_channels:
        raise ValueError(f"fld.py: image_shape={tuple(image_shape)}; expected (H, W, {model.image_channels})")
    return _jitted_init(model, tuple(image_shape))(key)


@functools.lru_cache(maxsize=16)
def _jitted_init(model: FLDModel, image_shape: tuple[int, int, int]) -> Callable:
    return jax.jit(functools.partial(_init_variables, model, image_shape))


def _init_variables(model: FLDModel, image_shape: tuple[int, int, int], key: jax.Array) -> dict:
    height, width, _ = image_shape
    inputs = {"ic1": jnp.zeros((1, *image_shape), jnp.float32), "ic2": jnp.zeros((1, *image_shape), jnp.float32),
              "classifier": jnp.zeros((1, height, width, model.classifier_channels), jnp.float32)}
    # Parameters are drawn with the 'rbg' PRNG seeded from `key`: deterministic for a key, and XLA compiles
    # it ~5x faster than threefry, whose per-parameter expansion dominated init time on CPU (43 s vs 9 s
    # for the tiny ICFDNet on a loaded 2-core machine).
    seeds = jax.random.bits(key, (3, 4), jnp.uint32)
    keys = {name: jax.random.wrap_key_data(seeds[i], impl="rbg") for i, name in enumerate(("ic1", "ic2", "classifier"))}
    params, batch_stats = {}, {}
    for name, module in _submodules(model).items():
        # Eval mode at init: no dropout rng needed, and the shapes are identical.
        variables = module.init(keys[name], inputs[name], train=False)
        params[name] = variables["params"]
        batch_stats[name] = variables.get("batch_stats", {})
    return {"params": params, "batch_stats": batch_stats}


def _run_decoupler(module: nn.Module, variables: dict, x: jax.Array, train: bool):
    if train:
        (features, head), updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
        return features, head, updates.get("batch_stats", {})
    features, head = module.apply(variables, x, train=False)
    return features, head, variables["batch_stats"]


def decouple(model: FLDModel, variables: dict, x: jax.Array, *, train: bool) -> tuple[Decoupled, dict]:
    """Feature decoupling of Algorithm 1: x [B,H,W,C] -> (Decoupled, batch_stats {'ic1', 'ic2'}).

    In train mode BatchNorm uses batch statistics and the returned running statistics are updated; in eval
    mode they are returned unchanged. Baseline mode: (all-None Decoupled, {}). The outputs are float32
    whatever ``model.compute_dtype`` (the losses and x_c read them).
    """
    if not model.use_decouplers:
        return Decoupled(None, None, None, None), {}
    if paired_icfdnet.can_pair(model.ic1, model.ic2):
        # GroupNorm: no batch statistics, and both networks' layers run as one (forward 1.7x faster on CPU).
        outputs = paired_icfdnet.paired_decouple(
            model.ic1, model.ic2, variables["params"]["ic1"], variables["params"]["ic2"], x)
        return Decoupled(*map(_float32, outputs)), {"ic1": {}, "ic2": {}}
    feat1, class_logits, stats1 = _run_decoupler(model.ic1, _variables_of(variables, "ic1"), x, train)
    feat2, x_hat, stats2 = _run_decoupler(model.ic2, _variables_of(variables, "ic2"), x, train)
    return Decoupled(*map(_float32, (feat1, class_logits, feat2, x_hat))), {"ic1": stats1, "ic2": stats2}


def standardize(features: jax.Array, eps: float = 1e-4) -> jax.Array:
    """Each image's each channel to zero mean and unit variance over H, W: [B,H,W,F] -> [B,H,W,F].

    The decouplers' feature maps have no fixed scale (a linear convolution ends ICFDNet), while Y_c lies in
    [0, 1]; standardised, neither part of x_c drowns the other, and the features' scale cannot drift
    between epochs under the classifier. No batch statistics: train and eval mode agree.
    """
    mean = jnp.mean(features, axis=(1, 2), keepdims=True)
    var = jnp.var(features, axis=(1, 2), keepdims=True)
    return (features - mean) * jax.lax.rsqrt(var + eps)


def for_classifier_loss(model: FLDModel, decoupled: Decoupled) -> Decoupled:
    """``decoupled`` as the classifier's training loss sees it: with ``model.detach_features`` its feature maps
    carry no gradient, so that loss does not update IC1/IC2 (only Ls and Lc do).

    Only the loss detaches: an attacker differentiates through the features (``attack_logits_fn``), so a
    detached model is attacked as hard as any other, not shielded by a stopped gradient.
    """
    if not model.detach_features or decoupled.feat1 is None:
        return decoupled
    return decoupled._replace(feat1=jax.lax.stop_gradient(decoupled.feat1),
                              feat2=jax.lax.stop_gradient(decoupled.feat2))


def classifier_input(model: FLDModel, x: jax.Array, decoupled: Decoupled) -> jax.Array:
    """x_c = cat(Feat1, Feat2, Y_c(x)) [B,H,W,2F+Cc] (Algorithm 1); baseline: Y_c(x) [B,H,W,Cc].

    With ``model.standardize_features`` the features are standardised (``standardize``).
    """
    parts = classifier_input_parts(model, x, decoupled)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def classifier_input_parts(model: FLDModel, x: jax.Array, decoupled: Decoupled) -> tuple[jax.Array, ...]:
    """x_c as its channel parts: ``(features [B,H,W,2F], Y_c(x) [B,H,W,Cc])``, or ``(Y_c(x),)`` in baseline mode.

    A classifier whose stem reads a tuple as its concatenation (``takes_channel_parts``) convolves each part
    apart, so in the attack, where only Y_c(x') changes, XLA computes the features' share of the stem once,
    outside the loop, and each step convolves and differentiates 3 channels instead of 2F + 3.
    """
    color_image = color.color_transform(x, model.color_space)
    if decoupled.feat1 is None:
        return (color_image,)
    features = jnp.concatenate([decoupled.feat1, decoupled.feat2], axis=-1)
    if model.standardize_features:
        features = standardize(features)
    return features, color_image


def classify(model: FLDModel, variables: dict, x_c: jax.Array | tuple[jax.Array, ...], *, train: bool,
             dropout_rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
    """Classifier f: x_c [B,H,W,2F+Cc] (or its parts, for a classifier that ``takes_channel_parts``) ->
    (logits [B,K], batch_stats {'classifier': ...}); the logits are float32 whatever ``model.compute_dtype``.

    Train mode needs `dropout_rng` for classifiers with dropout (squeezenet1_1, vit).
    """
    classifier_variables = _variables_of(variables, "classifier")
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    if train:
        logits, updates = model.classifier.apply(classifier_variables, x_c, train=True, rngs=rngs,
                                                 mutable=["batch_stats"])
        return _float32(logits), {"classifier": updates.get("batch_stats", {})}
    logits = model.classifier.apply(classifier_variables, x_c, train=False, rngs=rngs)
    return _float32(logits), {"classifier": classifier_variables["batch_stats"]}


def attack_logits_fn(model: FLDModel, variables: dict, decoupled: Decoupled, *,
                     end_to_end: bool) -> Callable[[jax.Array], jax.Array]:
    """Eval-mode logits as a function of the image x' [B,H,W,C] in [0,1] only, for the attack's inner max.

    end_to_end=False (Fig. 2): the decoupled features of the clean image are held fixed and only the image
    part Y_c(x') of x_c is perturbed. end_to_end=True: IC1/IC2 (eval mode) recompute the features from x'.
    A classifier that ``takes_channel_parts`` receives x_c as its parts (``classifier_input_parts``).
    """
    as_parts = getattr(model.classifier, "takes_channel_parts", False)

    def logits_fn(x_perturbed: jax.Array) -> jax.Array:
        if end_to_end:
            current, _ = decouple(model, variables, x_perturbed, train=False)
        else:
            current = jax.lax.stop_gradient(decoupled)
        x_c = (classifier_input_parts if as_parts else classifier_input)(model, x_perturbed, current)
        logits, _ = classify(model, variables, x_c, train=False)
        return logits

    return logits_fn


def forward(model: FLDModel, variables: dict, x: jax.Array, *, train: bool = False,
            dropout_rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
    """Image [B,H,W,C] -> (logits [B,K], intermediates {'feat1','feat2','x_hat','class_logits','x_c'}).

    For evaluation and prediction; BatchNorm statistic updates (train=True) are discarded.
    """
    decoupled, _ = decouple(model, variables, x, train=train)
    x_c = classifier_input(model, x, decoupled)
    logits, _ = classify(model, variables, x_c, train=train, dropout_rng=dropout_rng)
    intermediates = {"feat1": decoupled.feat1, "feat2": decoupled.feat2, "x_hat": decoupled.x_hat,
                     "class_logits": decoupled.class_logits, "x_c": x_c}
    return logits, intermediates
