"""Differentiable color transforms: ``Y_c`` of Algorithm 1 (``x_c = cat(Feat_1, Feat_2, Y_c)``).

Inputs are NHWC ``[B, H, W, C]`` with ``C`` in {1, 3} and values in [0, 1]. The training attack differentiates
through ``color_transform``, so every transform has finite gradients everywhere in [0, 1]^3, including gray
pixels (R = G = B, where hue is undefined) and pure black: branches that would divide by zero or take a root
of zero are fed safe values and then discarded with ``jnp.where``.

Grayscale (1-channel) B-mode input: ``"gray"`` returns it unchanged; every other space first replicates it to
RGB (R = G = B), so e.g. ``"ycbcr"`` gives (Y, 0.5, 0.5) and ``"hsv"`` gives (0, 0, V).
"""

import jax
import jax.numpy as jnp

COLOR_SPACES = ("gray", "ycbcr", "hsv", "lab", "rgb")

# ITU-R BT.601 luma weights (also the first row of the YCbCr matrix).
_LUMA = (0.299, 0.587, 0.114)

# ITU-R BT.601 full-range ("JPEG") chroma rows; the 0.5 offset is 128/255 on the [0, 1] scale.
_YCBCR = (
    _LUMA,
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)

# Linear sRGB -> CIE XYZ (D65), IEC 61966-2-1.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)


def num_color_channels(space: str) -> int:
    """Channels ``Cc`` that ``color_transform(x, space)`` returns: 1 for ``"gray"``, 3 otherwise."""
    _check_space(space)
    return 1 if space == "gray" else 3


def _check_space(space: str) -> None:
    if space not in COLOR_SPACES:
        raise ValueError(f"color: unknown color space {space!r}; expected one of {COLOR_SPACES}")


def _check_rgb(name: str, x: jax.Array) -> None:
    if jnp.ndim(x) != 4 or jnp.shape(x)[-1] != 3:
        raise ValueError(f"color.{name}: expected RGB images [B, H, W, 3], got shape {jnp.shape(x)}")


def _apply_matrix(x: jax.Array, matrix) -> jax.Array:
    return jnp.einsum("...c,dc->...d", x, jnp.asarray(matrix, x.dtype))


def rgb_to_gray(x: jax.Array) -> jax.Array:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B``: ``[B, H, W, 3] -> [B, H, W, 1]`` in [0, 1]."""
    _check_rgb("rgb_to_gray", x)
    return _apply_matrix(x, (_LUMA,))


def rgb_to_ycbcr(x: jax.Array) -> jax.Array:
    """ITU-R BT.601 full-range YCbCr (as in JPEG): ``[B, H, W, 3] -> [B, H, W, 3]``, all channels in [0, 1]."""
    _check_rgb("rgb_to_ycbcr", x)
    offset = jnp.asarray((0.0, 0.5, 0.5), x.dtype)
    return _apply_matrix(x, _YCBCR) + offset


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """HSV with Python ``colorsys`` conventions: ``[B, H, W, 3] -> [B, H, W, 3]``; H in [0, 1), S, V in [0, 1].

    Hue and saturation are set to 0 where they are undefined (gray pixels, black), with zero gradient there.
    """
    _check_rgb("rgb_to_hsv", x)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    value = jnp.max(x, axis=-1)
    chroma = value - jnp.min(x, axis=-1)
    has_value = value > 0
    saturation = jnp.where(has_value, chroma / jnp.where(has_value, value, 1.0), 0.0)
    has_hue = chroma > 0
    safe_chroma = jnp.where(has_hue, chroma, 1.0)
    rc, gc, bc = (value - r) / safe_chroma, (value - g) / safe_chroma, (value - b) / safe_chroma
    # Sector of the hexcone, with colorsys's tie-breaking order: red, then green, then blue.
    sector = jnp.where(r == value, bc - gc, jnp.where(g == value, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = jnp.where(has_hue, jnp.mod(sector / 6.0, 1.0), 0.0)
    return jnp.stack([hue, saturation, value], axis=-1)


def _srgb_to_linear(c: jax.Array) -> jax.Array:
    # The power branch gets values >= its threshold so that its (discarded) gradient is never NaN.
    power = ((jnp.maximum(c, 0.04045) + 0.055) / 1.055) ** 2.4
    return jnp.where(c <= 0.04045, c / 12.92, power)


def _lab_f(t: jax.Array) -> jax.Array:
    delta = 6.0 / 29.0
    cube_root = jnp.cbrt(jnp.maximum(t, delta**3))  # d/dt cbrt(t) is infinite at 0.
    return jnp.where(t > delta**3, cube_root, t / (3.0 * delta**2) + 4.0 / 29.0)


def rgb_to_lab(x: jax.Array) -> jax.Array:
    """CIE L*a*b* of sRGB under D65: ``[B, H, W, 3] -> [B, H, W, 3]`` in standard units.

    L in [0, 100]; a and b roughly in [-128, 127] (pure red is about (53.24, 80.09, 67.20)).
    ``color_transform(x, "lab")`` rescales these to about [0, 1] for the network.
    """
    _check_rgb("rgb_to_lab", x)
    xyz = _apply_matrix(_srgb_to_linear(x), _RGB_TO_XYZ) / jnp.asarray(_D65_WHITE, x.dtype)
    fx, fy, fz = _lab_f(xyz[..., 0]), _lab_f(xyz[..., 1]), _lab_f(xyz[..., 2])
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def color_transform(x: jax.Array, space: str) -> jax.Array:
    """``Y_c`` of Algorithm 1: the image in ``space``, scaled to about [0, 1] to sit beside the features.

    ``"gray"``: BT.601 luma (1 channel); ``"ycbcr"``: BT.601 full range; ``"hsv"``: colorsys conventions;
    ``"lab"``: ``(L / 100, (a + 128) / 255, (b + 128) / 255)`` (OpenCV's 8-bit Lab convention divided by 255);
    ``"rgb"``: the identity. A 1-channel input is returned unchanged by ``"gray"`` and replicated to RGB for
    every other space.

    Args:
        x: ``[B, H, W, C]``, ``C`` in {1, 3}, values in [0, 1].
        space: one of ``COLOR_SPACES``.

    Returns:
        ``[B, H, W, num_color_channels(space)]``.
    """
    _check_space(space)
    if jnp.ndim(x) != 4 or jnp.shape(x)[-1] not in (1, 3):
        raise ValueError(f"color.color_transform: expected [B, H, W, C] with C in (1, 3), got shape {jnp.shape(x)}")
    x = jnp.asarray(x)
    if x.shape[-1] == 1:
        if space == "gray":
            return x
        x = jnp.repeat(x, 3, axis=-1)
    if space == "gray":
        return rgb_to_gray(x)
    if space == "ycbcr":
        return rgb_to_ycbcr(x)
    if space == "hsv":
        return rgb_to_hsv(x)
    if space == "lab":
        lab = rgb_to_lab(x)
        return (lab + jnp.asarray((0.0, 128.0, 128.0), x.dtype)) / jnp.asarray((100.0, 255.0, 255.0), x.dtype)
    return x
