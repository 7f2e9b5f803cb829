"""ICFDNet, the Iterative Compression Feature Decoupler (paper section 2.1, Fig. 3).

A U-Net whose every stage is an ICBlock, itself a mini U (in the spirit of U^2-Net's RSU blocks): each block
compresses its input with strided convolutions, lets multi-head self-attention re-weight the compressed
positions globally, sharpens detail with a dilated convolution, and decodes back to its input resolution
with skip concatenations and a residual path. So every stage runs one full compression-recovery cycle
("piston movement"), and the network as a whole runs them iteratively. Multi-level pooling feeds the input
image, average-pooled to each encoder stage's resolution, into that stage, so the initial information meets
the deep features.

The same class serves both decouplers of Fig. 2: IC1 with head="class" (logits for the BCE loss Ls) and IC2
with head="reconstruct" (an image in [0, 1] for the Charbonnier-Laplacian + L1 loss Lc, Eq. 5).
All arrays are NHWC. ``dtype`` is the computation's dtype of the convolutions, attention, bilinear
upsampling and heads (``train.compute_dtype``); normalisation computes in float32 and every parameter is
float32.
"""

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_fld.models import pooling
from flax_fld.models.conv import cast

ICFDNET_PRESETS: dict[str, dict[str, Any]] = {
    # Tests: forward+backward at 32 px in a fraction of a second on one CPU core.
    "tiny": dict(widths=(8, 16), block_depths=(2, 1), num_heads=2, attn_max_tokens=16),
    # CPU demo at 64 px: every stage's bottleneck is 8x8 = 64 tokens; ~42 MFLOPs per image. Narrow but
    # full-width inside the blocks (mid_ratio=1): on CPU the time goes to per-layer overhead, not width.
    "cpu": dict(widths=(4, 8, 16), block_depths=(3, 2, 1), num_heads=2, attn_max_tokens=64, mid_ratio=1),
    # 224 px on a GPU: every stage's bottleneck is 14x14 = 196 tokens.
    "paper": dict(widths=(32, 64, 128, 256), block_depths=(4, 3, 2, 1), num_heads=4, attn_max_tokens=256),
}

HEADS = ("class", "reconstruct")
NORMS = ("batch", "group")


def icfdnet_preset(name: str) -> dict[str, Any]:
    """Keyword arguments (widths, block_depths, num_heads, attn_max_tokens[, mid_ratio]) of a named preset."""
    if name not in ICFDNET_PRESETS:
        raise ValueError(f"icfdnet.py: preset={name!r}; expected one of {sorted(ICFDNET_PRESETS)}")
    return dict(ICFDNET_PRESETS[name])


def resize_to(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize [B,h,w,C] -> [B,height,width,C]; exact target sizes absorb odd-size rounding."""
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method="bilinear")


def attention_pool_factor(height: int, width: int, max_tokens: int) -> int:
    """Smallest integer pooling factor s with ceil(height/s) * ceil(width/s) <= max_tokens."""
    if max_tokens < 1:
        raise ValueError(f"icfdnet.py: attn_max_tokens={max_tokens}; must be >= 1")
    factor = 1
    while math.ceil(height / factor) * math.ceil(width / factor) > max_tokens:
        factor += 1
    return factor


def halve(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, SAME: [B,H,W,C] -> [B,ceil(H/2),ceil(W/2),C], between U-Net levels."""
    return pooling.max_pool(x, (2, 2), (2, 2), [pooling.same_pads(n, 2, 2) for n in x.shape[1:3]])


def image_at_level(image: jax.Array, level: int) -> jax.Array:
    """Multi-level pooling: the raw image average-pooled to U-Net `level`'s scale, to rejoin the deep
    features there: [B,H,W,C] -> [B,ceil(H/2^level),ceil(W/2^level),C]."""
    scale = 2**level
    return nn.avg_pool(image, (scale, scale), (scale, scale), padding="SAME", count_include_pad=False)


def normalization(norm: str, features: int, train: bool) -> nn.Module:
    """BatchNorm (``norm="batch"``) or GroupNorm of up to 4 groups (``"group"``), computed in float32 (so are
    BatchNorm's running statistics) whatever the model's compute dtype: its output is float32, and the next
    convolution casts it back.

    GroupNorm has no batch statistics, so a decoupler gives the same features in train and eval mode: the
    classifier, which is trained on train-mode features and attacked through eval-mode ones, sees one
    distribution instead of two.
    """
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    if norm == "group":
        return nn.GroupNorm(num_groups=math.gcd(features, 4), epsilon=1e-5)
    raise ValueError(f"icfdnet.py: norm={norm!r}; expected one of {NORMS}")


class ConvBNReLU(nn.Module):
    """3x3 convolution (optionally strided or dilated) + normalization + ReLU: [B,H,W,Cin] -> [B,H/s,W/s,features]."""

    features: int
    strides: int = 1
    dilation: int = 1
    norm: str = "batch"
    dtype: Any = None  # the convolution's computation dtype

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(self.features, (3, 3), self.strides, padding=self.dilation, kernel_dilation=self.dilation,
                    use_bias=False, dtype=self.dtype)(x)
        x = normalization(self.norm, self.features, train)(x)
        return nn.relu(x)


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of [B,H,W,C], residual: [B,H,W,C] -> [B,H,W,C].

    If H*W exceeds `max_tokens`, the map is average-pooled by the smallest integer factor that brings the
    token count within the cap, attended, and bilinearly upsampled back; this keeps the quadratic attention
    affordable at 224 px. Position is not embedded explicitly: zero padding in the surrounding convolutions
    already makes the features position-aware.
    """

    num_heads: int
    max_tokens: int
    dtype: Any = None  # the attention's computation dtype (its LayerNorm computes in float32)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        factor = attention_pool_factor(height, width, self.max_tokens)
        y = x
        if factor > 1:
            y = nn.avg_pool(x, (factor, factor), (factor, factor), padding="SAME", count_include_pad=False)
        pooled_h, pooled_w = y.shape[1:3]
        tokens = nn.LayerNorm()(y.reshape(batch, pooled_h * pooled_w, channels))
        tokens = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=channels,
                                                 dtype=self.dtype)(tokens, tokens)
        y = resize_to(tokens.reshape(batch, pooled_h, pooled_w, channels), height, width)
        return x + y


class ICBlock(nn.Module):
    """Iterative-compression block (Fig. 3), a mini U: [B,H,W,Cin] -> [B,H,W,out_channels].

    in-conv -> `depth` stride-2 convolutions (encoding) -> self-attention at the bottleneck -> dilated
    (rate 2) convolution -> `depth` upsample + skip-concat convolutions (decoding) -> + in-conv output.

    Attributes:
        out_channels: channels of the block output (and of its residual path).
        mid_channels: channels inside the mini U; must be divisible by num_heads.
        depth: number of stride-2 compressions (>= 1).
        num_heads, attn_max_tokens: see SpatialSelfAttention.
        dtype: computation dtype of the convolutions and attention.
    """

    out_channels: int
    mid_channels: int
    depth: int
    num_heads: int
    attn_max_tokens: int
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.depth < 1:
            raise ValueError(f"icfdnet.py: ICBlock depth={self.depth}; must be >= 1")
        if self.mid_channels % self.num_heads:
            raise ValueError(f"icfdnet.py: mid_channels={self.mid_channels} not divisible by "
                             f"num_heads={self.num_heads}")
        conv = functools.partial(ConvBNReLU, norm=self.norm, dtype=self.dtype)
        residual = conv(self.out_channels, name="conv_in")(x, train)
        h = conv(self.mid_channels, name="enc0")(residual, train)
        skips = [h]
        for level in range(1, self.depth + 1):
            h = conv(self.mid_channels, strides=2, name=f"enc{level}")(h, train)
            skips.append(h)
        skips.pop()  # the bottleneck itself is not a skip

        h = SpatialSelfAttention(self.num_heads, self.attn_max_tokens, self.dtype, name="attention")(h)
        h = conv(self.mid_channels, dilation=2, name="dilated")(h, train)

        for level, skip in reversed(list(enumerate(skips))):
            h = resize_to(cast(h, self.dtype), skip.shape[1], skip.shape[2])
            features = self.out_channels if level == 0 else self.mid_channels
            h = conv(features, name=f"dec{level}")(jnp.concatenate([h, skip], axis=-1), train)
        return residual + h


class ICFDNet(nn.Module):
    """ICFDNet decoupler: image [B,H,W,C] -> (features [B,H,W,F], head output).

    Head output: logits [B,K] for head="class" (IC1), or a reconstruction [B,H,W,C] in [0, 1] for
    head="reconstruct" (IC2).

    Attributes:
        features: F, channels of the decoupled feature map.
        widths: ICBlock output channels per U-Net level (encoder; the decoder mirrors it).
        block_depths: stride-2 compressions inside the ICBlock of each level.
        num_heads: attention heads in every ICBlock.
        attn_max_tokens: cap on attended positions per ICBlock bottleneck.
        head: "class" | "reconstruct".
        num_classes: K, for head="class".
        mid_ratio: ICBlock inner channels = max(num_heads, width // mid_ratio), rounded to num_heads.
        norm: "batch" | "group" (see `normalization`).
        dtype: computation dtype of convolutions, attention, upsampling and heads (``train.compute_dtype``: float32 or
            bfloat16); parameters are float32 either way, and so is normalisation. Outputs are in this dtype
            (``fld.decouple`` casts them to float32 for the losses).
    """

    features: int = 4
    widths: Sequence[int] = (8, 16)
    block_depths: Sequence[int] = (2, 1)
    num_heads: int = 2
    attn_max_tokens: int = 64
    head: str = "class"
    num_classes: int = 4
    mid_ratio: int = 2
    norm: str = "batch"
    dtype: Any = None

    def block_channels(self, level: int) -> tuple[int, int]:
        """(out_channels, mid_channels) of the ICBlocks at U-Net `level`."""
        width = self.widths[level]
        mid = max(self.num_heads, width // self.mid_ratio)
        return width, mid - mid % self.num_heads

    def _block(self, level: int, name: str) -> ICBlock:
        return ICBlock(*self.block_channels(level), self.block_depths[level], self.num_heads, self.attn_max_tokens,
                       self.norm, self.dtype, name=name)

    def check_attributes(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"icfdnet.py: head={self.head!r}; expected one of {HEADS}")
        if len(self.widths) != len(self.block_depths) or not self.widths:
            raise ValueError(f"icfdnet.py: widths={tuple(self.widths)} and block_depths={tuple(self.block_depths)} "
                             "must be non-empty and of equal length")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        self.check_attributes()
        image = x
        encoded = []
        h = x
        for level in range(len(self.widths)):
            if level > 0:
                h = jnp.concatenate([halve(h), image_at_level(image, level)], axis=-1)
            h = self._block(level, f"encoder{level}")(h, train)
            encoded.append(h)

        for level in reversed(range(len(self.widths) - 1)):
            skip = encoded[level]
            h = resize_to(cast(h, self.dtype), skip.shape[1], skip.shape[2])
            h = self._block(level, f"decoder{level}")(jnp.concatenate([h, skip], axis=-1), train)

        features = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name="feature_conv")(h)
        if self.head == "class":
            output = nn.Dense(self.num_classes, dtype=self.dtype, name="class_head")(jnp.mean(features, axis=(1, 2)))
        else:
            output = nn.sigmoid(nn.Conv(image.shape[-1], (1, 1), dtype=self.dtype, name="reconstruct_head")(features))
        return features, output


def icfdnet(preset: str = "cpu", **overrides: Any) -> ICFDNet:
    """An ICFDNet from a named preset, with any attribute overridden by keyword (e.g. head="reconstruct")."""
    return ICFDNet(**{**icfdnet_preset(preset), **overrides})
