"""ICFDNet and the five classifiers of ``flax_fld.models.registry`` in PyTorch, NCHW.

Every submodule and parameter is named after its flax counterpart (``encoder0.conv_in.Conv_0.weight`` is
``params/encoder0/conv_in/Conv_0/kernel``), which is all ``flax_to_torch`` needs to pair them. Unlike flax,
torch needs every input width at construction, so the constructors take ``in_channels`` (and the ViT its
image size, which fixes the position embedding's length).
"""

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_layers import (BatchNorm, FlaxAttention, avg_pool_same, conv, group_norm, layer_norm, max_pool,
                                     max_pool_same, resize_to)


# ----------------------------------------------------------------------------------------------- ICFDNet (Fig. 3)

class ConvNormReLU(nn.Module):
    """``icfdnet.ConvBNReLU``: bias-free 3x3 conv (strided or dilated) + Batch/GroupNorm + ReLU."""

    def __init__(self, in_channels: int, features: int, norm: str, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.Conv_0 = conv(in_channels, features, 3, stride, padding=dilation, dilation=dilation, bias=False)
        if norm not in ("batch", "group"):
            raise ValueError(f"torch_models: norm={norm!r}; expected 'batch' or 'group'")
        self.norm_name = "BatchNorm_0" if norm == "batch" else "GroupNorm_0"
        self.add_module(self.norm_name, BatchNorm(features) if norm == "batch" else group_norm(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, self.norm_name)(self.Conv_0(x)))


class SpatialSelfAttention(nn.Module):
    """``icfdnet.SpatialSelfAttention``: pooled multi-head self-attention over positions, residual, [B,C,H,W]."""

    def __init__(self, channels: int, num_heads: int, max_tokens: int):
        super().__init__()
        self.max_tokens = max_tokens
        self.LayerNorm_0 = layer_norm(channels)
        self.MultiHeadDotProductAttention_0 = FlaxAttention(channels, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        factor = 1
        while math.ceil(height / factor) * math.ceil(width / factor) > self.max_tokens:
            factor += 1
        y = avg_pool_same(x, factor, factor) if factor > 1 else x
        pooled_h, pooled_w = y.shape[2:]
        tokens = self.LayerNorm_0(y.flatten(2).transpose(1, 2))  # row-major positions, as flax's reshape
        tokens = self.MultiHeadDotProductAttention_0(tokens)
        y = tokens.transpose(1, 2).reshape(batch, channels, pooled_h, pooled_w)
        return x + resize_to(y, height, width)


class ICBlock(nn.Module):
    """``icfdnet.ICBlock``, a mini U: in-conv, ``depth`` stride-2 convs, attention, dilated conv, decoder,
    + residual: [B,Cin,H,W] -> [B,out_channels,H,W]."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, depth: int, num_heads: int,
                 attn_max_tokens: int, norm: str):
        super().__init__()
        self.depth = depth
        self.conv_in = ConvNormReLU(in_channels, out_channels, norm)
        self.enc0 = ConvNormReLU(out_channels, mid_channels, norm)
        for level in range(1, depth + 1):
            self.add_module(f"enc{level}", ConvNormReLU(mid_channels, mid_channels, norm, stride=2))
        self.attention = SpatialSelfAttention(mid_channels, num_heads, attn_max_tokens)
        self.dilated = ConvNormReLU(mid_channels, mid_channels, norm, dilation=2)
        for level in range(depth):
            self.add_module(f"dec{level}", ConvNormReLU(2 * mid_channels, out_channels if level == 0 else mid_channels,
                                                        norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv_in(x)
        h = self.enc0(residual)
        skips = [h]
        for level in range(1, self.depth + 1):
            h = getattr(self, f"enc{level}")(h)
            skips.append(h)
        skips.pop()
        h = self.dilated(self.attention(h))
        for level in reversed(range(self.depth)):
            skip = skips[level]
            h = resize_to(h, skip.shape[2], skip.shape[3])
            h = getattr(self, f"dec{level}")(torch.cat([h, skip], dim=1))
        return residual + h


class ICFDNet(nn.Module):
    """``icfdnet.ICFDNet``: image [B,C,H,W] -> (features [B,F,H,W], logits [B,K] or reconstruction [B,C,H,W])."""

    def __init__(self, in_channels: int, features: int, widths: Sequence[int], block_depths: Sequence[int],
                 num_heads: int, attn_max_tokens: int, head: str, num_classes: int, mid_ratio: int = 2,
                 norm: str = "batch"):
        super().__init__()
        if head not in ("class", "reconstruct"):
            raise ValueError(f"torch_models: head={head!r}; expected 'class' or 'reconstruct'")
        self.levels, self.head = len(widths), head

        def block(level: int, block_in: int) -> ICBlock:
            mid = max(num_heads, widths[level] // mid_ratio)
            mid -= mid % num_heads
            return ICBlock(block_in, widths[level], mid, block_depths[level], num_heads, attn_max_tokens, norm)

        for level in range(self.levels):
            self.add_module(f"encoder{level}", block(level, in_channels + (widths[level - 1] if level else 0)))
        for level in range(self.levels - 1):
            self.add_module(f"decoder{level}", block(level, widths[level + 1] + widths[level]))
        self.feature_conv = conv(widths[0], features, 3, padding=1)
        if head == "class":
            self.class_head = nn.Linear(features, num_classes)
        else:
            self.reconstruct_head = conv(features, in_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, h, encoded = x, x, []
        for level in range(self.levels):
            if level > 0:
                scale = 2**level
                # Multi-level pooling: the image at this stage's scale rejoins the deep features.
                h = torch.cat([max_pool_same(h, 2, 2), avg_pool_same(image, scale, scale)], dim=1)
            h = getattr(self, f"encoder{level}")(h)
            encoded.append(h)
        for level in reversed(range(self.levels - 1)):
            skip = encoded[level]
            h = resize_to(h, skip.shape[2], skip.shape[3])
            h = getattr(self, f"decoder{level}")(torch.cat([h, skip], dim=1))
        features = self.feature_conv(h)
        if self.head == "class":
            return features, self.class_head(features.mean(dim=(2, 3)))
        return features, torch.sigmoid(self.reconstruct_head(features))


# ------------------------------------------------------------------------------------------------ SqueezeNet 1.1

class ConvReLU(nn.Module):
    """``squeezenet.ConvReLU``: conv (biased unless BatchNorm follows) [+ BatchNorm] + ReLU."""

    def __init__(self, in_channels: int, features: int, kernel: int, stride: int = 1, padding: int = 0,
                 batch_norm: bool = False):
        super().__init__()
        self.conv = conv(in_channels, features, kernel, stride, padding, bias=not batch_norm)
        self.bn = BatchNorm(features) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(self.bn(x) if self.bn is not None else x)


class Fire(nn.Module):
    """Fire module: 1x1 squeeze, then concatenated 1x1 and 3x3 expands -> [B, 2*expand, H, W]."""

    def __init__(self, in_channels: int, squeeze: int, expand: int, batch_norm: bool):
        super().__init__()
        self.squeeze = ConvReLU(in_channels, squeeze, 1, batch_norm=batch_norm)
        self.expand1x1 = ConvReLU(squeeze, expand, 1, batch_norm=batch_norm)
        self.expand3x3 = ConvReLU(squeeze, expand, 3, padding=1, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


def max_pool_ceil(x: torch.Tensor, window: int = 3, stride: int = 2) -> torch.Tensor:
    """``squeezenet.max_pool_ceil``: torch's ceil_mode, written as flax pads it (also for maps below the window)."""
    pads = []
    for size in x.shape[2:]:
        out = math.ceil(max(size - window, 0) / stride) + 1
        pads.append((0, max(0, (out - 1) * stride + window - size)))
    return max_pool(x, window, stride, tuple(pads))


class SqueezeNet(nn.Module):
    """``squeezenet.SqueezeNet`` (linear class scores, optional BatchNorm): [B,C,H,W] -> logits [B,K]."""

    FIRES = (("fire2", 16, 64), ("fire3", 16, 64), ("fire4", 32, 128), ("fire5", 32, 128),
             ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256), ("fire9", 64, 256))

    def __init__(self, in_channels: int, num_classes: int, dropout_rate: float = 0.5, batch_norm: bool = False):
        super().__init__()
        self.stem = ConvReLU(in_channels, 64, 3, stride=2, batch_norm=batch_norm)
        channels = 64
        for name, squeeze, expand in self.FIRES:
            self.add_module(name, Fire(channels, squeeze, expand, batch_norm))
            channels = 2 * expand
        self.dropout = nn.Dropout(dropout_rate)
        self.classifier_conv = conv(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool_ceil(self.stem(x))
        for name, _, _ in self.FIRES:
            x = getattr(self, name)(x)
            if name in ("fire3", "fire5"):
                x = max_pool_ceil(x)
        return self.classifier_conv(self.dropout(x)).mean(dim=(2, 3))


# ---------------------------------------------------------------------------------------- ResNet-18, CBAM, SE

class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class ConvBlockAttention(nn.Module):
    """CBAM: channel gate (shared MLP over mean- and max-pooled descriptors), then a spatial gate."""

    def __init__(self, channels: int, reduction: int, spatial_kernel: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp_in, self.mlp_out = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        self.spatial_conv = conv(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def mlp(v: torch.Tensor) -> torch.Tensor:
            return self.mlp_out(F.relu(self.mlp_in(v)))

        gate = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
        x = x * gate[:, :, None, None]
        descriptors = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial_conv(descriptors))


class BasicBlock(nn.Module):
    """``resnet.BasicBlock``: two 3x3 convs with BatchNorm, optional SE/CBAM on the residual, projection shortcut."""

    def __init__(self, in_channels: int, filters: int, stride: int, attention: Optional[str], reduction: int,
                 spatial_kernel: int):
        super().__init__()
        self.conv1 = conv(in_channels, filters, 3, stride, padding=1, bias=False)
        self.bn1 = BatchNorm(filters)
        self.conv2 = conv(filters, filters, 3, padding=1, bias=False)
        self.bn2 = BatchNorm(filters)
        self.attention = attention  # the child's name: "se" | "cbam" | None
        if attention == "se":
            self.se = SqueezeExcitation(filters, reduction)
        elif attention == "cbam":
            self.cbam = ConvBlockAttention(filters, reduction, spatial_kernel)
        elif attention is not None:
            raise ValueError(f"torch_models: attention={attention!r}; expected 'se', 'cbam' or None")
        self.project = stride != 1 or in_channels != filters
        if self.project:
            self.downsample_conv = conv(in_channels, filters, 1, stride, bias=False)
            self.downsample_bn = BatchNorm(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.attention is not None:
            residual = getattr(self, self.attention)(residual)
        shortcut = self.downsample_bn(self.downsample_conv(x)) if self.project else x
        return F.relu(residual + shortcut)


class ResNet(nn.Module):
    """``resnet.ResNet`` (torchvision layout): [B,C,H,W] -> logits [B,K]."""

    def __init__(self, in_channels: int, num_classes: int, stage_sizes: Sequence[int] = (2, 2, 2, 2),
                 attention: Optional[str] = None, reduction: int = 16, spatial_kernel: int = 7, width: int = 64):
        super().__init__()
        self.stem_conv = conv(in_channels, width, 7, 2, padding=3, bias=False)
        self.stem_bn = BatchNorm(width)
        self.block_names, channels = [], width
        for stage, num_blocks in enumerate(stage_sizes):
            for block in range(num_blocks):
                name, filters = f"layer{stage + 1}_block{block}", width * 2**stage
                stride = 2 if stage > 0 and block == 0 else 1
                self.add_module(name, BasicBlock(channels, filters, stride, attention, reduction, spatial_kernel))
                self.block_names.append(name)
                channels = filters
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem_bn(self.stem_conv(x))), 3, 2, padding=1)  # torch pads max-pool by -inf
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.fc(x.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------------------- ViT

class EncoderBlock(nn.Module):
    """``vit.EncoderBlock``: pre-LN attention and GELU (tanh approximation, flax's default) MLP, tokens [B,N,D]."""

    def __init__(self, hidden_dim: int, num_heads: int, mlp_dim: int, dropout_rate: float):
        super().__init__()
        self.ln_attn = layer_norm(hidden_dim)
        self.attn = FlaxAttention(hidden_dim, num_heads, dropout_rate)
        self.ln_mlp = layer_norm(hidden_dim)
        self.mlp_in, self.mlp_out = nn.Linear(hidden_dim, mlp_dim), nn.Linear(mlp_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.dropout(self.attn(self.ln_attn(tokens)))
        y = self.dropout(F.gelu(self.mlp_in(self.ln_mlp(tokens)), approximate="tanh"))
        return tokens + self.dropout(self.mlp_out(y))


class VisionTransformer(nn.Module):
    """``vit.VisionTransformer``: [B,C,H,W] -> logits [B,K], patches of ``patch_size`` (floor division)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int], patch_size: int = 8,
                 hidden_dim: int = 64, depth: int = 2, num_heads: int = 2, mlp_dim: int = 128,
                 dropout_rate: float = 0.1):
        super().__init__()
        num_patches = (image_size[0] // patch_size) * (image_size[1] // patch_size)
        self.patch_embed = nn.Conv2d(in_channels, hidden_dim, patch_size, patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.position_embedding = nn.Parameter(0.02 * torch.randn(1, num_patches + 1, hidden_dim))
        self.dropout = nn.Dropout(dropout_rate)
        self.depth = depth
        for layer in range(depth):
            self.add_module(f"block{layer}", EncoderBlock(hidden_dim, num_heads, mlp_dim, dropout_rate))
        self.ln_final = layer_norm(hidden_dim)
        self.head = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D], row-major patches
        tokens = torch.cat([self.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.dropout(tokens + self.position_embedding)
        for layer in range(self.depth):
            tokens = getattr(self, f"block{layer}")(tokens)
        return self.head(self.ln_final(tokens)[:, 0])


# ---------------------------------------------------------------------------------------------------- registry

# Copies of flax_fld's presets (the twin imports nothing from flax_fld); tests/test_torch_twin.py checks they agree.
ICFDNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(widths=(8, 16), block_depths=(2, 1), num_heads=2, attn_max_tokens=16),
    "cpu": dict(widths=(4, 8, 16), block_depths=(3, 2, 1), num_heads=2, attn_max_tokens=64, mid_ratio=1),
    "paper": dict(widths=(32, 64, 128, 256), block_depths=(4, 3, 2, 1), num_heads=4, attn_max_tokens=256),
}
VIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=8, hidden_dim=64, depth=2, num_heads=2, mlp_dim=128),
    "deit_tiny": dict(patch_size=16, hidden_dim=192, depth=12, num_heads=3, mlp_dim=768),
}


def build_icfdnet(preset: str, in_channels: int, features: int, head: str, num_classes: int,
                  norm: str = "batch", **overrides: Any) -> ICFDNet:
    """The twin of ``icfdnet.icfdnet(preset, features=..., head=..., norm=..., **overrides)``."""
    return ICFDNet(in_channels, features, head=head, num_classes=num_classes, norm=norm,
                   **{**ICFDNET_PRESETS[preset], **overrides})


def build_classifier(name: str, in_channels: int, num_classes: int, image_size: tuple[int, int], *,
                     vit_preset: str = "tiny", squeezenet_batch_norm: bool = False,
                     dropout_rate: Optional[float] = None, **overrides: Any) -> nn.Module:
    """The twin of ``flax_fld.models.get_classifier(name, ...)``; ``dropout_rate`` overrides SqueezeNet's/ViT's,
    ``overrides`` go to the constructor as they do in flax (e.g. ``width``, ``stage_sizes`` of a ResNet)."""
    if dropout_rate is not None:
        overrides["dropout_rate"] = dropout_rate
    if name == "squeezenet1_1":
        return SqueezeNet(in_channels, num_classes, batch_norm=squeezenet_batch_norm, **overrides)
    if name in ("resnet18", "cbam_resnet18", "se_resnet18"):
        attention = {"resnet18": None, "cbam_resnet18": "cbam", "se_resnet18": "se"}[name]
        return ResNet(in_channels, num_classes, attention=attention, **overrides)
    if name == "vit":
        return VisionTransformer(in_channels, num_classes, image_size, **{**VIT_PRESETS[vit_preset], **overrides})
    raise ValueError(f"torch_models: classifier={name!r}; expected one of squeezenet1_1, resnet18, "
                     "cbam_resnet18, se_resnet18, vit")
