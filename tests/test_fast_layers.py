"""conv.Conv and pooling.max_pool compute what nn.Conv and nn.max_pool compute, in values and gradients."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_fld.models import conv, layer_forms, pooling


@pytest.mark.parametrize("size, channels_in, features, strides, kernel, padding, dilation, patches", [
    (2, 16, 8, 1, 3, 1, 1, True),  # ResNet's 2x2 last stage
    (4, 8, 8, 2, 3, 1, 1, True),  # stride 2 onto a 2x2 output
    (4, 8, 6, 2, 1, 0, 1, True),  # the 1x1 downsample shortcut onto 2x2
    (3, 4, 5, 1, 3, "SAME", 1, True),  # odd map, SAME
    (5, 4, 5, 2, 3, "VALID", 1, True),  # stride 2, VALID onto 2x2
    (2, 4, 3, 1, 3, 2, 2, True),  # dilated kernel on a tiny map
    (15, 16, 8, 1, 3, 1, 1, True),  # SqueezeNet's fire modules: few channels
    (15, 64, 8, 1, 1, 0, 1, True),
    (32, 16, 8, 1, 3, 1, 1, False),  # larger patches: lax.conv_general_dilated forward, input_gradient
    (80, 3, 17, 2, 3, "VALID", 1, False),  # SqueezeNet's stem at 160 px, even and odd maps
    (79, 3, 17, 2, 3, "VALID", 1, False),
    (32, 3, 8, 2, 7, 3, 1, False),  # ResNet's stem
    (31, 3, 8, 2, 7, 3, 1, False),
    (32, 16, 8, 2, 3, 1, 1, False),  # ResNet's downsampling 3x3 and 1x1
    (31, 16, 8, 2, 3, 1, 1, False),
    (32, 136, 8, 2, 1, 0, 1, False),
    (31, 136, 8, 2, 1, 0, 1, False),
    (32, 16, 4, 1, 5, "SAME", 1, False),
    (32, 16, 4, 2, 4, "SAME", 1, False),  # even kernel, uneven SAME pads
    (32, 16, 4, 1, 3, 1, 2, False),  # dilated kernel: JAX's rule
])
def test_conv_equals_nn_conv_in_values_and_gradients(size, channels_in, features, strides, kernel, padding,
                                                    dilation, patches):
    x = jax.random.normal(jax.random.key(0), (3, size, size, channels_in))
    reference = nn.Conv(features, (kernel, kernel), strides, padding=padding, kernel_dilation=dilation)
    ours = conv.Conv(features, (kernel, kernel), strides, padding=padding, kernel_dilation=dilation)
    variables = reference.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    expected = reference.apply(variables, x)
    assert conv.use_patches(expected.shape[1:3], variables["params"]["kernel"].shape) == patches
    np.testing.assert_allclose(ours.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
    grad = lambda module: jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), argnums=(0, 1)))  # noqa: E731
    chex.assert_trees_all_close(grad(ours)(variables, x), grad(reference)(variables, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, strides, padding", [(1, 1, 0), (3, 1, 1), (3, 2, "VALID")])
def test_conv_of_channel_parts_equals_conv_of_their_concatenation(kernel, strides, padding):
    parts = [jax.random.normal(jax.random.key(i), (2, 9, 9, c)) for i, c in enumerate((3, 5))]
    whole = jnp.concatenate(parts, axis=-1)
    module = conv.Conv(4, (kernel, kernel), strides, padding=padding)
    variables = module.init(jax.random.key(7), whole)
    assert jax.tree.map(jnp.shape, module.init(jax.random.key(7), parts)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(module.apply(variables, parts), module.apply(variables, whole), rtol=1e-5, atol=1e-5)
    loss = lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))  # noqa: E731
    grad_parts = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, parts)
    grad_whole = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, whole)
    chex.assert_trees_all_close(grad_parts[0], grad_whole[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jnp.concatenate(grad_parts[1], axis=-1), grad_whole[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, kernel, strides, pads", [
    (64, 3, 2, ((0, 0), (0, 0))), (63, 3, 2, ((0, 0), (0, 0))), (64, 7, 2, ((3, 3), (3, 3))),
    (65, 7, 2, ((3, 3), (3, 3))), (16, 3, 2, ((1, 1), (1, 1))), (15, 1, 2, ((0, 0), (0, 0))),
    (9, 5, 3, ((2, 1), (0, 4))), (10, 2, 3, ((0, 1), (1, 0))), (11, 4, 2, ((3, 0), (1, 2))),
    (8, 3, 1, ((0, 2), (2, 0))), (7, 1, 1, ((0, 0), (0, 0))),
])
def test_input_gradient_equals_the_automatic_transpose(size, kernel, strides, pads):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
    weights = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 5))
    forward = lambda x: conv._plain_conv(x, weights, (strides, strides), pads, (1, 1))  # noqa: E731
    y, transpose = jax.vjp(forward, x)
    g = jax.random.normal(jax.random.key(2), y.shape)
    ours = jax.jit(lambda g: conv.input_gradient(g, weights, x.shape, (strides, strides), pads))(g)
    np.testing.assert_allclose(ours, transpose(g)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, window, strides, pads", [
    ((2, 31, 31, 3), (3, 3), (2, 2), ((0, 0), (0, 0))),
    ((2, 32, 30, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem pool
    ((2, 15, 15, 2), (3, 3), (2, 2), ((0, 1), (0, 1))),  # SqueezeNet's ceil-mode pool
    ((2, 7, 8, 2), (2, 2), (2, 2), ((0, 1), (0, 0))),  # ICFDNet's SAME pool on an odd map
    ((1, 9, 9, 1), (3, 2), (1, 3), ((2, 0), (0, 1))),
])
def test_max_pool_equals_nn_max_pool_in_values_and_gradients(shape, window, strides, pads):
    # Normal samples: no ties for the maximum, where the two gradients may split differently (pooling.py).
    x = jax.random.normal(jax.random.key(0), shape)
    reference = lambda x: nn.max_pool(x, window, strides, padding=pads)  # noqa: E731
    ours = lambda x: pooling.max_pool(x, window, strides, pads)  # noqa: E731
    np.testing.assert_array_equal(jax.jit(ours)(x), reference(x))
    weights = jax.random.normal(jax.random.key(1), reference(x).shape)
    grad = lambda pool: jax.jit(jax.grad(lambda x: jnp.sum(pool(x) * weights)))  # noqa: E731
    np.testing.assert_allclose(grad(ours)(x), grad(reference)(x), atol=1e-6)


def test_max_pool_gives_a_tied_maximum_gradient_to_the_first_term_like_select_and_scatter():
    x = jnp.array([[0.0, 2.0, 2.0, 1.0, 2.0, 2.0, 2.0]]).reshape(1, 1, 7, 1)  # ties inside windows and across them
    weights = jnp.arange(1.0, 4.0).reshape(1, 1, 3, 1)
    grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)  # noqa: E731
    ours = grad(lambda x: pooling.max_pool(x, (1, 3), (1, 2), ((0, 0), (0, 0))))
    np.testing.assert_array_equal(ours, grad(lambda x: nn.max_pool(x, (1, 3), (1, 2), padding="VALID")))
    np.testing.assert_array_equal(ours.ravel(), [0, 1, 2, 0, 3, 0, 0])


@pytest.mark.parametrize("size, window, stride", [(31, 3, 2), (32, 3, 2), (7, 2, 2), (8, 2, 2), (1, 3, 2)])
def test_padding_helpers_give_the_documented_output_sizes(size, window, stride):
    before, after = pooling.same_pads(size, window, stride)
    assert (size + before + after - window) // stride + 1 == -(-size // stride)
    _, extra = pooling.ceil_mode_pads(size, window, stride)
    assert (size + extra - window) // stride + 1 == -(-max(size - window, 0) // stride) + 1


def test_layer_forms_follow_the_environment_and_reject_an_unknown_choice(monkeypatch):
    monkeypatch.delenv(layer_forms.ENV, raising=False)
    assert layer_forms.use_cpu_forms() == (jax.default_backend() == "cpu")
    for choice, expected in (("cpu", True), ("plain", False), ("AUTO", jax.default_backend() == "cpu")):
        monkeypatch.setenv(layer_forms.ENV, choice)
        assert layer_forms.use_cpu_forms() == expected
    monkeypatch.setenv(layer_forms.ENV, "gpu")
    with pytest.raises(ValueError, match="FLAX_FLD_LAYER_FORMS='gpu'"):
        layer_forms.use_cpu_forms()


@pytest.mark.parametrize("choice, rewritten", [("cpu", True), ("plain", False)])
def test_plain_forms_are_xla_ops_with_the_same_values_and_gradients(monkeypatch, choice, rewritten):
    # What an accelerator runs (auto off the CPU): the rewrites' custom VJPs are gone, the results are not.
    monkeypatch.setenv(layer_forms.ENV, choice)
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
    layers = lambda x, k: jnp.sum(jnp.sin(pooling.max_pool(conv.conv2d(x, k, (1, 1), ((1, 1), (1, 1))), (3, 3),  # noqa: E731
                                                           (2, 2), ((0, 1), (0, 1)))))
    reference = lambda x, k: jnp.sum(jnp.sin(nn.max_pool(jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=conv.DIMENSIONS), (3, 3), (2, 2), ((0, 1), (0, 1)))))
    assert ("custom_vjp_call" in str(jax.make_jaxpr(layers)(x, kernel))) == rewritten
    np.testing.assert_allclose(jax.jit(layers)(x, kernel), reference(x, kernel), rtol=1e-5)
    chex.assert_trees_all_close(jax.jit(jax.grad(layers, argnums=(0, 1)))(x, kernel),
                                jax.grad(reference, argnums=(0, 1))(x, kernel), rtol=1e-4, atol=1e-4)
