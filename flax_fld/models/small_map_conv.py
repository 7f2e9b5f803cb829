"""A convolution that stays fast on the CPU when its output map is tiny.

XLA's CPU convolution is pathological on maps of a few pixels: a 3x3, 512->512 convolution on ResNet-18's
2x2 last stage (64 px input), batch 32, took ~300 ms where the same arithmetic as an explicit patch
extraction plus one matrix product took 11 ms (issue 10). ``SmallMapConv`` computes exactly ``nn.Conv``
(same ``kernel``/``bias`` parameters and initialisers, so checkpoints and parameter counts are unchanged) and
switches to the patches + matmul form when the output has at most ``max_patch_positions`` positions; larger
maps keep ``lax.conv_general_dilated``, which wins from 4x4 up.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def conv_as_matmul(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Any) -> jax.Array:
    """``x [B,H,W,Cin]`` convolved with ``kernel [kh,kw,Cin,Cout]`` as patches @ kernel: ``[B,H',W',Cout]``.

    ``conv_general_dilated_patches`` lays out each patch channel-major (``Cin, kh, kw``), so the kernel is
    transposed to that order before the product.
    """
    kh, kw, cin, cout = kernel.shape
    patches = lax.conv_general_dilated_patches(
        x, (kh, kw), tuple(strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return patches @ jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)


class SmallMapConv(nn.Module):
    """``nn.Conv`` (NHWC, square kernel, integer padding) that uses ``conv_as_matmul`` on tiny output maps."""

    features: int
    kernel_size: Sequence[int]
    strides: Any = 1
    padding: int = 0
    use_bias: bool = True
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    max_patch_positions: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        strides = (self.strides, self.strides) if isinstance(self.strides, int) else tuple(self.strides)
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        padding = [(self.padding, self.padding)] * 2
        out_h = (x.shape[1] + 2 * self.padding - kh) // strides[0] + 1
        out_w = (x.shape[2] + 2 * self.padding - kw) // strides[1] + 1
        if out_h * out_w <= self.max_patch_positions:
            y = conv_as_matmul(x, kernel, strides, padding)
        else:
            y = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y
