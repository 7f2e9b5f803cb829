"""Figures of the simulator for the docs: one scan per grade, and one patient under a sweep of scanner settings.

``launch/probe_simulator.py --figures=DIR`` writes them (docs/simulator_grades.png, docs/simulator_sweep.png).
"""

from __future__ import annotations

import os

import numpy as np

from flax_fld.data.datasets import bmode_physics, simulator


def _caption(scan) -> str:
    s = scan.settings
    return (f"{s.frequency_mhz:.1f} MHz, {s.depth_cm:.0f} cm, DR {s.dynamic_range_db:.0f} dB\n"
            f"gain {s.gain_mode}, TGC {s.tgc_mode}")


def save_figures(out_dir: str, image_size: int = 128, seed: int = 11) -> tuple[str, str]:
    """Writes simulator_grades.png and simulator_sweep.png under ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    fig, axes = plt.subplots(2, 4, figsize=(10, 6.2))
    for column, grade in enumerate(simulator.GRADES):
        for row, site in enumerate(("A", "B")):
            scan = bmode_physics.simulate_example(seed, 3 + column, grade, image_size, site=site)
            axes[row, column].imshow(scan.image, cmap="gray", vmin=0, vmax=1)
            axes[row, column].set_title(f"{grade} (fat {scan.fat_fraction:.2f}), site {site}\n{_caption(scan)}",
                                        fontsize=7)
            axes[row, column].axis("off")
    fig.tight_layout()
    grades = os.path.join(out_dir, "simulator_grades.png")
    fig.savefig(grades, dpi=80)
    plt.close(fig)

    patient = bmode_physics.simulate_example(seed, 1, "moderate", image_size, site="all")
    fig, axes = plt.subplots(2, 4, figsize=(10, 6.2))
    for index, axis in enumerate(axes.ravel()):
        scan = patient if index == 0 else bmode_physics.resimulate(patient, index, image_size, site="all")
        axis.imshow(scan.image, cmap="gray", vmin=0, vmax=1)
        axis.set_title(_caption(scan), fontsize=7)
        axis.axis("off")
    fig.suptitle(f"one patient (moderate, fat fraction {patient.fat_fraction:.2f}) under eight exams", fontsize=9)
    fig.tight_layout()
    sweep = os.path.join(out_dir, "simulator_sweep.png")
    fig.savefig(sweep, dpi=80)
    plt.close(fig)
    return grades, sweep
