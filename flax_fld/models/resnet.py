"""ResNet-18 and its attention variants (CBAM, SE): the ResNet/CBAM/SENet rows of the paper's Tables 1-2.

One BasicBlock implementation with a pluggable attention module applied to the residual branch before the
identity is added, which is where both CBAM (Woo et al. 2018) and SE (Hu et al. 2018) place it. The layout
follows torchvision's resnet18 exactly (bias-free convolutions, BatchNorm, 7x7/2 stem + 3x3/2 max-pool,
four stages of two blocks, global average pool, Dense head), so with 3 input channels and 1000 classes the
plain model has torchvision's 11,689,512 parameters.

All modules take NHWC inputs [B, H, W, C] with any C and any H, W >= 32, and return logits [B, K]. ``dtype``
is the computation dtype of convolutions and Dense layers (``train.compute_dtype``); BatchNorm computes in
float32 and every parameter is float32.
"""

import functools
from typing import Any, ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_fld.models import pooling
from flax_fld.models.conv import Conv

# torchvision's BatchNorm2d defaults: momentum 0.1 (= flax decay 0.9), epsilon 1e-5; float32 whatever the
# compute dtype (the statistics and the normalised output; the next convolution casts it back).
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation channel gate (Hu et al. 2018): [B,H,W,C] -> [B,H,W,C].

    Attributes:
        reduction: the bottleneck MLP has C // reduction hidden units.
    """

    reduction: int = 16
    dtype: Any = None  # the Dense layers' computation dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        squeezed = jnp.mean(x, axis=(1, 2))  # [B, C]
        hidden = nn.relu(nn.Dense(max(1, channels // self.reduction), dtype=self.dtype, name="fc1")(squeezed))
        gate = nn.sigmoid(nn.Dense(channels, dtype=self.dtype, name="fc2")(hidden))
        return x * gate[:, None, None, :]


class ConvBlockAttention(nn.Module):
    """CBAM (Woo et al. 2018): channel gate then spatial gate, [B,H,W,C] -> [B,H,W,C].

    Channel gate: a shared MLP (C -> C // reduction -> C) over the average- and max-pooled descriptors,
    summed before the sigmoid. Spatial gate: a `spatial_kernel` x `spatial_kernel` convolution over the
    per-position channel mean and max, then a sigmoid.
    """

    reduction: int = 16
    spatial_kernel: int = 7
    dtype: Any = None  # the MLP's and the spatial convolution's computation dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        shared_mlp = nn.Sequential([
            nn.Dense(max(1, channels // self.reduction), dtype=self.dtype, name="mlp_in"),
            nn.relu,
            nn.Dense(channels, dtype=self.dtype, name="mlp_out"),
        ])
        channel_gate = nn.sigmoid(shared_mlp(jnp.mean(x, axis=(1, 2))) + shared_mlp(jnp.max(x, axis=(1, 2))))
        x = x * channel_gate[:, None, None, :]

        descriptors = jnp.concatenate(
            [jnp.mean(x, axis=-1, keepdims=True), jnp.max(x, axis=-1, keepdims=True)], axis=-1)
        k = self.spatial_kernel
        spatial = nn.Conv(1, (k, k), padding=k // 2, use_bias=False, dtype=self.dtype, name="spatial_conv")(descriptors)
        return x * nn.sigmoid(spatial)


# Attention a BasicBlock can plug in, by name (a string keeps the module hashable and comparable).
ATTENTIONS = ("se", "cbam")


class BasicBlock(nn.Module):
    """ResNet basic block, [B,H,W,Cin] -> [B,H/s,W/s,filters], with optional attention on the residual.

    Attributes:
        filters: output channels.
        strides: spatial stride of the first 3x3 convolution (1 or 2).
        attention: a key of ATTENTIONS ("se" | "cbam") or None (plain ResNet).
        reduction: channel reduction of the attention MLP.
        spatial_kernel: CBAM's spatial-gate kernel size.
        dtype: computation dtype of the convolutions and the attention.
    """

    filters: int
    strides: int = 1
    attention: Optional[str] = None
    reduction: int = 16
    spatial_kernel: int = 7
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        conv = functools.partial(Conv, use_bias=False, dtype=self.dtype)
        # conv.Conv: nn.Conv's result, without XLA's slow CPU paths (2x2 maps, transposed input gradients).
        residual = conv(self.filters, (3, 3), self.strides, padding=1, name="conv1")(x)
        residual = nn.relu(norm(name="bn1")(residual))
        residual = conv(self.filters, (3, 3), padding=1, name="conv2")(residual)
        residual = norm(name="bn2")(residual)
        if self.attention == "se":
            residual = SqueezeExcitation(self.reduction, self.dtype, name="se")(residual)
        elif self.attention == "cbam":
            residual = ConvBlockAttention(self.reduction, self.spatial_kernel, self.dtype, name="cbam")(residual)
        elif self.attention is not None:
            raise ValueError(f"resnet.py: attention={self.attention!r}; expected one of {ATTENTIONS} or None")

        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.filters:
            shortcut = conv(self.filters, (1, 1), self.strides, name="downsample_conv")(x)
            shortcut = norm(name="downsample_bn")(shortcut)
        return nn.relu(residual + shortcut)


class ResNet(nn.Module):
    """ResNet with basic blocks (He et al. 2016), torchvision layout: [B,H,W,C] -> logits [B,K].

    Attributes:
        num_classes: K.
        stage_sizes: blocks per stage; (2, 2, 2, 2) is ResNet-18.
        attention: per-block attention, "se" | "cbam" | None (see BasicBlock).
        reduction: channel reduction of the attention MLP.
        spatial_kernel: CBAM's spatial-gate kernel size.
        width: channels of the first stage (doubled at each later stage).
        dtype: computation dtype of convolutions and Dense layers (float32 or bfloat16); parameters are
            float32 either way, and so is BatchNorm.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    attention: Optional[str] = None
    reduction: int = 16
    spatial_kernel: int = 7
    width: int = 64
    dtype: Any = None
    # x may also be a tuple of [B,H,W,C_i] channel parts: the stem's conv.Conv reads them as their concatenation.
    takes_channel_parts: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: jax.Array | tuple[jax.Array, ...], train: bool) -> jax.Array:
        # conv.Conv: nn.Conv's result; its input gradient (every attack step) avoids XLA's lhs-dilated form.
        x = Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False, dtype=self.dtype, name="stem_conv")(x)
        x = nn.relu(BatchNorm(use_running_average=not train, name="stem_bn")(x))
        x = pooling.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, self.attention, self.reduction,
                               self.spatial_kernel, self.dtype, name=f"layer{stage + 1}_block{block}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


def resnet18(num_classes: int, **kwargs: Any) -> ResNet:
    """Plain ResNet-18 (torchvision `resnet18`)."""
    return ResNet(num_classes=num_classes, **kwargs)


def cbam_resnet18(num_classes: int, reduction: int = 16, spatial_kernel: int = 7, **kwargs: Any) -> ResNet:
    """ResNet-18 with CBAM in every block (reduction 16, 7x7 spatial kernel)."""
    return ResNet(num_classes=num_classes, attention="cbam", reduction=reduction, spatial_kernel=spatial_kernel,
                  **kwargs)


def se_resnet18(num_classes: int, reduction: int = 16, **kwargs: Any) -> ResNet:
    """ResNet-18 with a squeeze-excitation gate in every block (reduction 16)."""
    return ResNet(num_classes=num_classes, attention="se", reduction=reduction, **kwargs)
