"""A convolution that stays fast on the CPU when its output map is tiny.

XLA's CPU convolution is pathological on maps of a few pixels, in both directions: a 3x3, 512->512
convolution on ResNet-18's 2x2 last stage (64 px input), batch 32, took ~550 ms forward and ~550 ms for its
input gradient (CPU time, `nn.Conv`), where the same arithmetic written as matrix products takes ~17 ms and
~8 ms (issue 10). ``conv2d`` computes exactly ``lax.conv_general_dilated`` and, when the output has at most
``MAX_PATCH_POSITIONS`` positions, uses a ``custom_vjp`` whose forward is patches @ kernel and whose input
gradient is one matrix product per kernel tap. The kernel gradient is JAX's rule for patches @ kernel
(a matrix product; the attack loop never asks for it, and XLA drops it there). Larger maps keep
``lax.conv_general_dilated`` and its automatic transpose, which measured as fast as any rewrite here from
4x4 up. ``Conv`` is ``nn.Conv``'s drop-in (same
``kernel``/``bias`` names, shapes and initialisers), so checkpoints and parameter counts do not change.
NHWC images, HWIO kernels throughout.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
DIMENSIONS = ("NHWC", "HWIO", "NHWC")
MAX_PATCH_POSITIONS = 4  # output maps up to this many pixels use patches @ kernel (2x2 is the slow case)


def explicit_padding(padding: Any, kernel_size: Sequence[int], strides: Sequence[int], dilation: Sequence[int],
                     spatial: Sequence[int]) -> Pads:
    """``nn.Conv``'s padding argument (int, "SAME", "VALID", or pairs) as ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        effective = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
        return tuple(lax.padtype_to_pads(spatial, effective, strides, padding))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple((int(low), int(high)) for low, high in padding)


def _plain_conv(x, kernel, strides, pads, dilation):
    return lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation, dimension_numbers=DIMENSIONS)


def _patches_conv(x, kernel, strides, pads, dilation):
    """patches [B,H',W',Cin*kh*kw] @ kernel; patch channels come out channel-major (Cin, kh, kw)."""
    kh, kw, cin, cout = kernel.shape
    patches = lax.conv_general_dilated_patches(x, (kh, kw), strides, pads, rhs_dilation=dilation,
                                               dimension_numbers=DIMENSIONS)
    return patches @ jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)


def _output_size(size: int, kernel: int, stride: int, pads: tuple[int, int], dilation: int) -> int:
    return (size + pads[0] + pads[1] - ((kernel - 1) * dilation + 1)) // stride + 1


def input_gradient(g: jax.Array, kernel: jax.Array, input_shape: Sequence[int], strides, pads, dilation) -> jax.Array:
    """d(conv)/dx applied to ``g [B,H',W',Cout]``: ``[B,H,W,Cin]``, one matrix product per kernel tap.

    The transpose of a convolution is a full correlation of g (with stride - 1 zeros between its pixels)
    with the spatially flipped kernel. On a map of a few pixels XLA's convolution for it is as slow as the
    forward one, so it is written out: for each tap (a, b), a shifted window of the spread g times that
    tap's [Cout, Cin] matrix, summed.
    """
    kh, kw = kernel.shape[:2]
    padding = [(0, 0, 0)]
    for i in range(2):
        effective = (kernel.shape[i] - 1) * dilation[i] + 1
        dilated = (g.shape[1 + i] - 1) * strides[i] + 1
        low = effective - 1 - pads[i][0]
        padding.append((low, input_shape[1 + i] + effective - 1 - dilated - low, strides[i] - 1))
    padding.append((0, 0, 0))
    spread = lax.pad(g, jnp.zeros((), g.dtype), padding)
    height, width = input_shape[1:3]
    total = None
    for a in range(kh):
        for b in range(kw):
            window = spread[:, a * dilation[0]:a * dilation[0] + height, b * dilation[1]:b * dilation[1] + width]
            term = window @ kernel[kh - 1 - a, kw - 1 - b].T
            total = term if total is None else total + term
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _small_map_conv(x, kernel, strides, pads, dilation):
    return _patches_conv(x, kernel, strides, pads, dilation)


def _conv_fwd(x, kernel, strides, pads, dilation):
    return _patches_conv(x, kernel, strides, pads, dilation), (x, kernel)


def _conv_bwd(strides, pads, dilation, residuals, g):
    x, kernel = residuals
    _, kernel_vjp = jax.vjp(lambda k: _patches_conv(x, k, strides, pads, dilation), kernel)  # patches^T @ g
    return input_gradient(g, kernel, x.shape, strides, pads, dilation), kernel_vjp(g)[0]


_small_map_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1), pads: Pads = ((0, 0), (0, 0)),
           dilation: Sequence[int] = (1, 1)) -> jax.Array:
    """``lax.conv_general_dilated(x [B,H,W,Cin], kernel [kh,kw,Cin,Cout])`` -> ``[B,H',W',Cout]``.

    Output maps of at most ``MAX_PATCH_POSITIONS`` pixels take the matrix-product forms above.
    """
    strides, dilation = tuple(strides), tuple(dilation)
    pads = tuple(tuple(p) for p in pads)
    out = [_output_size(x.shape[1 + i], kernel.shape[i], strides[i], pads[i], dilation[i]) for i in range(2)]
    if out[0] * out[1] <= MAX_PATCH_POSITIONS:
        return _small_map_conv(x, kernel, strides, pads, dilation)
    return _plain_conv(x, kernel, strides, pads, dilation)


class Conv(nn.Module):
    """``nn.Conv`` (NHWC, 2-D) computed by ``conv2d``: same parameters, initialisers and result."""

    features: int
    kernel_size: Sequence[int]
    strides: Any = 1
    padding: Any = "SAME"
    kernel_dilation: Any = 1
    use_bias: bool = True
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pair = lambda value: (value, value) if isinstance(value, int) else tuple(value)
        kernel_size, strides, dilation = pair(self.kernel_size), pair(self.strides), pair(self.kernel_dilation)
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, x.shape[-1], self.features))
        pads = explicit_padding(self.padding, kernel_size, strides, dilation, x.shape[1:3])
        y = conv2d(x, kernel, strides, pads, dilation)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y
