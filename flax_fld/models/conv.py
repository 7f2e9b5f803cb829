"""A convolution that XLA's CPU backend runs fast in both directions, inside the attack loop too.

``conv2d`` computes exactly ``lax.conv_general_dilated``, in one of two ``custom_vjp`` forms:
- patches @ kernel, where ``use_patches`` says so. Output maps of at most ``MAX_PATCH_POSITIONS`` pixels,
  where XLA's convolution is pathological (a 3x3, 512->512 convolution on ResNet-18's 2x2 last stage,
  batch 32: ~550 ms forward and ~550 ms input gradient, against ~17 and ~8 ms as matrix products), and
  convolutions whose patch matrix is small (``MAX_PATCH_ELEMENTS`` floats per image): with SqueezeNet's few
  channels one matrix product beat XLA's (YNNPACK) convolution 1.3-2x in each direction, and SqueezeNet's
  TRADES step went from 484 to 390 ms. ResNet-18's wider layers stay convolutions, as fast there. The
  input gradient is g @ kernel^T scattered back onto the patches' pixels.
- XLA's convolution, with ``input_gradient``. JAX's automatic transpose of a convolution reverses the
  kernel and swaps its I/O labels (``01oi``); inside a ``while`` loop (the attack) XLA keeps those labels,
  which only its slow generic (Eigen) convolution accepts: 3-10x slower than the same gradient with HWIO
  labels. A strided layer's automatic gradient is worse still: a convolution of the zero-interleaved
  (``lhs_dilation``) gradient, 5-30x slower (ResNet's 7x7/2 stem: ~58 ms per attack step at batch 32,
  ~2 ms here). ``input_gradient`` is one unit-stride convolution with HWIO labels instead.
Kernel gradients are JAX's own rule (the attack loop never asks for them, and XLA drops them there).
Off the CPU backend (``layer_forms``) ``conv2d`` is XLA's convolution with JAX's rules: cuDNN needs no help.
``Conv`` is ``nn.Conv``'s drop-in (same ``kernel``/``bias`` names, shapes and initialisers), so checkpoints
and parameter counts do not change. NHWC images, HWIO kernels throughout. Like ``nn.Conv(dtype=...)``,
``Conv.dtype`` is the computation's dtype (inputs, kernel and bias are cast to it; ``train.compute_dtype``
bfloat16); its parameters stay float32.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from flax_fld.models import layer_forms

Pads = tuple[tuple[int, int], tuple[int, int]]
DIMENSIONS = ("NHWC", "HWIO", "NHWC")
MAX_PATCH_POSITIONS = 4  # output maps up to this many pixels use patches @ kernel (2x2 is the slow case)
MAX_PATCH_ELEMENTS = 2**15  # and so do convolutions whose patches hold at most this many floats per image


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


def patches(x: jax.Array, kernel_size: Sequence[int], strides, pads, dilation) -> jax.Array:
    """``[B,H,W,C]`` -> ``[B,H',W',kh*kw*C]``: each output pixel's receptive field, tap-major (kh, kw, C).

    Pad and one strided slice per tap: ``lax.conv_general_dilated_patches`` is itself a convolution (with a
    one-hot kernel) and as slow on a 2x2 map as the convolution it replaces. Tap-major order makes the
    HWIO kernel's reshape to ``[kh*kw*C, Cout]`` free.
    """
    out = [_output_size(x.shape[1 + i], kernel_size[i], strides[i], pads[i], dilation[i]) for i in range(2)]
    padded = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    columns = [lax.slice(padded, (0, a * dilation[0], b * dilation[1], 0),
                         (x.shape[0], a * dilation[0] + (out[0] - 1) * strides[0] + 1,
                          b * dilation[1] + (out[1] - 1) * strides[1] + 1, x.shape[3]), (1, strides[0], strides[1], 1))
               for a in range(kernel_size[0]) for b in range(kernel_size[1])]
    return jnp.concatenate(columns, axis=-1)


def _patches_conv(x, kernel, strides, pads, dilation):
    kh, kw, cin, cout = kernel.shape
    return patches(x, (kh, kw), strides, pads, dilation) @ kernel.reshape(kh * kw * cin, cout)


def _output_size(size: int, kernel: int, stride: int, pads: tuple[int, int], dilation: int) -> int:
    return (size + pads[0] + pads[1] - ((kernel - 1) * dilation + 1)) // stride + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _patches_product_conv(x, kernel, strides, pads, dilation):
    return _patches_conv(x, kernel, strides, pads, dilation)


def _patches_fwd(x, kernel, strides, pads, dilation):
    return _patches_conv(x, kernel, strides, pads, dilation), (x, kernel)


def _patches_bwd(strides, pads, dilation, residuals, g):
    """Input gradient: one matrix product g @ kernel^T onto the patches, then the patch extraction's transpose
    (pads and adds); the kernel gradient is JAX's rule, patches^T @ g."""
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    _, patches_transpose = jax.vjp(lambda x: patches(x, (kh, kw), strides, pads, dilation), x)
    _, kernel_vjp = jax.vjp(lambda k: _patches_conv(x, k, strides, pads, dilation), kernel)
    return patches_transpose(g @ kernel.reshape(kh * kw * cin, cout).T)[0], kernel_vjp(g)[0]


_patches_product_conv.defvjp(_patches_fwd, _patches_bwd)


def input_gradient(g: jax.Array, kernel: jax.Array, input_shape: Sequence[int], strides: Sequence[int],
                   pads: Pads) -> jax.Array:
    """d(conv)/dx applied to ``g [B,H',W',Cout]``: ``[B,H,W,Cin]``, as one unit-stride HWIO convolution.

    For stride s (per axis), input pixel i takes taps t = i + pad_low - s * o, all congruent to
    r = (i + pad_low) mod s: phase r of the input is a full correlation of g with the sub-kernel of taps
    r, r + s, ..., flipped (ceil(k / s) of them). The min(k, s)^2 phases with taps are one convolution with
    ``[m, m, Cout, phases * Cin]`` kernel; depth-to-space interleaves them (phases without taps are zero)
    and a crop removes the padding. For s = 1 this is the usual flipped-kernel convolution. Needs no
    kernel dilation and 0 <= pads <= k - 1 (``conv2d`` checks).
    """
    kh, kw, cin, cout = kernel.shape
    batch = g.shape[0]
    taps, phases, window_pads, first, crop = [], [], [], [], []
    for axis, k in enumerate((kh, kw)):
        s, low = strides[axis], pads[axis][0]
        m = -(-k // s)  # taps per phase
        q0, q1 = low // s, (low + input_shape[1 + axis] - 1) // s  # phase rows that reach the input
        taps.append(m)
        phases.append(min(k, s))
        window_pads.append((m - 1 - q0, q1 + 1 - g.shape[1 + axis]))
        first.append(q1 - q0 + 1)
        crop.append(low - q0 * s)
    spread = jnp.pad(kernel, ((0, taps[0] * strides[0] - kh), (0, taps[1] * strides[1] - kw), (0, 0), (0, 0)))
    spread = spread.reshape(taps[0], strides[0], taps[1], strides[1], cin, cout)
    spread = spread[::-1, :phases[0], ::-1, :phases[1]]  # [m_h, r_h, m_w, r_w, Cin, Cout], taps flipped
    phase_kernel = jnp.transpose(spread, (0, 2, 5, 1, 3, 4)).reshape(taps[0], taps[1], cout, -1)
    z = _plain_conv(g, phase_kernel, (1, 1), tuple(window_pads), (1, 1))
    z = z.reshape(batch, first[0], first[1], phases[0], phases[1], cin)
    z = jnp.pad(z, ((0, 0),) * 3 + ((0, strides[0] - phases[0]), (0, strides[1] - phases[1]), (0, 0)))
    z = jnp.transpose(z, (0, 1, 3, 2, 4, 5)).reshape(batch, first[0] * strides[0], first[1] * strides[1], cin)
    height, width = input_shape[1:3]
    return z[:, crop[0]:crop[0] + height, crop[1]:crop[1] + width]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _hwio_gradient_conv(x, kernel, strides, pads):
    return _plain_conv(x, kernel, strides, pads, (1, 1))


def _hwio_fwd(x, kernel, strides, pads):
    return _plain_conv(x, kernel, strides, pads, (1, 1)), (x, kernel)


def _hwio_bwd(strides, pads, residuals, g):
    x, kernel = residuals
    _, kernel_vjp = jax.vjp(lambda k: _plain_conv(x, k, strides, pads, (1, 1)), kernel)
    return input_gradient(g, kernel, x.shape, strides, pads), kernel_vjp(g)[0]


_hwio_gradient_conv.defvjp(_hwio_fwd, _hwio_bwd)


def use_patches(out: Sequence[int], kernel_shape: Sequence[int]) -> bool:
    """Whether ``conv2d`` computes patches @ kernel for output map ``out`` (H', W') and an HWIO kernel shape."""
    kh, kw, cin, _ = kernel_shape
    positions = out[0] * out[1]
    return positions <= MAX_PATCH_POSITIONS or positions * kh * kw * cin <= MAX_PATCH_ELEMENTS


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1), pads: Pads = ((0, 0), (0, 0)),
           dilation: Sequence[int] = (1, 1)) -> jax.Array:
    """``lax.conv_general_dilated(x [B,H,W,Cin], kernel [kh,kw,Cin,Cout])`` -> ``[B,H',W',Cout]``.

    Where ``use_patches`` says so it takes the matrix-product forms above; otherwise undilated kernels with
    pads in [0, k - 1] take ``input_gradient``, and anything else JAX's own rules. Off the CPU backend
    (``layer_forms.use_cpu_forms``) it is always the plain convolution.
    """
    strides, dilation = tuple(strides), tuple(dilation)
    pads = tuple(tuple(p) for p in pads)
    if not layer_forms.use_cpu_forms():
        return _plain_conv(x, kernel, strides, pads, dilation)
    out = [_output_size(x.shape[1 + i], kernel.shape[i], strides[i], pads[i], dilation[i]) for i in range(2)]
    if use_patches(out, kernel.shape):
        return _patches_product_conv(x, kernel, strides, pads, dilation)
    if dilation == (1, 1) and all(0 <= p <= k - 1 for pair, k in zip(pads, kernel.shape[:2]) for p in pair):
        return _hwio_gradient_conv(x, kernel, strides, pads)
    return _plain_conv(x, kernel, strides, pads, dilation)


def cast(array: jax.Array, dtype) -> jax.Array:
    """``array`` in the computation dtype ``dtype``; None (the default of every model) leaves it as it is, so a
    float32 model computes in float32 and a float64 test in float64."""
    return array if dtype is None else array.astype(dtype)


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
    dtype: Any = None  # of the computation (and the output); parameters are float32 whatever it is

    @nn.compact
    def __call__(self, x: jax.Array | Sequence[jax.Array]) -> jax.Array:
        """x [B,H,W,Cin], or a list of [B,H,W,C_i] parts read as their concatenation (never materialised)."""
        parts = list(x) if isinstance(x, (list, tuple)) else [x]
        pair = lambda value: (value, value) if isinstance(value, int) else tuple(value)
        kernel_size, strides, dilation = pair(self.kernel_size), pair(self.strides), pair(self.kernel_dilation)
        channels = sum(part.shape[-1] for part in parts)
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, channels, self.features))
        pads = explicit_padding(self.padding, kernel_size, strides, dilation, parts[0].shape[1:3])
        kernel = cast(kernel, self.dtype)
        y, start = None, 0
        for part in parts:
            term = conv2d(cast(part, self.dtype), kernel[:, :, start:start + part.shape[-1]], strides, pads, dilation)
            y, start = (term if y is None else y + term), start + part.shape[-1]
        if self.use_bias:
            y = y + cast(self.param("bias", self.bias_init, (self.features,)), self.dtype)
        return y
