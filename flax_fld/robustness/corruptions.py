"""Ultrasound image corruptions at five severities, in the manner of ImageNet-C and MedMNIST-C.

A model that grades a scan should keep grading it when the image degrades the way scans degrade between
scanners, presets and operators. Each corruption maps a batch ``[N, H, W, C]`` in [0, 1] to a batch of the
same shape in [0, 1]; severity 1-5 indexes an increasing parameter; lengths scale with the image side, so
64 px and 224 px images get the same corruption in physical terms. Random parts (noise, the shadow's place)
are drawn from ``rng``, so a corrupted split is a pure function of (images, severity, seed).

Generic: speckle noise (multiplicative Gaussian), motion blur (probe motion, along a random axis),
brightness up and down (overall gain), contrast down (dynamic range), JPEG compression (exported frames),
pixelate (low-resolution exports). Ultrasound-specific: depth attenuation (a grey ramp darkening with depth,
residual attenuation a TGC did not compensate), acoustic shadow (a rib or gas shadow: a dark band from the top
to the bottom of the sector) and haze (near-field clutter from reverberation in the abdominal wall).

The sector (where the image is not 0) stays the sector: corruptions that would light up the black
background outside it are masked back to it.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import PIL.Image
from scipy import ndimage

SEVERITIES = (1, 2, 3, 4, 5)


def _sector(images: np.ndarray) -> np.ndarray:
    return np.any(images > 0, axis=-1, keepdims=True)


def _in_sector(images: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    return np.clip(np.where(_sector(images), corrupted, 0.0), 0.0, 1.0).astype(np.float32)


def speckle_noise(images, severity, rng):
    scale = (0.1, 0.15, 0.2, 0.3, 0.4)[severity - 1]
    return _in_sector(images, images * (1.0 + rng.normal(0.0, scale, images.shape)))


def motion_blur(images, severity, rng):
    length = max(2, int(round((3, 5, 7, 9, 12)[severity - 1] * images.shape[1] / 64)))
    axis = 1 + int(rng.integers(0, 2))  # along depth or across it
    return _in_sector(images, ndimage.uniform_filter1d(images, length, axis=axis, mode="nearest"))


def brightness_up(images, severity, rng):
    del rng
    return _in_sector(images, images + (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1])


def brightness_down(images, severity, rng):
    del rng
    return _in_sector(images, images - (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1])


def contrast_down(images, severity, rng):
    del rng
    factor = (0.8, 0.65, 0.5, 0.4, 0.3)[severity - 1]
    means = images.mean(axis=(1, 2, 3), keepdims=True)
    return _in_sector(images, (images - means) * factor + means)


def jpeg(images, severity, rng):
    del rng
    quality = (60, 40, 25, 15, 8)[severity - 1]
    out = np.empty_like(images, dtype=np.float32)
    for index, image in enumerate(np.round(images * 255.0).astype(np.uint8)):
        buffer = io.BytesIO()
        PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(PIL.Image.open(io.BytesIO(buffer.getvalue())), np.float32) / 255.0
        out[index] = decoded.reshape(image.shape)
    return _in_sector(images, out)


def pixelate(images, severity, rng):
    del rng
    factor = (0.8, 0.6, 0.5, 0.4, 0.3)[severity - 1]
    size = images.shape[1]
    small = max(2, int(round(size * factor)))
    out = np.empty_like(images, dtype=np.float32)
    for index, image in enumerate(np.round(images * 255.0).astype(np.uint8)):
        pil = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        pil = pil.resize((small, small), PIL.Image.BOX).resize((size, size), PIL.Image.NEAREST)
        out[index] = (np.asarray(pil, np.float32) / 255.0).reshape(image.shape)
    return _in_sector(images, out)


def depth_attenuation(images, severity, rng):
    del rng
    drop = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    depth = np.linspace(0.0, 1.0, images.shape[1])[None, :, None, None]
    return _in_sector(images, images - drop * depth)


def acoustic_shadow(images, severity, rng):
    width = (0.05, 0.1, 0.15, 0.2, 0.25)[severity - 1]
    columns = np.linspace(0.0, 1.0, images.shape[2])
    out = images.copy()
    for index in range(len(images)):
        center = rng.uniform(0.2, 0.8)
        shadow = np.abs(columns - center) < width / 2
        out[index][:, shadow] *= 0.15
    return _in_sector(images, out)


def haze(images, severity, rng):
    del rng
    strength = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    depth = np.linspace(0.0, 1.0, images.shape[1])[None, :, None, None]
    return _in_sector(images, images + strength * (1.0 - images) * np.exp(-depth / 0.25))


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "speckle_noise": speckle_noise,
    "motion_blur": motion_blur,
    "brightness_up": brightness_up,
    "brightness_down": brightness_down,
    "contrast_down": contrast_down,
    "jpeg": jpeg,
    "pixelate": pixelate,
    "depth_attenuation": depth_attenuation,
    "acoustic_shadow": acoustic_shadow,
    "haze": haze,
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """``CORRUPTIONS[name]`` at ``severity`` (1-5) on ``images [N, H, W, C]`` in [0, 1]; float32, same shape."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {sorted(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"corruption severity {severity!r} is not one of {SEVERITIES}")
    rng = np.random.default_rng([int(seed), sorted(CORRUPTIONS).index(name), int(severity)])
    return CORRUPTIONS[name](np.asarray(images, np.float32), int(severity), rng)
