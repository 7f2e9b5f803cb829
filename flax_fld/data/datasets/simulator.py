"""Procedural B-mode simulator of the hepato-renal view for four steatosis grades (pure numpy, seeded).

The paper's data set is private, so the embedded benchmark is generated. Each scan is driven by a latent
liver fat fraction and reproduces the cues sonographers grade by:

* liver echogenicity rising relative to the kidney cortex (the hepato-renal index),
* posterior beam attenuation: the deep liver darkens with fat,
* blurring and loss of the portal-vein walls, the renal capsule and the diaphragm,
* fully developed speckle: a complex Gaussian scatterer field filtered by an anisotropic point spread
  function gives a Rayleigh envelope, log-compressed over a 40-60 dB dynamic range,
* sector-scan geometry: speckle lives on a (depth, angle) beam grid and is scan-converted, so lateral
  speckle grows with depth as on a real curvilinear probe.

Per-scan nuisances (kidney and liver reflectivity, gain, time-gain compensation, dynamic range, probe
position) let adjacent grades overlap, so mild and moderate, which have two neighbours each, are the hard
classes, as in the paper. Coordinates are normalised: x in [0, 1] left to right, depth y in [0, 1] down.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

GRADES: tuple[str, ...] = ("normal", "mild", "moderate", "severe")
# Images per grade in the paper's test split (264 images); the generated data set keeps these proportions.
PAPER_TEST_COUNTS: dict[str, int] = {"normal": 69, "mild": 90, "moderate": 66, "severe": 39}
# Fat fraction ranges per grade, the S0-S3 thresholds of Byra et al. 2018 (5 %, 34 %, 67 %).
FAT_FRACTION_RANGES: dict[str, tuple[float, float]] = {
    "normal": (0.0, 0.05),
    "mild": (0.05, 0.34),
    "moderate": (0.34, 0.67),
    "severe": (0.67, 0.95),
}

# Tissue labels of SimulatedScan.tissue (used by tests and the preview, not by the model).
OUTSIDE, LIVER, KIDNEY_CORTEX, OTHER = 0, 1, 2, 3

_APEX_DEPTH = -0.08  # The probe apex sits just above the image, as on a curvilinear probe.
_MIN_RADIUS = 0.12
_MAX_RADIUS = 1.06


@dataclasses.dataclass(frozen=True)
class SimulatedScan:
    """One simulated B-mode frame.

    image: float32 [S, S] in [0, 1], log-compressed and scan-converted (0 outside the sector).
    tissue: int8 [S, S] tissue label per pixel (OUTSIDE, LIVER, KIDNEY_CORTEX, OTHER).
    fat_fraction: the latent liver fat fraction in [0, 1] that drove the scan.
    """

    image: np.ndarray
    tissue: np.ndarray
    fat_fraction: float


def grade_counts(num_examples: int) -> dict[str, int]:
    """Images per grade for a data set of `num_examples`, in the paper's proportions (largest remainder)."""
    if num_examples < len(GRADES):
        raise ValueError(f"num_examples={num_examples} is too small: need at least {len(GRADES)}")
    total = sum(PAPER_TEST_COUNTS.values())
    exact = {g: num_examples * PAPER_TEST_COUNTS[g] / total for g in GRADES}
    counts = {g: int(np.floor(v)) for g, v in exact.items()}
    by_remainder = sorted(GRADES, key=lambda g: (counts[g] - exact[g], GRADES.index(g)))
    for grade in by_remainder[: num_examples - sum(counts.values())]:
        counts[grade] += 1
    return counts


def sample_fat_fraction(rng: np.random.Generator, grade: str) -> float:
    """Latent fat fraction of one scan, uniform in the grade's range."""
    low, high = FAT_FRACTION_RANGES[grade]
    return float(rng.uniform(low, high))


def _ellipse_radius(x, y, center, axes, angle):
    """Normalised elliptic radius (1 on the boundary) of points (x, y)."""
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = x - center[0], y - center[1]
    u = (cos * dx + sin * dy) / axes[0]
    v = (-sin * dx + cos * dy) / axes[1]
    return np.sqrt(u * u + v * v)


def _anatomy(rng, x, y, radius, fat):
    """Echo power of the tissue at beam-grid points (x, y) plus the fat-sensitive bright walls.

    Returns (background [R, A], walls [R, A], tissue labels [R, A]); the walls layer is blurred and faded
    by the caller according to the fat fraction.
    """
    kidney_reflectivity = np.exp(rng.normal(0.0, 0.2))
    # Fat raises backscatter (hepato-renal index 1 -> ~5); the nuisance keeps adjacent grades overlapping.
    liver_reflectivity = 1.1 * np.exp(rng.normal(0.0, 0.2)) * (1.0 + 4.0 * fat)

    background = np.full(x.shape, liver_reflectivity)
    walls = np.zeros(x.shape)
    tissue = np.full(x.shape, LIVER, dtype=np.int8)

    # Subcutaneous fat and abdominal wall muscle above the liver capsule.
    wall_depth = radius - _MIN_RADIUS
    subcutaneous = wall_depth < rng.uniform(0.04, 0.07)
    muscle = ~subcutaneous & (wall_depth < rng.uniform(0.09, 0.12))
    background[subcutaneous] = 2.0
    background[muscle] = 0.5
    tissue[subcutaneous | muscle] = OTHER

    # Diaphragm: a bright arc at the deep left; below it lung gives a dim mirror-like field.
    dia_center = (rng.uniform(0.8, 0.95), rng.uniform(0.05, 0.2))
    dia_radius = rng.uniform(0.8, 0.9)
    dia_distance = np.hypot(x - dia_center[0], y - dia_center[1]) - dia_radius
    beyond = dia_distance > 0
    background[beyond] = 0.25
    tissue[beyond] = OTHER
    walls += 6.0 * np.exp(-0.5 * (dia_distance / 0.012) ** 2)

    # Right kidney: hyperechoic sinus, dark medullary pyramids, cortex, bright capsule.
    k_center = (rng.uniform(0.55, 0.68), rng.uniform(0.58, 0.7))
    k_axes = (rng.uniform(0.2, 0.26), rng.uniform(0.1, 0.13))
    k_rho = _ellipse_radius(x, y, k_center, k_axes, rng.uniform(-0.5, -0.2))
    cortex = (k_rho > 0.72) & (k_rho <= 1.0)
    medulla = (k_rho > 0.45) & (k_rho <= 0.72)
    sinus = k_rho <= 0.45
    background[cortex] = kidney_reflectivity
    background[medulla] = 0.3 * kidney_reflectivity
    background[sinus] = 2.5
    tissue[cortex] = KIDNEY_CORTEX
    tissue[medulla | sinus] = OTHER
    walls += 3.0 * np.exp(-0.5 * ((k_rho - 1.0) / 0.05) ** 2)

    # Portal veins: anechoic lumens with echogenic walls (the walls fade with fat).
    for _ in range(rng.integers(2, 5)):
        center = (rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.55))
        axes = (rng.uniform(0.025, 0.06), rng.uniform(0.02, 0.035))
        rho = _ellipse_radius(x, y, center, axes, rng.uniform(-1.0, 1.0))
        lumen = (rho < 1.0) & (tissue == LIVER)
        background[lumen] = 0.02
        tissue[lumen] = OTHER
        walls += 4.0 * np.exp(-0.5 * ((rho - 1.1) / 0.15) ** 2) * (tissue == LIVER)
    return background, walls, tissue


def simulate_bmode(rng: np.random.Generator, fat_fraction: float, image_size: int) -> SimulatedScan:
    """Simulate one sector-scan B-mode frame [S, S] for a liver with the given fat fraction."""
    size = int(image_size)
    fat = float(np.clip(fat_fraction, 0.0, 1.0))
    half_angle = rng.uniform(0.55, 0.68)  # ~32-39 degrees each side of the beam axis.

    # Beam grid: rows = depth samples along each line, columns = scan lines.
    radius = np.linspace(_MIN_RADIUS, _MAX_RADIUS, size)[:, None]
    angle = np.linspace(-half_angle, half_angle, size)[None, :]
    beam_x = 0.5 + radius * np.sin(angle)
    beam_y = _APEX_DEPTH + radius * np.cos(angle)

    background, walls, tissue = _anatomy(rng, beam_x, beam_y, radius * np.ones_like(angle), fat)
    # Fat scatters the beam: specular walls lose definition (fade and blur) as fat rises.
    wall_blur = 0.3 + 2.5 * fat * size / 64
    walls = ndimage.gaussian_filter(walls, wall_blur) * (1.0 - 0.85 * fat)
    reflectivity = background + walls

    # Fully developed speckle: circular complex Gaussian scatterers weighted by sqrt(reflectivity),
    # filtered by an anisotropic PSF (finer axially than laterally; coarser as fat degrades focusing).
    scatterers = rng.standard_normal((2, size, size)) * np.sqrt(reflectivity / 2.0)
    psf_sigma = (0.6 * (1.0 + 0.4 * fat) * size / 64, 0.9 * (1.0 + 0.4 * fat) * size / 64)
    in_phase = ndimage.gaussian_filter(scatterers[0], psf_sigma)
    quadrature = ndimage.gaussian_filter(scatterers[1], psf_sigma)
    power = in_phase**2 + quadrature**2  # Squared Rayleigh envelope.
    # The scanner's post-detection smoothing fills the deepest speckle nulls before log compression.
    power = ndimage.gaussian_filter(power, (0.5 * psf_sigma[0], 0.5 * psf_sigma[1]))
    power /= np.mean(power[tissue == LIVER]) / np.mean(reflectivity[tissue == LIVER])

    # Residual attenuation after time-gain compensation: fat adds dB per unit depth (round trip).
    attenuation_db_per_depth = 18.0 * fat + rng.normal(0.0, 2.0)
    power = power * 10.0 ** (-attenuation_db_per_depth * (radius - _MIN_RADIUS) / 10.0)
    dynamic_range_db = rng.uniform(40.0, 60.0)
    noise_floor = 10.0 ** (-dynamic_range_db / 10.0) * rng.exponential(1.0, power.shape)
    power_db = 10.0 * np.log10(power + noise_floor)
    gain_db = rng.normal(0.0, 1.5)  # The operator's gain knob; a normal liver lands near mid-grey.
    display = np.clip(0.5 + (power_db + gain_db) / dynamic_range_db, 0.0, 1.0)

    # Scan conversion to the Cartesian display grid.
    pixel = (np.arange(size) + 0.5) / size
    image_y, image_x = np.meshgrid(pixel, pixel, indexing="ij")
    pixel_radius = np.hypot(image_x - 0.5, image_y - _APEX_DEPTH)
    pixel_angle = np.arctan2(image_x - 0.5, image_y - _APEX_DEPTH)
    row = (pixel_radius - _MIN_RADIUS) / (_MAX_RADIUS - _MIN_RADIUS) * (size - 1)
    column = (pixel_angle + half_angle) / (2.0 * half_angle) * (size - 1)
    inside = (row >= 0) & (row <= size - 1) & (column >= 0) & (column <= size - 1)
    coords = np.stack([row, column])
    image = ndimage.map_coordinates(display, coords, order=1, mode="nearest") * inside
    labels = ndimage.map_coordinates(tissue, coords, order=0, mode="nearest") * inside
    return SimulatedScan(image.astype(np.float32), labels.astype(np.int8), fat)


def simulate_example(seed: int, example_id: int, grade: str, image_size: int) -> SimulatedScan:
    """The scan with id `example_id` of the data set `seed`: a pure function of its arguments."""
    if grade not in FAT_FRACTION_RANGES:
        raise ValueError(f"unknown grade {grade!r}; expected one of {GRADES}")
    rng = np.random.default_rng([int(seed), int(example_id)])
    return simulate_bmode(rng, sample_fat_fraction(rng, grade), image_size)


def split_plan(
    num_examples: int, seed: int, fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)
) -> dict[str, list[tuple[int, str]]]:
    """Stratified train/validation/test assignment: split -> [(example_id, grade)], ids 0..N-1 unique.

    With the default 1056 examples the test split has exactly the paper's 69/90/66/39 images.
    """
    rng = np.random.default_rng([int(seed), 2**31 - 1])
    ids = rng.permutation(num_examples)
    plan: dict[str, list[tuple[int, str]]] = {"train": [], "validation": [], "test": []}
    start = 0
    for grade, count in grade_counts(num_examples).items():
        grade_ids = ids[start : start + count]
        start += count
        num_test = int(round(fractions[2] * count))
        num_validation = int(round(fractions[1] * count))
        plan["test"] += [(int(i), grade) for i in grade_ids[:num_test]]
        plan["validation"] += [(int(i), grade) for i in grade_ids[num_test : num_test + num_validation]]
        plan["train"] += [(int(i), grade) for i in grade_ids[num_test + num_validation :]]
    return {split: sorted(entries) for split, entries in plan.items()}
