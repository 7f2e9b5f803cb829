"""Building blocks of the twin that reproduce flax.linen semantics in PyTorch (NCHW activations).

Where flax and torch defaults differ, these follow flax:

- ``SAME`` pooling pads bottom/right first (``lax`` convention) and ``avg_pool_same`` divides by the number of
  real pixels (``count_include_pad=False``); max pooling pads with -inf.
- ``resize_to``: ``jax.image.resize(method="bilinear")`` uses half-pixel centres and, when shrinking, an
  antialiasing triangle filter; torch's ``interpolate(align_corners=False, antialias=True)`` matches both.
- ``BatchNorm``: flax's running variance is updated with the *biased* batch variance (torch uses the
  unbiased one), and flax's ``momentum=0.9`` is torch's ``momentum=0.1``.
- ``LayerNorm`` epsilon is 1e-6 (torch: 1e-5); ``GroupNorm`` has ``gcd(C, 4)`` groups.
- ``FlaxAttention``: ``nn.MultiHeadDotProductAttention`` (q/k/v/out projections with biases, softmax of
  q k^T / sqrt(head_dim)); the per-head kernels [D, heads, head_dim] become one [D, D] ``nn.Linear``.
"""

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of ``lax``'s "SAME" along one axis: output ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def max_pool(x: torch.Tensor, window: int, stride: int, pads: tuple[tuple[int, int], tuple[int, int]]) -> torch.Tensor:
    """Max-pool [B,C,H,W] with explicit ((top, bottom), (left, right)) padding by -inf, like ``nn.max_pool``."""
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=-math.inf)
    return F.max_pool2d(x, window, stride)


def max_pool_same(x: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """``nn.max_pool(x, (w, w), (s, s), padding="SAME")`` on [B,C,H,W]."""
    pads = (same_pads(x.shape[2], window, stride), same_pads(x.shape[3], window, stride))
    return max_pool(x, window, stride, pads)


def avg_pool_same(x: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """``nn.avg_pool(..., padding="SAME", count_include_pad=False)`` on [B,C,H,W]: padded zeros are not counted."""
    (top, bottom), (left, right) = same_pads(x.shape[2], window, stride), same_pads(x.shape[3], window, stride)
    if not (top or bottom or left or right):
        return F.avg_pool2d(x, window, stride)
    pad = (left, right, top, bottom)
    sums = F.avg_pool2d(F.pad(x, pad), window, stride, divisor_override=1)
    ones = torch.ones((1, 1, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device)
    counts = F.avg_pool2d(F.pad(ones, pad), window, stride, divisor_override=1)
    return sums / counts


def resize_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize [B,C,h,w] -> [B,C,height,width] as ``flax_fld.models.icfdnet.resize_to``.

    The network only upsamples by exactly 2 (decoders, attention un-pooling), where the two libraries agree to
    float rounding (checked in tests/test_torch_twin.py); shrinking uses torch's antialiased filter, the
    counterpart of jax's, but is not exercised by the model.
    """
    if tuple(x.shape[2:]) == (height, width):
        return x
    shrink = height < x.shape[2] or width < x.shape[3]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)


class BatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm(momentum=0.9, epsilon=1e-5)`` over (B, H, W) of [B,C,H,W], with flax's statistics update.

    Train mode normalises with the batch statistics and moves the running ones 10% towards the batch mean and
    *biased* variance (unless ``update_stats`` is False, see ``frozen_batch_stats``); eval mode uses the
    running statistics.
    """

    def __init__(self, features: int, flax_momentum: float = 0.9, eps: float = 1e-5):
        super().__init__(features, eps=eps, momentum=1.0 - flax_momentum)
        self.update_stats = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        y = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if self.update_stats:
            with torch.no_grad():
                var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        return y


@contextlib.contextmanager
def frozen_batch_stats(module: nn.Module) -> Iterator[None]:
    """Train-mode forwards inside leave the running statistics alone (flax: a discarded ``batch_stats`` update)."""
    norms = [m for m in module.modules() if isinstance(m, BatchNorm)]
    for m in norms:
        m.update_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.update_stats = True


def group_norm(features: int) -> nn.GroupNorm:
    """``nn.GroupNorm(num_groups=gcd(features, 4), epsilon=1e-5)`` (ICFDNet's ``norm="group"``)."""
    return nn.GroupNorm(math.gcd(features, 4), features, eps=1e-5)


def layer_norm(features: int) -> nn.LayerNorm:
    """``nn.LayerNorm()`` over the last axis: epsilon 1e-6."""
    return nn.LayerNorm(features, eps=1e-6)


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
         bias: bool = True) -> nn.Conv2d:
    """``nn.Conv`` with a square kernel and symmetric integer padding (flax kernel [k,k,Cin,Cout] = torch OIHW)."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, bias=bias)


class FlaxAttention(nn.Module):
    """``nn.MultiHeadDotProductAttention(num_heads)`` self-attention: tokens [B,N,D] -> [B,N,D].

    Attention-weight dropout (``dropout`` > 0, train mode only) mirrors the ViT's; flax shares its mask across
    the batch (``broadcast_dropout``), torch draws one per example, so only its rate, not its mask, matches.
    """

    def __init__(self, features: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if features % num_heads:
            raise ValueError(f"torch_layers: features={features} not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        # Same child names as flax's DenseGeneral projections, so the weight copier can pair them by name.
        self.query = nn.Linear(features, features)
        self.key = nn.Linear(features, features)
        self.value = nn.Linear(features, features)
        self.out = nn.Linear(features, features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, features = tokens.shape
        head_dim = features // self.num_heads

        def heads(projection: nn.Linear) -> torch.Tensor:
            # flax's kernel [D, heads, head_dim] flattens head-major, as this view splits it.
            return projection(tokens).view(batch, length, self.num_heads, head_dim).transpose(1, 2)

        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(heads(self.query), heads(self.key), heads(self.value), dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(batch, length, features))
