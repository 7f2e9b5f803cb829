"""Mixed precision (``train.compute_dtype``): bfloat16 convolutions and matrix products in the training step,
float32 everywhere else (parameters, optimizer state, normalisation, losses, x'), float32 evaluation.

Tiny preset (32 px, the tiny ICFDNet with GroupNorm: the paired path, SqueezeNet) on synthetic variables and a
random batch. Compiled: the step's loss and gradients in float32 and bfloat16, one bfloat16 train step of the
baseline model and its evaluation; every other check only traces (``jax.eval_shape``, ``jax.make_jaxpr``).
"""

import functools
import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from model_helpers import synthetic_fld_variables

from flax_fld.evaluation import evaluate
from flax_fld.method import attack, objective
from flax_fld.models import conv, fld, get_classifier
from flax_fld.models.icfdnet import icfdnet
from flax_fld.robustness import robust_eval
from flax_fld.runtime.config_files import load_config
from flax_fld.training import checkpointing, config_validation, optimizer, train
from flax_fld.training.train_state import TrainState

BATCH, SIZE = 8, 32
# Tolerances, from measurement (3 seeds of this test's setting: synthetic variables, tiny preset, batch 8,
# the 2-step attack). bfloat16 keeps 8 significant bits (relative rounding up to 2^-9), in every convolution
# and matrix product, forward and backward:
# - the loss differed by 0.1-0.3% (its x' differs too: the attack's sign steps flip where a pixel's gradient
#   is near zero, 60-70% of pixels end elsewhere in the ball), so LOSS_RTOL = 2e-2 leaves ~7x margin;
# - the whole gradient's cosine with float32 was 0.976-0.989 and the classifier's 0.988-0.994 (0.990-0.997
#   with identical x'), norms within 4%;
# - IC1/IC2's blocks are noisier, cosine 0.78-0.89: besides their own losses (Lc, Ls: cosine > 0.99 alone)
#   they receive the classifier's gradient with respect to its input, a per-pixel sum of many signed terms
#   that a bfloat16 backward pass reproduces only to cosine ~0.95 at this initialisation, then pass it
#   through ICFDNet's own bfloat16 backward pass; norms within 10%.
# A misplaced cast (bfloat16 logits or x', a lost attack step, float32 silently kept) fails the dtype checks
# below rather than these statistical ones. Not SqueezeNet's BatchNorm variant here: at 32 px its fire6-9
# maps are 1x1, so train-mode BatchNorm normalises each channel over the batch alone, and at initialisation
# its gradient is chaotic in float32 itself (a 0.4% perturbation of the input moved it to cosine ~0.5, as
# much as bfloat16 does); that says nothing about the dtype handling, which the other tests check with it.
LOSS_RTOL = 2e-2
MIN_COSINE = 0.95  # the whole gradient
MIN_CLASSIFIER_COSINE = 0.97
MIN_DECOUPLER_COSINE = 0.7
NORM_RTOL = 0.15


def tiny_config(compute_dtype: str = "float32") -> ml_collections.ConfigDict:
    config = load_config("tiny")
    config.adv.start_epoch = 0  # the TRADES term (KL on x') is in the loss from the first step
    config.optim.name = "sgd"
    config.train.compute_dtype = compute_dtype
    return config


def _inputs(config, batch: int = BATCH):
    """(float32 model, synthetic variables, images [B,32,32,1] in [0,1], labels [B], epsilon [K], beta [K])."""
    num_classes = len(config.data.class_names)
    model = fld.create_fld_model(config.model, num_classes, image_channels=1)
    variables = synthetic_fld_variables(model, (SIZE, SIZE, 1))
    # numpy from here on: op by op, each reshape or slice of a device array is a program of its own
    images = np.asarray(jax.random.uniform(jax.random.key(0), (batch, SIZE, SIZE, 1), jnp.float32))
    labels = np.arange(batch, dtype=np.int32) % num_classes
    epsilon, beta = train.uniform_class_values(config.adv, num_classes)
    return model, variables, images, labels, epsilon, beta


@pytest.fixture(scope="module")
def setup():
    """The tiny preset as shipped (SqueezeNet with BatchNorm, GroupNorm decouplers): config and ``_inputs``."""
    config = tiny_config()
    return (config, *_inputs(config))


@pytest.fixture(scope="module")
def both_dtypes():
    """(images, labels, epsilon, {dtype: (loss, terms, grads, x')}) of ``objective.loss_and_gradients`` in
    float32 and bfloat16 with the same variables, batch and keys (SqueezeNet without BatchNorm: see above)."""
    config = tiny_config()
    config.model.squeezenet_batch_norm = False
    model, variables, images, labels, epsilon, beta = _inputs(config)
    frozen = ml_collections.FrozenConfigDict(config)

    def step(params, batch_stats, images, labels, epsilon, beta, key, *, model):
        # The keys are split in here: outside, splitting and unstacking them were programs of their own.
        return objective.loss_and_gradients(params, batch_stats, images, labels, epsilon, beta,
                                            tuple(jax.random.split(key, 3)), model=model, config=frozen)

    results = {}
    for name in ("float32", "bfloat16"):
        run = jax.jit(functools.partial(step, model=fld.with_compute_dtype(model, name)))
        results[name] = jax.device_get(run(variables["params"], variables["batch_stats"], images, labels, epsilon,
                                           beta, jax.random.key(1)))
    return images, labels, epsilon, results


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(leaf).astype(np.float64) for leaf in jax.tree.leaves(tree)])


def _cosine(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_bfloat16_loss_and_gradients_track_float32(both_dtypes):
    results = both_dtypes[3]
    (loss32, terms32, grads32, _), (loss16, terms16, grads16, _) = results["float32"], results["bfloat16"]
    for value in (loss16, terms16.lc, terms16.ls, terms16.lat, terms16.logits_clean, terms16.logits_adv):
        assert np.asarray(value).dtype == np.float32
    np.testing.assert_allclose(loss16, loss32, rtol=LOSS_RTOL)
    for name in ("lc", "ls", "lat"):
        np.testing.assert_allclose(getattr(terms16, name), getattr(terms32, name), rtol=LOSS_RTOL, err_msg=name)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads16, grads32)  # float32 gradients of float32 parameters
    assert _cosine(grads16, grads32) > MIN_COSINE
    for part, bound in (("classifier", MIN_CLASSIFIER_COSINE), ("ic1", MIN_DECOUPLER_COSINE),
                        ("ic2", MIN_DECOUPLER_COSINE)):
        assert _cosine(grads16[part], grads32[part]) > bound, part
        np.testing.assert_allclose(np.linalg.norm(_flat(grads16[part])), np.linalg.norm(_flat(grads32[part])),
                                   rtol=NORM_RTOL, err_msg=part)


def test_adversarial_image_stays_float32_in_its_ball(both_dtypes):
    images, labels, epsilon, results = both_dtypes
    x_adv = results["bfloat16"][3]
    assert x_adv.dtype == np.float32
    radius = np.asarray(epsilon)[np.asarray(labels)].reshape(-1, 1, 1, 1)
    distance = np.abs(x_adv - np.asarray(images))
    assert np.all(distance <= radius + 1e-7)
    assert np.all((x_adv >= 0.0) & (x_adv <= 1.0))
    assert np.max(distance) > 3.5 / 255  # two steps of 2/255 were taken
    # x' carries float32 precision: it was never rounded through bfloat16 (most values are not bf16 numbers).
    assert np.mean(x_adv != x_adv.astype(jnp.bfloat16).astype(np.float32)) > 0.9  # (ml_dtypes' bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        attack.trades_pgd(lambda x: jnp.zeros((x.shape[0], 2)), images.astype(jnp.bfloat16), 0.03,
                          step_size=0.01, num_steps=1, key=jax.random.key(0))


def _module_outputs(module: nn.Module, x, compute_dtype) -> list:
    """dtypes of every convolution's output in a train-mode pass of ``module`` (traced, not run)."""
    module = module.clone(dtype=compute_dtype)
    is_conv = lambda mdl, method: isinstance(mdl, (nn.Conv, conv.Conv)) and method == "__call__"  # noqa: E731

    def run():
        variables = module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
        _, state = module.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                                capture_intermediates=is_conv, mutable=["batch_stats", "intermediates"])
        return variables["params"], state["intermediates"]

    params, intermediates = jax.eval_shape(run)
    outputs = [leaf.dtype for leaf in jax.tree.leaves(intermediates)]
    assert outputs, "no convolution captured"
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    return outputs


@pytest.mark.parametrize("name", ["squeezenet1_1", "resnet18", "cbam_resnet18", "se_resnet18", "vit", "icfdnet"])
def test_convolutions_compute_in_the_compute_dtype(name):
    """Every convolution of every model outputs bfloat16 under bfloat16 (and float32 otherwise), parameters
    float32 either way: a module that ignored ``dtype`` would fail here."""
    if name == "icfdnet":
        module, x = icfdnet("tiny", norm="batch", num_classes=4), np.zeros((2, SIZE, SIZE, 1), np.float32)
    else:
        kwargs = {"batch_norm": True} if name == "squeezenet1_1" else {}
        module, x = get_classifier(name, 4, **kwargs), np.zeros((2, SIZE, SIZE, 7), np.float32)
    assert set(_module_outputs(module, x, jnp.bfloat16)) == {jnp.dtype(jnp.bfloat16)}
    assert set(_module_outputs(module, x, jnp.float32)) == {jnp.dtype(jnp.float32)}


def _products(jaxpr, names=("conv_general_dilated", "dot_general")) -> list:
    """(primitive, output dtype, operand shapes) of every convolution and matrix product in ``jaxpr`` and its
    sub-jaxprs (loops, custom_vjp rules, jit calls)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names:
            found.append((eqn.primitive.name, eqn.outvars[0].aval.dtype, [v.aval.shape for v in eqn.invars]))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _products(inner, names)
    return found


def _dtypes(jaxpr) -> set:
    return {dtype for _, dtype, _ in _products(jaxpr)}


def _state(config, model, variables) -> TrainState:
    tx = optimizer.create_optimizer(config.optim, optimizer.create_learning_rate_fn(config.optim, 1, 1))
    epsilon, beta = train.uniform_class_values(config.adv, model.num_classes)
    return TrainState.create(params=variables["params"], batch_stats=variables["batch_stats"], tx=tx,
                             class_epsilon=epsilon, class_beta=beta, class_acc=jnp.full_like(epsilon, 0.7),
                             rng=jax.random.key(0), average=False, average_enabled=False)


def test_train_step_computes_in_the_configured_dtype(setup):
    """``train.train_step`` picks the dtype from ``train.compute_dtype``: its convolutions and matrix products
    (forward, attack and backward) are all bfloat16 under bfloat16 and all float32 under float32, but for
    the colour transform of the image."""
    _, model, variables, images, labels, *_ = setup
    batch = {"image": images, "label": labels}
    for name, expected in (("bfloat16", jnp.bfloat16), ("float32", jnp.float32)):
        config = ml_collections.FrozenConfigDict(tiny_config(name))
        step = functools.partial(train.train_step, model=model, config=config)
        # Traced only, so the state's shapes suffice (built op by op, it was ~50 programs).
        state = jax.eval_shape(functools.partial(_state, config, model), variables)
        jaxpr = jax.make_jaxpr(step, axis_env=[(train.AXIS_NAME, 1)])(state, batch)
        products = _products(jaxpr.jaxpr)
        assert sum(dtype == expected for _, dtype, _ in products) > 20, name
        # Y_c, the colour transform (a 3x3 matrix applied to the image and to x'), stays float32 with them.
        rest = [(p, dtype, shapes) for p, dtype, shapes in products if (3, 3) not in shapes]
        assert {dtype for _, dtype, _ in rest} == {jnp.dtype(expected)}, name
        assert {dtype for p, dtype, _ in rest if p == "conv_general_dilated"} == {jnp.dtype(expected)}, name


def test_bfloat16_step_keeps_float32_state_and_checkpoints(tmp_path):
    """After a bfloat16 step the parameters, optimizer state and statistics are float32, the state has the
    float32 run's structure, a checkpoint of it restores into a float32 template, and evaluating it (given
    the bfloat16 model) gives the float32 model's predictions. Baseline model (SqueezeNet with BatchNorm, no
    decouplers): the optimizer and checkpoint path is the same for every submodule, and this pmapped step
    compiles in a fraction of the full model's time."""
    config = tiny_config("bfloat16")
    config.model.use_decouplers = False
    model, variables, images, labels, *_ = _inputs(config, batch=4)
    state = jax.jit(functools.partial(_state, config, model))(variables)  # op by op it was ~50 programs
    step = jax.pmap(functools.partial(train.train_step, model=model, config=ml_collections.FrozenConfigDict(config)),
                    axis_name=train.AXIS_NAME, in_axes=(None, 0), out_axes=(None, None),
                    devices=jax.local_devices()[:1])
    new_state, metrics = step(state, {"image": images[None], "label": labels[None]})
    assert np.isfinite(float(metrics["loss"]))
    for part in ("params", "opt_state", "batch_stats"):
        chex.assert_trees_all_equal_shapes_and_dtypes(getattr(new_state, part), getattr(state, part))
    floating = {leaf.dtype for leaf in jax.tree.leaves((new_state.params, new_state.opt_state,
                                                         new_state.batch_stats))
                if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert floating == {jnp.dtype(jnp.float32)}
    assert not np.array_equal(_flat(new_state.params), _flat(state.params))  # the step updated them

    checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=1, async_save=False)
    try:
        checkpointer.save(jax.tree.map(jnp.asarray, new_state), {"epoch": 1})
        restored, _ = checkpointer.restore(jax.tree.map(jnp.asarray, state), "latest")
    finally:
        checkpointer.close()
    chex.assert_trees_all_equal(restored.params, new_state.params)
    devices = jax.local_device_count()
    batch = {"image": images.reshape(devices, -1, SIZE, SIZE, 1), "label": labels.reshape(devices, -1),
             "mask": np.ones((devices, 4 // devices), bool)}
    matrices = [evaluate.confusion_matrices(m, restored.inference_variables(), [batch], adv_config=config.adv,
                                            robust=False)[0]
                for m in (model, fld.with_compute_dtype(model, "bfloat16"))]
    np.testing.assert_array_equal(matrices[0], matrices[1])
    assert matrices[0].sum() == 4


def test_evaluation_runs_in_float32_whatever_the_training_dtype(setup):
    """``evaluate.eval_step`` given the bfloat16 model traces exactly the float32 program, and neither it nor
    ``robust_eval.fld_step`` (the strong attack) holds any bfloat16: a bfloat16-trained state is evaluated in
    float32."""
    _, model, variables, images, labels, *_ = setup
    bf16 = fld.with_compute_dtype(model, "bfloat16")
    assert fld.float32_model(bf16) == model and hash(fld.float32_model(bf16)) == hash(model)
    batch = {"image": images, "label": labels, "mask": np.ones((BATCH,), bool)}
    key = jax.random.key(0)
    eval_step = lambda m: functools.partial(evaluate.eval_step, model=m, robust=True,  # noqa: E731
                                            attack_settings=(8 / 255, 2, 2 / 255, True))
    strong_step = lambda m: functools.partial(  # noqa: E731
        robust_eval.fld_step, model=m, settings=robust_eval.StrongSettings(pgd_steps=1, steps=1, targets=1),
        end_to_end=True)
    traced = {name: jax.make_jaxpr(eval_step(m), axis_env=[("batch", 1)])(variables, batch, key)
              for name, m in (("float32", model), ("bfloat16", bf16))}
    assert str(traced["bfloat16"]) == str(traced["float32"])
    strong = jax.make_jaxpr(strong_step(bf16), axis_env=[("batch", 1)])(
        variables, batch, key, jnp.float32(8 / 255), jnp.float32(2 / 255))
    for jaxpr in (traced["bfloat16"], strong):
        assert "bf16" not in str(jaxpr)
        assert _dtypes(jaxpr.jaxpr) == {jnp.dtype(jnp.float32)}


def test_compute_dtype_config_validation_and_resume(tmp_path):
    config = tiny_config("bfloat16")
    config_validation.validate_config(config)
    config.train.compute_dtype = "float16"
    with pytest.raises(ValueError, match=r"^config.train.compute_dtype='float16': expected one of "
                                         r"\('float32', 'bfloat16'\)$"):
        config_validation.validate_config(config)
    with pytest.raises(ValueError, match="compute_dtype='float16'"):
        fld.with_compute_dtype(fld.create_fld_model(config.model, 4, 1), "float16")
    # A run written before the key existed resumes as float32, and only as float32.
    old = tiny_config()
    del old.train["compute_dtype"]
    os.makedirs(tmp_path / checkpointing.PERIODIC_DIRNAME / "1")
    (tmp_path / checkpointing.CONFIG_FILENAME).write_text(json.dumps(json.loads(old.to_json_best_effort())))
    assert checkpointing.config_changes(str(tmp_path), tiny_config("float32")) == []
    assert checkpointing.config_changes(str(tmp_path), tiny_config("bfloat16")) == [
        "train.compute_dtype: '<unset>' -> 'bfloat16'"]
