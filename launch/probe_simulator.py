"""Can global image statistics read the simulator's grade? The shortcut and anatomy probes, as a table.

  python launch/probe_simulator.py --simulator_version=2 --site=A --per_grade=150 --image_size=64
  python launch/probe_simulator.py --simulator_version=1
  python launch/probe_simulator.py --figures=docs --per_grade=10   # also the docs' two figures

Balanced accuracy (percent, 5-fold logistic regression, chance 25 %) of each probe of
flax_fld/evaluation/shortcut_probes.py on freshly simulated scans, and the anatomical cues' medians per grade.
"""

from collections.abc import Sequence

import numpy as np
from absl import app, flags

from flax_fld.data.datasets import bmode_physics, simulator
from flax_fld.evaluation import shortcut_probes
from flax_fld.tools import simulator_figures

_VERSION = flags.DEFINE_enum("simulator_version", "2", ["1", "2"], "Simulator version.")
_SITE = flags.DEFINE_enum("site", "A", sorted(bmode_physics.SITES), "Version 2: whose scanners.")
_PER_GRADE = flags.DEFINE_integer("per_grade", 150, "Scans per grade.", lower_bound=10)
_SIZE = flags.DEFINE_integer("image_size", 64, "Image side in pixels.", lower_bound=32)
_SEED = flags.DEFINE_integer("seed", 5, "Seed of the simulated scans (not the benchmark's).")
_FIGURES = flags.DEFINE_string("figures", "", "Folder: also write simulator_grades.png and simulator_sweep.png.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _FIGURES.value:
        print("wrote", ", ".join(simulator_figures.save_figures(_FIGURES.value)))
    scans, labels = [], []
    for label, grade in enumerate(simulator.GRADES):
        for index in range(_PER_GRADE.value):
            example_id = label * 100_000 + index
            if _VERSION.value == "2":
                scans.append(bmode_physics.simulate_example(_SEED.value, example_id, grade, _SIZE.value, _SITE.value))
            else:
                scans.append(simulator.simulate_example(_SEED.value, example_id, grade, _SIZE.value))
            labels.append(label)
    labels = np.asarray(labels)
    print("| probe | balanced accuracy % |\n| --- | ---: |")
    for name, accuracy in shortcut_probes.probe_accuracies(scans, labels).items():
        print(f"| {name} | {accuracy:.1f} |")
    if _VERSION.value == "2":
        cues = shortcut_probes.anatomical_cues(np.stack([s.image for s in scans]), np.stack([s.tissue for s in scans]))
        print("\n| grade | hepatorenal index | portal-wall contrast | diaphragm CNR | mean brightness |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for label, grade in enumerate(simulator.GRADES):
            medians = np.nanmedian(cues[labels == label], axis=0)
            bright = shortcut_probes.brightness(np.stack([s.image for s, l in zip(scans, labels) if l == label])).mean()
            print(f"| {grade} | {medians[0]:.2f} | {medians[1]:.2f} | {medians[2]:.2f} | {bright:.3f} |")


if __name__ == "__main__":
    app.run(main)
