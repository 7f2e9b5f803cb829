"""conv.Conv and pooling.max_pool compute what nn.Conv and nn.max_pool compute, in values and gradients."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_fld.models import conv, layer_forms, pooling


# Inputs and variables come from numpy, and each test computes ours and the reference in one jitted program:
# run eagerly, `init`, `apply` and `grad` would compile a program per op and shape, and XLA's fixed cost per
# program (~0.2 s on a CPU) is paid once, not once per side.
def _abstract_variables(module, *inputs):
    return jax.eval_shape(lambda *inputs: module.init(jax.random.key(1), *inputs), *inputs)  # the key traced too


def _shapes(module, *inputs):
    return jax.tree.map(lambda leaf: leaf.shape, _abstract_variables(module, *inputs))


def _numpy_variables(module, *inputs):
    """init's layout with LeCun-scaled normal kernels (untruncated) and zero biases, drawn by numpy: the
    comparisons hold for any weights, and numpy compiles nothing."""
    rng = np.random.default_rng(1)

    def fill(path, leaf):
        if path[-1].key == "bias":
            return np.zeros(leaf.shape, np.float32)
        return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, _abstract_variables(module, *inputs))


def _output_and_gradients(apply, v, x):
    """``(apply(v, x), gradients of sum(sin(apply(v, x))) in (v, x))``."""
    def loss(v, x):
        y = apply(v, x)
        return jnp.sum(jnp.sin(y)), y
    gradients, output = jax.grad(loss, argnums=(0, 1), has_aux=True)(v, x)
    return output, gradients


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


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
    x = _normal(0, (3, size, size, channels_in))
    reference = nn.Conv(features, (kernel, kernel), strides, padding=padding, kernel_dilation=dilation)
    ours = conv.Conv(features, (kernel, kernel), strides, padding=padding, kernel_dilation=dilation)
    assert _shapes(ours, x) == _shapes(reference, x)
    variables = _numpy_variables(reference, x)
    both = jax.jit(lambda v, x: [_output_and_gradients(module.apply, v, x) for module in (reference, ours)])
    (expected, expected_grads), (output, grads) = both(variables, x)
    assert conv.use_patches(expected.shape[1:3], variables["params"]["kernel"].shape) == patches
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads, expected_grads, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, strides, padding", [(1, 1, 0), (3, 1, 1), (3, 2, "VALID")])
def test_conv_of_channel_parts_equals_conv_of_their_concatenation(kernel, strides, padding):
    parts = [_normal(i, (2, 9, 9, c)) for i, c in enumerate((3, 5))]
    whole = np.concatenate(parts, axis=-1)
    module = conv.Conv(4, (kernel, kernel), strides, padding=padding)
    assert _shapes(module, parts) == _shapes(module, whole)
    variables = _numpy_variables(module, whole)
    both = jax.jit(lambda v, *inputs: [_output_and_gradients(module.apply, v, x) for x in inputs])
    (output_parts, grad_parts), (output_whole, grad_whole) = both(variables, parts, whole)
    np.testing.assert_allclose(output_parts, output_whole, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grad_parts[0], grad_whole[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.concatenate(grad_parts[1], axis=-1), grad_whole[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, kernel, strides, pads", [
    (64, 3, 2, ((0, 0), (0, 0))), (63, 3, 2, ((0, 0), (0, 0))), (64, 7, 2, ((3, 3), (3, 3))),
    (65, 7, 2, ((3, 3), (3, 3))), (16, 3, 2, ((1, 1), (1, 1))), (15, 1, 2, ((0, 0), (0, 0))),
    (9, 5, 3, ((2, 1), (0, 4))), (10, 2, 3, ((0, 1), (1, 0))), (11, 4, 2, ((3, 0), (1, 2))),
    (8, 3, 1, ((0, 2), (2, 0))), (7, 1, 1, ((0, 0), (0, 0))),
])
def test_input_gradient_equals_the_automatic_transpose(size, kernel, strides, pads):
    x = _normal(0, (2, size, size + 1, 3))
    weights = _normal(1, (kernel, kernel, 3, 5))
    forward = lambda x, weights: conv._plain_conv(x, weights, (strides, strides), pads, (1, 1))  # noqa: E731
    g = _normal(2, jax.eval_shape(forward, x, weights).shape)
    ours, transpose = jax.jit(lambda x, weights, g: (
        conv.input_gradient(g, weights, x.shape, (strides, strides), pads),
        jax.vjp(lambda x: forward(x, weights), x)[1](g)[0]))(x, weights, g)
    np.testing.assert_allclose(ours, transpose, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, window, strides, pads", [
    ((2, 31, 31, 3), (3, 3), (2, 2), ((0, 0), (0, 0))),
    ((2, 32, 30, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem pool
    ((2, 15, 15, 2), (3, 3), (2, 2), ((0, 1), (0, 1))),  # SqueezeNet's ceil-mode pool
    ((2, 7, 8, 2), (2, 2), (2, 2), ((0, 1), (0, 0))),  # ICFDNet's SAME pool on an odd map
    ((1, 9, 9, 1), (3, 2), (1, 3), ((2, 0), (0, 1))),
])
def test_max_pool_equals_nn_max_pool_in_values_and_gradients(shape, window, strides, pads):
    # Normal samples: no ties for the maximum, where the two gradients may split differently (pooling.py).
    x = _normal(0, shape)
    reference = lambda x: nn.max_pool(x, window, strides, padding=pads)  # noqa: E731
    ours = lambda x: pooling.max_pool(x, window, strides, pads)  # noqa: E731
    weights = _normal(1, jax.eval_shape(reference, x).shape)
    output_and_gradient = lambda pool, x: (pool(x), jax.grad(lambda x: jnp.sum(pool(x) * weights))(x))  # noqa: E731
    both = jax.jit(lambda x: [output_and_gradient(pool, x) for pool in (ours, reference)])
    (output, gradient), (expected, expected_gradient) = both(x)
    np.testing.assert_array_equal(output, expected)
    np.testing.assert_allclose(gradient, expected_gradient, atol=1e-6)


def test_max_pool_gives_a_tied_maximum_gradient_to_the_first_term_like_select_and_scatter():
    # Ties inside windows and across them.
    x = np.array([[0.0, 2.0, 2.0, 1.0, 2.0, 2.0, 2.0]], np.float32).reshape(1, 1, 7, 1)
    weights = np.arange(1.0, 4.0, dtype=np.float32).reshape(1, 1, 3, 1)
    grad = lambda pool, x: jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)  # noqa: E731
    ours, expected = jax.jit(lambda x: (grad(lambda x: pooling.max_pool(x, (1, 3), (1, 2), ((0, 0), (0, 0))), x),
                                        grad(lambda x: nn.max_pool(x, (1, 3), (1, 2), padding="VALID"), x)))(x)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(np.ravel(ours), [0, 1, 2, 0, 3, 0, 0])


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
    x, kernel = _normal(0, (2, 9, 9, 4)), _normal(1, (3, 3, 4, 5))
    layers = lambda x, k: jnp.sum(jnp.sin(pooling.max_pool(conv.conv2d(x, k, (1, 1), ((1, 1), (1, 1))), (3, 3),  # noqa: E731
                                                           (2, 2), ((0, 1), (0, 1)))))
    reference = lambda x, k: jnp.sum(jnp.sin(nn.max_pool(jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=conv.DIMENSIONS), (3, 3), (2, 2), ((0, 1), (0, 1)))))
    assert ("custom_vjp_call" in str(jax.make_jaxpr(layers)(x, kernel))) == rewritten
    both = jax.jit(lambda x, k: [jax.value_and_grad(f, argnums=(0, 1))(x, k) for f in (layers, reference)])
    (value, grads), (expected, expected_grads) = both(x, kernel)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    chex.assert_trees_all_close(grads, expected_grads, rtol=1e-4, atol=1e-4)
