"""Max pooling whose gradient XLA's CPU backend runs fast.

``nn.max_pool`` lowers to ``reduce_window``, and its gradient to ``select_and_scatter``, which XLA's CPU
backend expands into a variadic ``reduce_window`` over (value, index) pairs. On SqueezeNet's first pool
(3x3, stride 2, [32, 31, 31, 64]) that gradient took ~54 ms of CPU time against ~4 ms here, and the attack
loop pays it at every step (issue 10 profile). ``max_pool`` computes the same maximum as separable 1-D pools,
each written with a reshape and unit-stride slices, so its gradient is pads, adds and selects.

One difference, in the gradient only: where several inputs tie for a window's maximum, ``select_and_scatter``
sends the whole gradient to the first of them, and ``jnp.maximum`` splits it between them. In these networks
the pooled values come out of a ReLU, and a tie of positive values has probability zero, while a tie at zero
meets the ReLU's zero derivative either way.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def max_pool_1d(x: jax.Array, axis: int, window: int, stride: int, pads: tuple[int, int]) -> jax.Array:
    """``out[i] = max(x[i*stride + t] for t < window)`` along ``axis`` after padding it with -inf.

    The padded axis is reshaped to [positions, stride]; element i*stride + t is then row i + t // stride,
    column t % stride, so each of the ``window`` terms is a unit-stride slice.
    """
    length = x.shape[axis] + pads[0] + pads[1]
    out = (length - window) // stride + 1
    rows = out + (window - 1) // stride
    padding = [(0, 0)] * x.ndim
    padding[axis] = (pads[0], rows * stride - x.shape[axis] - pads[0])  # negative crops unused pixels
    padded = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(low, high, 0) for low, high in padding])
    grouped = padded.reshape(x.shape[:axis] + (rows, stride) + x.shape[axis + 1:])
    result = None
    for t in range(window):
        column = lax.index_in_dim(grouped, t % stride, axis + 1, keepdims=False)
        term = lax.slice_in_dim(column, t // stride, t // stride + out, axis=axis)
        result = term if result is None else jnp.maximum(result, term)
    return result


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             pads: Sequence[tuple[int, int]]) -> jax.Array:
    """``nn.max_pool(x, window, strides, padding=pads)`` on [B,H,W,C] with explicit ((top, bottom), (left, right))."""
    x = max_pool_1d(x, 1, window[0], strides[0], tuple(pads[0]))
    return max_pool_1d(x, 2, window[1], strides[1], tuple(pads[1]))


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """The (before, after) padding of ``padding="SAME"``: output ceil(size / stride), extra pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def ceil_mode_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """The (0, after) padding that gives torch's ``ceil_mode=True`` output, ceil((size - window) / stride) + 1."""
    out = math.ceil(max(size - window, 0) / stride) + 1
    return 0, max(0, (out - 1) * stride + window - size)
