"""Max pooling whose gradient XLA's CPU backend runs fast.

``nn.max_pool`` lowers to ``reduce_window``, and its gradient to ``select_and_scatter``, which XLA's CPU
backend expands into a variadic ``reduce_window`` over (value, index) pairs. On SqueezeNet's first pool
(3x3, stride 2, [32, 31, 31, 64]) that gradient took ~54 ms of CPU time against ~4 ms here, and the attack
loop pays it at every step (BENCHMARKS.md). ``max_pool`` computes the same maximum as separable 1-D pools,
each written with a reshape and unit-stride slices, and gives each 1-D pool a ``custom_vjp``: the window
term that holds the maximum gets the gradient, and each kernel tap's share is padded into place, so the
gradient is selects, pads and adds that XLA fuses (the automatic transpose of the chain of ``jnp.maximum``
added a tie-splitting select per term and one materialised pad per tap: ~8% of SqueezeNet's TRADES step).

Ties: where several inputs share a window's maximum, the first of them (in the window's order) takes the
whole gradient, as ``select_and_scatter`` does along one axis; across the two separable passes the order
is columns first, then rows, where ``select_and_scatter`` scans rows first. In these networks the pooled
values come out of a ReLU, and a tie of positive values has probability zero, while a tie at zero meets
the ReLU's zero derivative either way. Off the CPU backend (``layer_forms``) ``max_pool`` is XLA's
``reduce_window`` with JAX's gradient, which a GPU runs well.
"""

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from flax_fld.models import layer_forms


def _window_terms(x: jax.Array, axis: int, window: int, stride: int, pads: tuple[int, int]):
    """The ``window`` unit-stride views whose elementwise maximum is the pool, with the layout to undo them.

    The axis is padded with -inf and reshaped to [rows, stride]; element i*stride + t is then row i + t // stride,
    column t % stride. Returns (terms, rows, padding of the axis: (low, high), negative where it crops).
    """
    length = x.shape[axis] + pads[0] + pads[1]
    out = (length - window) // stride + 1
    rows = out + (window - 1) // stride
    padding = (pads[0], rows * stride - x.shape[axis] - pads[0])
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (*padding, 0)
    padded = lax.pad(x, jnp.array(-jnp.inf, x.dtype), config)
    grouped = padded.reshape(x.shape[:axis] + (rows, stride) + x.shape[axis + 1:])
    terms = []
    for t in range(window):
        column = lax.index_in_dim(grouped, t % stride, axis + 1, keepdims=False)
        terms.append(lax.slice_in_dim(column, t // stride, t // stride + out, axis=axis))
    return terms, rows, padding


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def max_pool_1d(x: jax.Array, axis: int, window: int, stride: int, pads: tuple[int, int]) -> jax.Array:
    """``out[i] = max(x[i*stride + t] for t < window)`` along ``axis`` after padding it with -inf."""
    return functools.reduce(jnp.maximum, _window_terms(x, axis, window, stride, pads)[0])


def _pool_fwd(x, axis, window, stride, pads):
    out = max_pool_1d(x, axis, window, stride, pads)
    return out, (x, out)


def _pool_bwd(axis, window, stride, pads, residuals, g):
    """Each output's gradient to the first window term equal to it, each term's share padded to its rows."""
    x, out = residuals
    terms, rows, padding = _window_terms(x, axis, window, stride, pads)
    zero = jnp.zeros((), g.dtype)
    taken = None
    columns = [jnp.zeros(g.shape[:axis] + (rows,) + g.shape[axis + 1:], g.dtype) for _ in range(stride)]
    for t, term in enumerate(terms):
        first = term == out if taken is None else (term == out) & ~taken
        taken = first if taken is None else taken | first
        shift = [(0, 0, 0)] * g.ndim
        shift[axis] = (t // stride, rows - out.shape[axis] - t // stride, 0)
        columns[t % stride] = columns[t % stride] + lax.pad(jnp.where(first, g, zero), zero, shift)
    grouped = jnp.stack(columns, axis=axis + 1).reshape(x.shape[:axis] + (rows * stride,) + x.shape[axis + 1:])
    crop = [(0, 0, 0)] * x.ndim
    crop[axis] = (-padding[0], -padding[1], 0)
    return (lax.pad(grouped, zero, crop),)


max_pool_1d.defvjp(_pool_fwd, _pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             pads: Sequence[tuple[int, int]]) -> jax.Array:
    """``nn.max_pool(x, window, strides, padding=pads)`` on [B,H,W,C] with explicit ((top, bottom), (left, right))."""
    if not layer_forms.use_cpu_forms():
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                                 ((0, 0), *map(tuple, pads), (0, 0)))
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
