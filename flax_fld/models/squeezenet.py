"""SqueezeNet 1.1 (Iandola et al. 2016), the SqueezeNet rows of the paper's Tables 1-2.

Layout follows torchvision's `squeezenet1_1` (biased convolutions, no BatchNorm, ceil-mode max-pools,
dropout + 1x1 convolution classifier, global average pool), so with 3 input channels and 1000 classes it has
torchvision's 1,235,496 parameters, and so does its initialisation (He-uniform convolutions, N(0, 0.01) for
the classifier convolution). One deliberate difference: torchvision applies a ReLU to the class scores before
pooling. Trained from scratch on a few hundred images that ReLU dies: every score reaches 0, the loss sits at
log K and no gradient flows (measured on the synthetic data: stuck at the majority class, while the same
network without it reaches ~60% validation accuracy in four epochs). The scores here are left linear.
NHWC in, logits [B, K] out. ``dtype`` is the convolutions' computation dtype (``train.compute_dtype``);
BatchNorm computes in float32 and every parameter is float32.
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_fld.models import pooling
from flax_fld.models.conv import Conv

# torchvision's init: kaiming_uniform_ on every convolution (keeps activation scale through the ReLU stack;
# flax's default lecun_normal shrinks it ~sqrt(2) per layer), N(0, 0.01) on the classifier convolution.
_conv_init = nn.initializers.kaiming_uniform()
_classifier_init = nn.initializers.normal(stddev=0.01)


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
    """Max-pool [B,H,W,C] -> [B,ceil((H-window)/stride)+1,...,C], like torch's `ceil_mode=True`.

    The extra bottom/right window is padded with -inf, so it only sees real pixels.
    """
    pads = [pooling.ceil_mode_pads(size, window, stride) for size in x.shape[1:3]]
    return pooling.max_pool(x, (window, window), (stride, stride), pads)


class ConvReLU(nn.Module):
    """Convolution + ReLU, with BatchNorm between them when `batch_norm` (then the convolution has no bias)."""

    features: int
    kernel_size: int
    strides: int = 1
    padding: Any = 0
    batch_norm: bool = False
    dtype: Any = None  # the convolution's computation dtype (BatchNorm computes in float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        # conv.Conv: nn.Conv's result, with input gradients that XLA's CPU backend runs fast in the attack.
        x = Conv(self.features, (self.kernel_size, self.kernel_size), self.strides, padding=self.padding,
                    use_bias=not self.batch_norm, kernel_init=_conv_init, dtype=self.dtype, name="conv")(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             name="bn")(x)
        return nn.relu(x)


class Fire(nn.Module):
    """Fire module: 1x1 squeeze, then 1x1 and 3x3 expands: [B,H,W,Cin] -> ([B,H,W,expand], [B,H,W,expand]).

    The input may be such a pair too. The two expands are torchvision's concatenated output, kept apart:
    ``conv.Conv`` reads a pair as its concatenation, so the next squeeze needs no concatenated copy (a
    concatenate and its gradient's slices per module, ~4% of the TRADES step on CPU).
    """

    squeeze: int
    expand: int
    batch_norm: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(ConvReLU, batch_norm=self.batch_norm, dtype=self.dtype)
        x = conv(self.squeeze, 1, name="squeeze")(x, train)
        return (conv(self.expand, 1, name="expand1x1")(x, train),
                conv(self.expand, 3, padding=1, name="expand3x3")(x, train))


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1: [B,H,W,C] (H, W >= 32) -> logits [B,K].

    Attributes:
        num_classes: K.
        dropout_rate: dropout before the classifier convolution (torchvision: 0.5); uses the 'dropout' rng.
        batch_norm: BatchNorm after every convolution but the last (not in torchvision). From scratch on a
            few hundred images the plain network sits at chance for several epochs (6 of 10 epochs on
            432 digit scans); with BatchNorm it learns from the first epoch.
        dtype: the convolutions' computation dtype (float32 or bfloat16); parameters are float32 either way.
    """

    num_classes: int
    dropout_rate: float = 0.5
    batch_norm: bool = False
    dtype: Any = None
    # x may also be a tuple of [B,H,W,C_i] channel parts: the stem's conv.Conv reads them as their concatenation.
    takes_channel_parts: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: jax.Array | tuple[jax.Array, ...], train: bool) -> jax.Array:
        bn, dtype = self.batch_norm, self.dtype
        x = ConvReLU(64, 3, strides=2, padding="VALID", batch_norm=bn, dtype=dtype, name="stem")(x, train)
        x = max_pool_ceil(x)
        x = Fire(16, 64, bn, dtype, name="fire2")(x, train)
        x = Fire(16, 64, bn, dtype, name="fire3")(x, train)
        x = tuple(max_pool_ceil(part) for part in x)
        x = Fire(32, 128, bn, dtype, name="fire4")(x, train)
        x = Fire(32, 128, bn, dtype, name="fire5")(x, train)
        x = tuple(max_pool_ceil(part) for part in x)
        x = Fire(48, 192, bn, dtype, name="fire6")(x, train)
        x = Fire(48, 192, bn, dtype, name="fire7")(x, train)
        x = Fire(64, 256, bn, dtype, name="fire8")(x, train)
        x = jnp.concatenate(Fire(64, 256, bn, dtype, name="fire9")(x, train), axis=-1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        # Linear class scores (no ReLU, unlike torchvision: see the module docstring).
        x = Conv(self.num_classes, (1, 1), kernel_init=_classifier_init, dtype=dtype, name="classifier_conv")(x)
        return jnp.mean(x, axis=(1, 2))


def squeezenet1_1(num_classes: int, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.1 (torchvision `squeezenet1_1`)."""
    return SqueezeNet(num_classes=num_classes, **kwargs)
