"""Simulator version 2: a physical B-mode pipeline of the liver whose grade shows only the way it shows clinically.

Version 1 (``simulator.py``) let the grade coarsen the speckle and darken the depth profile directly, and its
scanner settings barely varied, so global image statistics read the grade. Here the fat fraction changes two
tissue properties and nothing else; everything a sonographer sees follows from the signal chain:

    scatterers (depth x scan line) weighted by tissue backscatter
    -> point-spread blur set by the frequency and the focus
    -> round-trip attenuation through subcutaneous fat, muscle, liver (dB/cm/MHz)
    -> electronic noise added before the receive gain
    -> time-gain compensation (a preset with slider offsets, or an auto-optimiser that flattens the liver)
    -> envelope, log compression to a dynamic range, overall gain, grey map, speckle reduction
    -> scan conversion of the curvilinear sector, then an area-average down to the data set's image size

Tissue properties (normal liver backscatter is the 0 dB reference):

* Liver backscatter rises with fat by up to +11 dB and liver attenuation from 0.5 to 0.85 dB/cm/MHz, both on a
  mildly concave curve of the fat fraction (``fat_effect``). Backscatter: the quantitative-ultrasound
  backscatter coefficient rises by about an order of magnitude from no to marked steatosis (Lin et al.,
  Clin Gastroenterol Hepatol 2015). Attenuation: about 0.5 dB/cm/MHz in normal liver and 0.8-0.9 in marked steatosis (Lin, Ophir and
  Potter, Ultrasound Med Biol 1988; controlled-attenuation / attenuation-imaging studies such as Ferraioli et
  al., 2019, report grade cut-offs between these ends).
* Renal cortex about 1 dB below normal liver (cortex iso- to slightly hypoechoic to normal liver), so the
  hepatorenal index (liver over cortex grey level, same depth) follows from the backscatter rise: its medians
  measure 1.19 / 1.30 / 1.55 / 1.78 from normal to severe at 64 px (targets near 1.05 / 1.3 / 1.6 / > 1.8),
  around the published cut-offs for any steatosis (1.28, Marshall et al., AJR 2012; 1.49, Webb et al., AJR
  2009); ``flax_fld/evaluation/shortcut_probes.py`` measures them (``launch/probe_simulator.py``).
* Portal-vein walls are fixed specular reflectors about 10 dB above normal parenchyma: as the parenchyma
  brightens the wall contrast fades (no blur knob). The diaphragm is a strong reflector deep in the view: it
  fades when liver attenuation pushes its echo toward the electronic noise floor.
* Subcutaneous fat 0.6 and muscle 1.1 dB/cm/MHz (compilations of Goss et al., J Acoust Soc Am 1978/1980, and
  Duck, Physical Properties of Tissue, 1990); speed of sound 1540 m/s.

Nothing else depends on the grade: speckle size is set by the frequency, focus and depth setting; each nuisance
of ``ScannerSettings`` is drawn independently of the fat fraction (the gain and TGC auto-optimisers read the
image, as a scanner's do, but their targets are drawn independently). Two sites share every range except
the frequency and the TGC presets, so that a model can be trained on one site's scanners and tested on the
other's (``SITES``). Omitted on purpose: frequency-dependent downshift of the speckle with depth (a real but
second-order grade effect), reverberation, refraction, the mirror image below the diaphragm.

All lengths in cm. Vectorised numpy; a 64 px scan takes a few milliseconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from flax_fld.data.datasets import simulator

# Tissue labels of the v2 scan (v1's OUTSIDE, LIVER, KIDNEY_CORTEX, OTHER keep their values).
OUTSIDE, LIVER, KIDNEY_CORTEX, OTHER = simulator.OUTSIDE, simulator.LIVER, simulator.KIDNEY_CORTEX, simulator.OTHER
PORTAL_WALL, DIAPHRAGM = 4, 5

SPEED_OF_SOUND_MM_PER_US = 1.54
PROBE_RADIUS_CM = 5.0  # Curvilinear abdominal probe (C5-2 class).
MAX_BACKSCATTER_RISE_DB = 11.0
NORMAL_LIVER_ATTENUATION = 0.5  # dB/cm/MHz.
MAX_ATTENUATION_RISE = 0.35  # 0.5 -> 0.85 dB/cm/MHz.
FAT_ATTENUATION, MUSCLE_ATTENUATION, KIDNEY_ATTENUATION = 0.6, 1.1, 1.0
CORTEX_LEVEL_DB = -1.0
PORTAL_WALL_LEVEL_DB = 10.0
DIAPHRAGM_LEVEL_DB = 22.0
SATURATING_FAT_FRACTION = 0.8  # The concave curve reaches its maximum here.
FAT_EFFECT_POWER = 0.75

# Site A trains, site B tests the shift: disjoint frequencies and TGC presets, every other range shared.
SITES: dict[str, dict[str, tuple[float, ...]]] = {
    "A": {"frequency_mhz": (2.0, 3.5), "tgc_presets": (0.5, 0.6)},
    "B": {"frequency_mhz": (3.5, 5.0), "tgc_presets": (0.4, 0.7)},
    "all": {"frequency_mhz": (2.0, 5.0), "tgc_presets": (0.4, 0.5, 0.6, 0.7)},
}


def fat_effect(fat_fraction: float) -> float:
    """Mildly concave 0 -> 1 map of the fat fraction that scales both the backscatter and the attenuation rise.

    The power 0.75 spaces the grades' mean backscatter about evenly (0.8, 3.8, 7.8, 11 dB for the grades' mean
    fat fractions), as the published hepatorenal-index medians are roughly evenly spaced.
    """
    return float(np.clip(fat_fraction / SATURATING_FAT_FRACTION, 0.0, 1.0) ** FAT_EFFECT_POWER)


def liver_properties(fat_fraction: float) -> tuple[float, float]:
    """(backscatter rise in dB over normal liver, attenuation in dB/cm/MHz) of a liver with this fat fraction."""
    effect = fat_effect(fat_fraction)
    return MAX_BACKSCATTER_RISE_DB * effect, NORMAL_LIVER_ATTENUATION + MAX_ATTENUATION_RISE * effect


@dataclasses.dataclass(frozen=True)
class Patient:
    """What belongs to the body, drawn once per patient: anatomy in cm and tissue variability."""

    fat_fraction: float
    subcutaneous_fat_cm: float  # Body habitus.
    muscle_cm: float
    liver_level_db: float  # Patient-to-patient variation of normal-liver backscatter.
    cortex_level_db: float
    attenuation_jitter: float  # dB/cm/MHz, biological variation around the fat-driven value.
    hepatorenal_view: bool  # False: intercostal view without the kidney.
    kidney: tuple[float, ...]  # centre x, centre depth below the capsule, semi-axes, angle.
    diaphragm: tuple[float, ...]  # centre x, centre z, radius.
    portal_veins: tuple[tuple[float, ...], ...]
    hepatic_veins: tuple[tuple[float, ...], ...]
    rib_shadow: float  # Angle (fraction of the sector from its left edge) of a rib shadow; < 0: none.


@dataclasses.dataclass(frozen=True)
class ScannerSettings:
    """What belongs to the exam, drawn independently of the patient's grade."""

    frequency_mhz: float
    depth_cm: float
    focus_cm: float
    half_angle: float  # Radians each side of the probe axis.
    dynamic_range_db: float
    gain_mode: str  # auto: the operator sets the near-field liver to a grey target; manual: a random offset.
    gain_target: float  # auto: target grey of the near-field liver; manual: the offset in dB.
    tgc_mode: str  # preset | auto.
    tgc_preset: float  # dB/cm/MHz the preset compensates (preset mode).
    tgc_auto_fraction: float  # Share of the liver's attenuation the auto-optimiser flattens (auto mode).
    tgc_sliders_db: tuple[float, ...]  # Eight slider offsets from top to bottom.
    noise_db: float  # Electronic noise floor relative to the 0 dB reference echo at the skin.
    speckle_reduction: float  # 0: none; 1: fully smoothed.
    grey_gamma: float  # The grey map's curve.

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["tgc_sliders_db"] = ";".join(f"{v:.2f}" for v in self.tgc_sliders_db)
        return values


def draw_patient(rng: np.random.Generator, fat_fraction: float) -> Patient:
    """Anatomy and tissue variability; only ``fat_fraction`` carries the grade."""
    def vein(depth_range):
        return (rng.uniform(-5.0, 5.0), rng.uniform(*depth_range), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.5),
                rng.uniform(-1.0, 1.0))

    hepatorenal = bool(rng.uniform() < 0.75)
    return Patient(
        fat_fraction=float(fat_fraction),
        subcutaneous_fat_cm=rng.uniform(1.0, 4.0),
        muscle_cm=rng.uniform(0.5, 1.5),
        liver_level_db=rng.normal(0.0, 1.5),
        cortex_level_db=CORTEX_LEVEL_DB + rng.normal(0.0, 1.5),
        attenuation_jitter=rng.normal(0.0, 0.04),
        hepatorenal_view=hepatorenal,
        kidney=(rng.uniform(0.5, 3.0), rng.uniform(5.0, 8.0), rng.uniform(4.5, 5.5), rng.uniform(2.2, 2.8),
                rng.uniform(-0.5, -0.2)),
        diaphragm=(rng.uniform(4.0, 7.0), rng.uniform(0.5, 3.0), rng.uniform(11.0, 13.5)),
        portal_veins=tuple(vein((1.5, 6.0)) for _ in range(rng.integers(2, 5))),
        hepatic_veins=tuple(vein((2.0, 7.0)) for _ in range(rng.integers(1, 4))),
        rib_shadow=-1.0 if hepatorenal or rng.uniform() < 0.5 else float(rng.choice([0.08, 0.92])),
    )


def draw_settings(rng: np.random.Generator, site: str = "all") -> ScannerSettings:
    """One exam's scanner settings from ``SITES[site]``; nothing here sees the patient."""
    ranges = SITES[site]
    depth = rng.uniform(12.0, 20.0)
    gain_mode = "auto" if rng.uniform() < 0.5 else "manual"
    tgc_mode = "auto" if rng.uniform() < 0.5 else "preset"
    return ScannerSettings(
        frequency_mhz=rng.uniform(*ranges["frequency_mhz"]),
        depth_cm=depth,
        focus_cm=rng.uniform(0.35, 0.75) * depth,
        half_angle=rng.uniform(0.5, 0.62),
        dynamic_range_db=rng.uniform(45.0, 75.0),
        gain_mode=gain_mode,
        gain_target=rng.uniform(0.35, 0.6) if gain_mode == "auto" else rng.normal(0.0, 5.0),
        tgc_mode=tgc_mode,
        tgc_preset=float(rng.choice(ranges["tgc_presets"])),
        tgc_auto_fraction=rng.uniform(0.6, 1.0),
        tgc_sliders_db=tuple(rng.normal(0.0, 3.0, 8)),
        noise_db=rng.uniform(-90.0, -70.0),
        speckle_reduction=rng.uniform(0.0, 0.7),
        grey_gamma=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
    )


def _ellipse_radius(x, z, center, axes, angle):
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dz = x - center[0], z - center[1]
    return np.hypot((cos * dx + sin * dz) / axes[0], (-sin * dx + cos * dz) / axes[1])


def tissue_maps(patient: Patient, x: np.ndarray, z: np.ndarray, beam_depth: np.ndarray):
    """Backscatter level (dB), attenuation (dB/cm/MHz) and tissue label at points (x, z) in cm.

    ``beam_depth`` is the distance from the probe face along the beam (the layers follow the probe's curve).
    """
    rise_db, liver_attenuation = liver_properties(patient.fat_fraction)
    level = np.full(x.shape, patient.liver_level_db + rise_db)
    attenuation = np.full(x.shape, liver_attenuation + patient.attenuation_jitter)
    label = np.full(x.shape, LIVER, dtype=np.int8)

    fat = beam_depth < patient.subcutaneous_fat_cm
    capsule = patient.subcutaneous_fat_cm + patient.muscle_cm
    muscle = ~fat & (beam_depth < capsule)
    level[fat], attenuation[fat], label[fat] = -3.0, FAT_ATTENUATION, OTHER
    level[muscle], attenuation[muscle], label[muscle] = -8.0, MUSCLE_ATTENUATION, OTHER
    # Bright fascia at the liver capsule and between fat and muscle.
    level = np.where(np.abs(beam_depth - capsule) < 0.12, 8.0, level)
    level = np.where(np.abs(beam_depth - patient.subcutaneous_fat_cm) < 0.1, 4.0, level)

    for center_x, depth, axis_a, axis_b, angle in patient.hepatic_veins + patient.portal_veins:
        rho = _ellipse_radius(x, z, (center_x, capsule + depth), (axis_a, axis_b), angle)
        lumen = (rho < 1.0) & (label == LIVER)
        level[lumen], attenuation[lumen], label[lumen] = -45.0, 0.2, OTHER
    for center_x, depth, axis_a, axis_b, angle in patient.portal_veins:
        rho = _ellipse_radius(x, z, (center_x, capsule + depth), (axis_a, axis_b), angle)
        wall = (rho >= 1.0) & (rho < 1.0 + 0.18 / axis_b) & (label == LIVER)
        level[wall], label[wall] = patient.liver_level_db + PORTAL_WALL_LEVEL_DB, PORTAL_WALL

    if patient.hepatorenal_view:
        kx, kdepth, ka, kb, kangle = patient.kidney
        rho = _ellipse_radius(x, z, (kx, capsule + kdepth), (ka, kb), kangle)
        inside = (rho <= 1.0) & (label == LIVER)
        attenuation[inside] = KIDNEY_ATTENUATION
        cortex, medulla, sinus = inside & (rho > 0.72), inside & (rho > 0.45) & (rho <= 0.72), inside & (rho <= 0.45)
        level[cortex] = patient.cortex_level_db
        # The cortex label marks where a sonographer puts the ROI: mid-cortex, clear of medulla and capsule.
        label[inside & (rho > 0.8) & (rho < 0.96)] = KIDNEY_CORTEX
        label[cortex & (label != KIDNEY_CORTEX)] = OTHER
        level[medulla], label[medulla] = patient.cortex_level_db - 12.0, OTHER
        level[sinus], label[sinus] = 8.0, OTHER
        capsule_ring = (rho > 1.0) & (rho < 1.06)
        level[capsule_ring] = 6.0

    dx, dz, radius = patient.diaphragm
    distance = np.hypot(x - dx, z - dz) - radius
    beyond = (distance > 0.2) & (beam_depth > capsule)
    level[beyond], attenuation[beyond], label[beyond] = -12.0, 0.5, OTHER
    band = (np.abs(distance - 0.1) <= 0.1) & (beam_depth > capsule)
    level[band], label[band] = DIAPHRAGM_LEVEL_DB, DIAPHRAGM
    return level, attenuation, label


def _lateral_blur(field: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur along axis 1 with a different width per row (the beam widens away from the focus)."""
    frequencies = np.fft.rfftfreq(field.shape[1])
    transfer = np.exp(-2.0 * (np.pi * frequencies[None, :] * sigma[:, None]) ** 2)
    padded = field.shape[1]
    return np.fft.irfft(np.fft.rfft(field, axis=1) * transfer, n=padded, axis=1)


@dataclasses.dataclass(frozen=True)
class Scan:
    """One v2 frame: image float32 [S, S] in [0, 1]; tissue int8 [S, S]; the latent values that made it."""

    image: np.ndarray
    tissue: np.ndarray
    fat_fraction: float
    patient: Patient
    settings: ScannerSettings


def render(rng: np.random.Generator, patient: Patient, settings: ScannerSettings, image_size: int) -> Scan:
    """Image one patient with one exam's settings; ``rng`` draws the speckle and the noise."""
    size = int(image_size)
    rows, lines = 4 * size, 2 * size  # Oversampled beam grid; the display is area-averaged back to `size`.
    depth_axis = (np.arange(rows) + 0.5) / rows * settings.depth_cm * 1.06
    angle_axis = np.linspace(-settings.half_angle, settings.half_angle, lines)
    radius = PROBE_RADIUS_CM + depth_axis[:, None]
    x = radius * np.sin(angle_axis)[None, :]
    z = radius * np.cos(angle_axis)[None, :] - PROBE_RADIUS_CM
    beam_depth = np.broadcast_to(depth_axis[:, None], x.shape)
    level_db, attenuation, label = tissue_maps(patient, x, z, beam_depth)

    # Scatterers: circular complex Gaussian with power 10^(level/10), blurred by the pulse (axial) and the
    # beam (lateral, widest far from the focus). Resolution cells from the wavelength: axial FWHM ~ one
    # wavelength (a two-cycle pulse), lateral FWHM ~ 1.4 lambda F# at the focus (aperture 4 cm), growing with
    # defocus.
    wavelength_cm = SPEED_OF_SOUND_MM_PER_US / settings.frequency_mhz / 10.0
    sample_cm = depth_axis[1] - depth_axis[0]
    axial_sigma = max(wavelength_cm / 2.355 / sample_cm, 0.3)
    f_number = settings.focus_cm / 4.0
    lateral_fwhm = 1.4 * wavelength_cm * f_number * (1.0 + 0.6 * np.abs(depth_axis - settings.focus_cm) / settings.focus_cm)
    line_spacing_cm = radius[:, 0] * (angle_axis[1] - angle_axis[0])
    lateral_sigma = np.maximum(lateral_fwhm / 2.355 / line_spacing_cm, 0.3)
    amplitude = 10.0 ** (level_db / 20.0) / np.sqrt(2.0)
    field = (rng.standard_normal((2, rows, lines)) * amplitude)
    field = ndimage.gaussian_filter1d(field, axial_sigma, axis=1)
    field = np.stack([_lateral_blur(part, lateral_sigma) for part in field])
    # Blurring a white field lowers its power; bring the mean echo of each tissue back to its level.
    field *= np.sqrt(2.0 * np.sqrt(np.pi) * axial_sigma) * np.sqrt(2.0 * np.sqrt(np.pi) * lateral_sigma)[None, :, None]

    # Round-trip attenuation along each beam, in dB.
    path_db = 2.0 * settings.frequency_mhz * np.cumsum(attenuation, axis=0) * sample_cm
    if patient.rib_shadow >= 0:
        edge = np.abs(np.linspace(0.0, 1.0, lines) - patient.rib_shadow) < 0.1
        path_db[:, edge] += np.where(depth_axis[:, None] > patient.subcutaneous_fat_cm, 30.0, 0.0)
    field *= 10.0 ** (-path_db / 20.0)[None]
    noise = rng.standard_normal((2, rows, lines)) * 10.0 ** (settings.noise_db / 20.0) / np.sqrt(2.0)
    noise = ndimage.gaussian_filter1d(noise, axial_sigma, axis=1) * np.sqrt(2.0 * np.sqrt(np.pi) * axial_sigma)
    power = np.sum((field + noise) ** 2, axis=0)

    # Receive gain: TGC by depth, then the overall gain.
    slider_depths = np.linspace(0.0, depth_axis[-1], len(settings.tgc_sliders_db))
    sliders = np.interp(depth_axis, slider_depths, settings.tgc_sliders_db)
    if settings.tgc_mode == "preset":
        tgc_db = 2.0 * settings.frequency_mhz * settings.tgc_preset * depth_axis
    else:  # The optimiser flattens the liver's median echo along depth, partly; capped like a real TGC range.
        liver_path = np.where(label == LIVER, path_db, np.nan)
        rows_with_liver = ~np.all(np.isnan(liver_path), axis=1)
        per_depth = np.full(rows, np.nan)
        per_depth[rows_with_liver] = np.nanmedian(liver_path[rows_with_liver], axis=1)
        known = rows_with_liver
        per_depth = np.interp(depth_axis, depth_axis[known], per_depth[known]) if known.any() else depth_axis * 0
        tgc_db = settings.tgc_auto_fraction * np.maximum.accumulate(per_depth)
    tgc_db = np.minimum(tgc_db + sliders, 80.0)
    power_db = 10.0 * np.log10(power + 1e-30) + tgc_db[:, None]

    near_field = (label == LIVER) & (beam_depth > patient.subcutaneous_fat_cm + patient.muscle_cm + 1.0) & (
        beam_depth < patient.subcutaneous_fat_cm + patient.muscle_cm + 4.0)
    dynamic_range = settings.dynamic_range_db
    if settings.gain_mode == "auto" and near_field.any():
        gain_db = dynamic_range * (settings.gain_target - 0.5) - np.median(power_db[near_field])
    else:  # Manual: a gain that puts a normal liver of an average patient near mid-grey, plus the operator's offset.
        gain_db = 2.5 - 0.05 * dynamic_range + settings.gain_target
    grey = np.clip(0.5 + (power_db + gain_db) / dynamic_range, 0.0, 1.0) ** settings.grey_gamma
    smooth = ndimage.gaussian_filter(grey, (1.5, 1.0))
    grey = (1.0 - settings.speckle_reduction) * grey + settings.speckle_reduction * smooth

    # Scan conversion onto a 2S x 2S display (x across, z down from the sector's top), then 2 x 2 means.
    top = PROBE_RADIUS_CM * (np.cos(settings.half_angle) - 1.0)
    height = settings.depth_cm - top
    fine = 2 * size
    pixel = (np.arange(fine) + 0.5) / fine
    display_z, display_x = np.meshgrid(top + pixel * height, (pixel - 0.5) * height, indexing="ij")
    pixel_radius = np.hypot(display_x, display_z + PROBE_RADIUS_CM)
    pixel_angle = np.arctan2(display_x, display_z + PROBE_RADIUS_CM)
    row = (pixel_radius - PROBE_RADIUS_CM - depth_axis[0]) / sample_cm
    column = (pixel_angle + settings.half_angle) / (2.0 * settings.half_angle) * (lines - 1)
    inside = (row >= 0) & (row <= rows - 1) & (column >= 0) & (column <= lines - 1)
    coords = np.stack([row, column])
    image = ndimage.map_coordinates(grey, coords, order=1, mode="nearest") * inside
    labels = ndimage.map_coordinates(label, coords, order=0, mode="nearest") * inside
    image = image.reshape(size, 2, size, 2).mean(axis=(1, 3))
    labels = labels[::2, ::2]
    # A display pixel on the sector's edge is inside (not black) if any of its four samples is.
    labels[(labels == OUTSIDE) & inside.reshape(size, 2, size, 2).any(axis=(1, 3))] = OTHER
    return Scan(image.astype(np.float32), labels.astype(np.int8), patient.fat_fraction, patient, settings)


def simulate_example(seed: int, example_id: int, grade: str, image_size: int, site: str = "all") -> Scan:
    """The v2 scan with id ``example_id`` of the data set ``seed``: a pure function of its arguments.

    Three independent streams (patient, settings, speckle), so the same patient can be imaged again under
    other settings (``resimulate``) and the settings stream never sees the grade.
    """
    if grade not in simulator.FAT_FRACTION_RANGES:
        raise ValueError(f"unknown grade {grade!r}; expected one of {simulator.GRADES}")
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {sorted(SITES)}")
    patient_rng = np.random.default_rng([int(seed), int(example_id), 1])
    patient = draw_patient(patient_rng, simulator.sample_fat_fraction(patient_rng, grade))
    settings = draw_settings(np.random.default_rng([int(seed), int(example_id), 2]), site)
    return render(np.random.default_rng([int(seed), int(example_id), 3]), patient, settings, image_size)


def resimulate(scan: Scan, settings_seed: int, image_size: int, site: str = "all") -> Scan:
    """The same patient under another exam's settings (and another speckle draw)."""
    rng = np.random.default_rng([int(settings_seed), 7])
    return render(rng, scan.patient, draw_settings(rng, site), image_size)
