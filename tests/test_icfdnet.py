"""Tests for the ICFDNet decoupler (flax_fld/models/icfdnet.py, paper section 2.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_fld.models.icfdnet import ICFDNET_PRESETS, ICFDNet, attention_pool_factor, icfdnet, icfdnet_preset
from model_helpers import synthetic_variables

FEATURES, CLASSES = 5, 4


def both_heads(preset: str):
    return (icfdnet(preset, features=FEATURES, head="class", num_classes=CLASSES),
            icfdnet(preset, features=FEATURES, head="reconstruct", num_classes=CLASSES))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", sorted(ICFDNET_PRESETS))
def test_shapes_224_by_eval_shape(preset, channels):
    x = jax.ShapeDtypeStruct((2, 224, 224, channels), jnp.float32)
    for model in both_heads(preset):
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
        features, output = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
        assert features.shape == (2, 224, 224, FEATURES)
        expected = (2, CLASSES) if model.head == "class" else (2, 224, 224, channels)
        assert output.shape == expected


@pytest.mark.parametrize("size", [32, 33, 40, 57])
def test_any_size_from_32_keeps_its_resolution(size):
    for preset in ("tiny", "cpu"):
        _, reconstruct = both_heads(preset)
        x = jax.ShapeDtypeStruct((1, size, size + 3, 1), jnp.float32)
        variables = jax.eval_shape(lambda x: reconstruct.init(jax.random.key(0), x, train=False), x)
        features, x_hat = jax.eval_shape(lambda v, x: reconstruct.apply(v, x, train=False), variables, x)
        assert features.shape == (1, size, size + 3, FEATURES) and x_hat.shape == x.shape


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_64_computed_under_jit(channels):
    classify, reconstruct = both_heads("tiny")
    x = np.random.default_rng(1).random((2, 64, 64, channels), np.float32)  # numpy: no eager PRNG programs
    class_vars = synthetic_variables(classify, x.shape, seed=0)
    reconstruct_vars = synthetic_variables(reconstruct, x.shape, seed=1)

    @jax.jit
    def run(class_vars, reconstruct_vars, x):
        return classify.apply(class_vars, x, train=False), reconstruct.apply(reconstruct_vars, x, train=False)

    (feat1, logits), (feat2, x_hat) = run(class_vars, reconstruct_vars, x)
    assert feat1.shape == feat2.shape == (2, 64, 64, FEATURES)
    assert logits.shape == (2, CLASSES)
    assert x_hat.shape == x.shape
    assert np.all((np.asarray(x_hat) >= 0) & (np.asarray(x_hat) <= 1))
    assert np.all(np.isfinite(feat1)) and np.all(np.isfinite(logits))


def test_forward_backward_reaches_every_parameter_and_batchnorm_modes():
    _, model = both_heads("tiny")
    x = np.random.default_rng(1).random((4, 32, 32, 1), np.float32)
    variables = synthetic_variables(model, x.shape)

    def loss(params, batch_stats, x):
        (features, x_hat), updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                                 mutable=["batch_stats"])
        return jnp.mean((x_hat - x) ** 2) + 1e-3 * jnp.mean(features**2), updates["batch_stats"]

    grads, new_stats = jax.jit(jax.grad(loss, has_aux=True))(variables["params"], variables["batch_stats"], x)
    grads, new_stats = jax.tree.map(np.asarray, (grads, new_stats))  # numpy checks: no eager program per shape
    reached = jax.tree_util.tree_map(lambda g: bool(np.all(np.isfinite(g)) and np.any(g != 0)), grads)
    unreached = [jax.tree_util.keystr(p) for p, ok in jax.tree_util.tree_leaves_with_path(reached) if not ok]
    assert not unreached, f"no gradient reaches {unreached}"
    # Train mode moves every running statistic towards this batch's statistics.
    moved = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), variables["batch_stats"], new_stats)
    assert all(jax.tree_util.tree_leaves(moved))

    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))
    (features, x_hat), eval_stats = evaluate(variables, x)
    (features_again, _), _ = evaluate(variables, x)
    np.testing.assert_array_equal(features, features_again)
    jax.tree_util.tree_map(np.testing.assert_array_equal, eval_stats["batch_stats"], variables["batch_stats"])


@pytest.mark.parametrize("height, width, max_tokens", [(8, 8, 64), (16, 16, 64), (14, 14, 256), (7, 9, 16),
                                                       (56, 56, 196), (5, 5, 1)])
def test_attention_pool_factor_is_the_smallest_within_the_cap(height, width, max_tokens):
    factor = attention_pool_factor(height, width, max_tokens)
    assert -(-height // factor) * -(-width // factor) <= max_tokens
    if factor > 1:
        smaller = factor - 1
        assert -(-height // smaller) * -(-width // smaller) > max_tokens


def test_presets_cap_every_bottleneck_at_their_design_size():
    # 'cpu' at 64 px and 'paper' at 224 px are sized so every ICBlock bottleneck fits the cap unpooled.
    for preset, size in (("cpu", 64), ("paper", 224)):
        config = icfdnet_preset(preset)
        for level, depth in enumerate(config["block_depths"]):
            side = size // 2 ** (level + depth)
            assert attention_pool_factor(side, side, config["attn_max_tokens"]) == 1


def test_bad_configuration_raises_value_error():
    with pytest.raises(ValueError, match="preset='gpu'"):
        icfdnet_preset("gpu")
    x = np.zeros((1, 32, 32, 1), np.float32)
    with pytest.raises(ValueError, match="head='segment'"):
        jax.eval_shape(lambda: ICFDNet(head="segment").init(jax.random.key(0), x, train=False))
    with pytest.raises(ValueError, match="equal length"):
        jax.eval_shape(lambda: ICFDNet(widths=(8, 16), block_depths=(2,)).init(jax.random.key(0), x, train=False))
