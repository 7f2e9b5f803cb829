"""IC1 and IC2 computed in one pass, each layer as one block-diagonal convolution.

IC1 and IC2 have one architecture and read one image, and on a CPU their narrow convolutions (4 and 8
channels in the cpu preset) cost per-operation overhead far more than arithmetic: one 3x3 convolution +
GroupNorm + ReLU of both networks' 4 channels side by side took 17 ms forward and backward (batch 32,
64x64) against 32 ms as two separate 4-channel layers. So here every activation holds both networks'
channels side by side, [IC1 | IC2]; a convolution's kernel is the two networks' kernels as diagonal blocks
(zeros elsewhere: IC1's channels never see IC2's); GroupNorm takes twice the groups, so no group straddles
the two networks; pooling and resizing are per-channel and run on both at once; attention, the only layer
that mixes channels in a way a kernel cannot, runs on each half. The input image and its multi-level
pooled copies are read by both networks: those kernel rows are dense.

Same parameters (the 'ic1' and 'ic2' trees of ``ICFDNet``), same results to float rounding
(tests/test_paired_icfdnet.py checks values and gradients against two ``ICFDNet.apply`` calls). GroupNorm
only: BatchNorm's running statistics would have to be threaded through per network, and ``fld.decouple``
runs that case as two networks. All arrays are NHWC. Convolutions, attention and heads compute in the
networks' ``dtype`` (``ICFDNet.dtype``), GroupNorm in float32, as in ``ICFDNet``.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from flax_fld.models.conv import cast
from flax_fld.models.icfdnet import ICFDNet, SpatialSelfAttention, halve, image_at_level, resize_to

# (activation, shared): a shared part is one tensor that both networks read (the image); any other part
# holds IC1's channels then IC2's.
Part = tuple[jax.Array, bool]

_ARCHITECTURE = ("features", "widths", "block_depths", "num_heads", "attn_max_tokens", "mid_ratio", "norm", "dtype")


def can_pair(ic1: ICFDNet, ic2: ICFDNet) -> bool:
    """Whether ``paired_decouple`` computes these two decouplers: same architecture, GroupNorm."""
    same = all(tuple(getattr(ic1, a)) == tuple(getattr(ic2, a)) if a in ("widths", "block_depths")
               else getattr(ic1, a) == getattr(ic2, a) for a in _ARCHITECTURE)
    return same and ic1.norm == "group" and (ic1.head, ic2.head) == ("class", "reconstruct")


def block_diagonal_kernel(kernel1: jax.Array, kernel2: jax.Array, parts: list[Part]) -> jax.Array:
    """Two HWIO kernels [kh,kw,Cin,Cout] -> one [kh,kw,Cin',2*Cout] over the concatenated `parts`.

    Cin counts each part's channels once per network; Cin' counts a paired part twice. A paired part's rows
    are [[k1, 0], [0, k2]]; a shared part's rows are [k1, k2].
    """
    rows, start = [], 0
    for array, shared in parts:
        n = array.shape[-1] if shared else array.shape[-1] // 2
        k1, k2 = kernel1[:, :, start:start + n], kernel2[:, :, start:start + n]
        if shared:
            rows.append(jnp.concatenate([k1, k2], axis=3))
        else:
            rows += [jnp.concatenate([k1, jnp.zeros_like(k1)], axis=3), jnp.concatenate([jnp.zeros_like(k2), k2], axis=3)]
        start += n
    if start != kernel1.shape[2]:
        raise ValueError(f"paired_icfdnet.py: input parts hold {start} channels per network; the kernel "
                         f"expects {kernel1.shape[2]}")
    return jnp.concatenate(rows, axis=2)


def paired_conv(p1: dict, p2: dict, parts: list[Part], strides: int = 1, dilation: int = 1,
                dtype=None) -> jax.Array:
    """``nn.Conv(features, (k, k), strides, padding=dilation*(k//2), kernel_dilation=dilation, dtype=dtype)`` of
    both networks (params p1, p2: {'kernel'[, 'bias']}) on the concatenated `parts`: -> [B,H/s,W/s,2*features]."""
    kernel = cast(block_diagonal_kernel(p1["kernel"], p2["kernel"], parts), dtype)
    pad = dilation * (kernel.shape[0] // 2)
    x = jnp.concatenate([cast(array, dtype) for array, _ in parts], axis=-1)
    y = lax.conv_general_dilated(x, kernel, (strides, strides), ((pad, pad), (pad, pad)),
                                 rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if "bias" in p1:
        y = y + cast(jnp.concatenate([p1["bias"], p2["bias"]]), dtype)
    return y


def paired_conv_norm_relu(p1: dict, p2: dict, parts: list[Part], strides: int = 1, dilation: int = 1,
                          dtype=None) -> jax.Array:
    """``ConvBNReLU`` with norm="group" of both networks: -> [B,H/s,W/s,2*features] (float32: the norm's)."""
    y = paired_conv(p1["Conv_0"], p2["Conv_0"], parts, strides, dilation, dtype)
    features = y.shape[-1] // 2
    # Each network's GroupNorm has gcd(features, 4) groups of consecutive channels: twice as many groups
    # over [IC1 | IC2] are the same groups.
    norm_params = {name: jnp.concatenate([p1["GroupNorm_0"][name], p2["GroupNorm_0"][name]])
                   for name in ("scale", "bias")}
    y = nn.GroupNorm(num_groups=2 * math.gcd(features, 4), epsilon=1e-5).apply(
        {"params": norm_params}, y)
    return nn.relu(y)


def paired_attention(p1: dict, p2: dict, x: jax.Array, num_heads: int, max_tokens: int,
                     dtype=None) -> jax.Array:
    """``SpatialSelfAttention`` of each network on its half of x [B,H,W,2C] -> [B,H,W,2C]."""
    half = x.shape[-1] // 2
    attention = SpatialSelfAttention(num_heads, max_tokens, dtype)
    return jnp.concatenate([attention.apply({"params": p1}, x[..., :half]),
                            attention.apply({"params": p2}, x[..., half:])], axis=-1)


def paired_block(net: ICFDNet, level: int, p1: dict, p2: dict, parts: list[Part]) -> jax.Array:
    """``ICBlock`` of U-Net `level` for both networks: parts -> [B,H,W,2*out_channels]."""
    depth, dtype = net.block_depths[level], net.dtype
    residual = paired_conv_norm_relu(p1["conv_in"], p2["conv_in"], parts, dtype=dtype)
    h = paired_conv_norm_relu(p1["enc0"], p2["enc0"], [(residual, False)], dtype=dtype)
    skips = [h]
    for step in range(1, depth + 1):
        h = paired_conv_norm_relu(p1[f"enc{step}"], p2[f"enc{step}"], [(h, False)], strides=2, dtype=dtype)
        skips.append(h)
    skips.pop()  # the bottleneck itself is not a skip
    h = paired_attention(p1["attention"], p2["attention"], h, net.num_heads, net.attn_max_tokens, dtype)
    h = paired_conv_norm_relu(p1["dilated"], p2["dilated"], [(h, False)], dilation=2, dtype=dtype)
    for step, skip in reversed(list(enumerate(skips))):
        h = resize_to(h.astype(dtype), skip.shape[1], skip.shape[2])
        h = paired_conv_norm_relu(p1[f"dec{step}"], p2[f"dec{step}"], [(h, False), (skip, False)], dtype=dtype)
    return residual + h


def paired_decouple(ic1: ICFDNet, ic2: ICFDNet, params1: dict, params2: dict,
                    x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``ic1.apply`` and ``ic2.apply`` (GroupNorm, so train and eval mode agree) in one pass:
    image x [B,H,W,C] -> (feat1 [B,H,W,F], class logits [B,K], feat2 [B,H,W,F], x_hat [B,H,W,C])."""
    if not can_pair(ic1, ic2):
        raise ValueError("paired_icfdnet.py: IC1 and IC2 must share one architecture with norm='group' and have "
                         f"heads ('class', 'reconstruct'); got norms {ic1.norm!r}/{ic2.norm!r}, heads "
                         f"{ic1.head!r}/{ic2.head!r}")
    ic1.check_attributes()
    with jax.named_scope("ICFDNet"):  # the name ``ic1.apply`` gives its ops, so profiles attribute these to IC1/IC2
        return _paired_forward(ic1, params1, params2, x)


def _paired_forward(ic1: ICFDNet, params1: dict, params2: dict,
                    x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    encoded, parts = [], [(x, True)]
    for level in range(len(ic1.widths)):
        if level > 0:
            parts = [(halve(h), False), (image_at_level(x, level), True)]
        h = paired_block(ic1, level, params1[f"encoder{level}"], params2[f"encoder{level}"], parts)
        encoded.append(h)
    for level in reversed(range(len(ic1.widths) - 1)):
        skip = encoded[level]
        h = resize_to(h.astype(ic1.dtype), skip.shape[1], skip.shape[2])
        h = paired_block(ic1, level, params1[f"decoder{level}"], params2[f"decoder{level}"],
                         [(h, False), (skip, False)])
    dtype = ic1.dtype
    features = paired_conv(params1["feature_conv"], params2["feature_conv"], [(h, False)], dtype=dtype)
    feat1, feat2 = features[..., :ic1.features], features[..., ic1.features:]
    class_logits = nn.Dense(ic1.num_classes, dtype=dtype).apply({"params": params1["class_head"]},
                                                               jnp.mean(feat1, axis=(1, 2)))
    x_hat = nn.sigmoid(nn.Conv(x.shape[-1], (1, 1), dtype=dtype).apply({"params": params2["reconstruct_head"]}, feat2))
    return feat1, class_logits, feat2, x_hat
