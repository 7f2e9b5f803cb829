"""Vision Transformer (Dosovitskiy et al. 2021), the ViT row of the paper's Table 1.

Patch embedding (a strided convolution), a learnable class token, a learnable position embedding whose
length is fixed at init from the input size, pre-LayerNorm encoder blocks, and a Dense head on the class
token. Dropout uses the 'dropout' rng collection. NHWC in, logits [B, K] out. ``dtype`` is the computation
dtype of the patch embedding, attention and Dense layers (``train.compute_dtype``); LayerNorm computes in
float32 and every parameter is float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

VIT_PRESETS: dict[str, dict[str, Any]] = {
    # Sized for tests and the CPU demo (32-64 px inputs -> 16-64 patches).
    "tiny": dict(patch_size=8, hidden_dim=64, depth=2, num_heads=2, mlp_dim=128),
    # DeiT-Tiny (Touvron et al. 2021): 224 px -> 14x14 patches of 16 px.
    "deit_tiny": dict(patch_size=16, hidden_dim=192, depth=12, num_heads=3, mlp_dim=768),
}


def vit_preset(name: str) -> dict[str, Any]:
    """Keyword arguments of a named ViT preset ('tiny' | 'deit_tiny')."""
    if name not in VIT_PRESETS:
        raise ValueError(f"vit.py: preset={name!r}; expected one of {sorted(VIT_PRESETS)}")
    return dict(VIT_PRESETS[name])


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: tokens [B,N,D] -> [B,N,D]."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float
    dtype: Any = None  # the attention's and MLP's computation dtype (LayerNorm computes in float32)

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool) -> jax.Array:
        y = nn.LayerNorm(name="ln_attn")(tokens)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.dropout_rate,
                                            deterministic=not train, dtype=self.dtype, name="attn")(y, y)
        tokens = tokens + nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.LayerNorm(name="ln_mlp")(tokens)
        y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(y))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.Dense(tokens.shape[-1], dtype=self.dtype, name="mlp_out")(y)
        return tokens + nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class VisionTransformer(nn.Module):
    """ViT classifier: [B,H,W,C] -> logits [B,K]; H and W are cut into floor(H/patch) x floor(W/patch) patches.

    Attributes:
        num_classes: K.
        patch_size, hidden_dim, depth, num_heads, mlp_dim: the usual ViT sizes.
        dropout_rate: dropout on embeddings, attention weights and MLP/attention outputs.
        dtype: computation dtype (float32 or bfloat16); parameters are float32 either way.
    """

    num_classes: int
    patch_size: int = 8
    hidden_dim: int = 64
    depth: int = 2
    num_heads: int = 2
    mlp_dim: int = 128
    dropout_rate: float = 0.1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        p = self.patch_size
        if x.shape[1] < p or x.shape[2] < p:
            raise ValueError(f"vit.py: image {x.shape[1]}x{x.shape[2]} is smaller than patch_size={p}")
        patches = nn.Conv(self.hidden_dim, (p, p), (p, p), padding="VALID", dtype=self.dtype, name="patch_embed")(x)
        batch = patches.shape[0]
        tokens = patches.reshape(batch, -1, self.hidden_dim)  # [B, N, D]

        class_token = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_dim))
        tokens = jnp.concatenate([jnp.broadcast_to(class_token, (batch, 1, self.hidden_dim)), tokens], axis=1)
        if self.has_variable("params", "position_embedding"):
            initialised = self.get_variable("params", "position_embedding").shape[1]
            if initialised != tokens.shape[1]:
                raise ValueError(f"vit.py: {tokens.shape[1] - 1} patches but the position embedding was initialised "
                                 f"for {initialised - 1}; use the image size the model was initialised with")
        position = self.param("position_embedding", nn.initializers.normal(stddev=0.02),
                              (1, tokens.shape[1], self.hidden_dim))
        tokens = nn.Dropout(self.dropout_rate, deterministic=not train)(tokens + position)

        for layer in range(self.depth):
            tokens = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype,
                                  name=f"block{layer}")(tokens, train)
        class_embedding = nn.LayerNorm(name="ln_final")(tokens)[:, 0]
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(class_embedding)


def vit(num_classes: int, preset: str = "tiny", **overrides: Any) -> VisionTransformer:
    """A ViT from a named preset, with any size overridden by keyword (e.g. depth=4)."""
    return VisionTransformer(num_classes=num_classes, **{**vit_preset(preset), **overrides})
