"""Table 2 of the paper: for each backbone, baseline vs +ICFDNet vs +ICFDNet+AT, over several seeds
(``launch/ablation.py --config=configs/ablation.py --workdir=workdir/ablation``).

Rows (per backbone, as in Table 2):
  baseline     model.use_decouplers=False, adv.enabled=False  (the classifier alone on the color transform)
  icfdnet      model.use_decouplers=True,  adv.enabled=False  (+ICFDNet)
  icfdnet_at   model.use_decouplers=True,  adv.enabled as configured (+ICFDNet+AT, the full method)

Config keys read from ``config.ablation`` (everything else is the training config every run starts from):
  backbones  tuple of classifier names (models.get_classifier), one group of rows each
  seeds      tuple of seeds (an int n means seeds 0..n-1); each cell is mean +- std over them
  rows       which of ("baseline", "icfdnet", "icfdnet_at") to run

Two floors come first in the table, each a multinomial logistic regression on the same data source and split
(``flax_fld.evaluation.linear_probe``): on the raw pixels (WORKDIR/linear/eval.json; ``config.ablation.linear_floor=False``
skips it) and on hand-made texture features, the classical ultrasound baseline (WORKDIR/texture/eval.json;
``config.ablation.texture_floor=False``), so a deep row below a shallow model shows at once. On simulator
version 2 a third floor reads the anatomical cues from the simulator's tissue masks (WORKDIR/anatomy/eval.json;
``flax_fld.evaluation.shortcut_probes.fit_anatomy_probe``). A run whose test predictions collapsed to one class is marked.

Each run trains with ``train.train_and_evaluate`` in WORKDIR/<backbone>/<row>/seed_<s>; a run whose directory
already has eval.json is not repeated, so re-running the same command resumes the ablation. All runs share
one prepared data set (WORKDIR/../tfds_data, as for any workdir, unless config.data.data_dir is set). After every run the partial
table is rewritten to WORKDIR/ablation.md and WORKDIR/ablation.json.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from flax_fld.evaluation import across_seeds
from flax_fld.reporting import names, tables
from flax_fld.reporting.progress import format_duration, progress_note
from flax_fld.runtime.atomic_files import write_json_atomically, write_text_atomically

ROWS = names.TABLE2_ROWS
LINEAR_METHOD = "Linear floor (logistic regression, raw pixels)"
TEXTURE_METHOD = "Texture floor (logistic regression, histogram + GLCM + gradients)"


def ablation_settings(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(backbones, seeds, rows) from ``config.ablation``, validated; ValueError names the bad key."""
    if "ablation" not in config:
        raise ValueError("config has no 'ablation' section (expected config.ablation.backbones/seeds/rows)")
    section = config.ablation
    backbones = tuple(section.get("backbones", ()))
    if not backbones:
        raise ValueError("config.ablation.backbones is empty")
    seeds = section.get("seeds", 1)
    seeds = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("config.ablation.seeds is empty")
    rows = tuple(section.get("rows", ROWS))
    unknown = [row for row in rows if row not in ROWS]
    if unknown or not rows:
        raise ValueError(f"config.ablation.rows has unknown rows {unknown}; choose from {ROWS}")
    return backbones, seeds, rows


def method_name(backbone: str, row: str) -> str:
    """The Table 2 row label, e.g. ``SqueezeNet+ICFDNet+AT``."""
    return names.method_name(backbone, use_decouplers=row != "baseline", adversarial=row == "icfdnet_at")


def run_directory(workdir: str, backbone: str, row: str, seed: int) -> str:
    return os.path.join(workdir, backbone, row, f"seed_{seed}")


def variant_config(config: ml_collections.ConfigDict, backbone: str, row: str, seed: int,
                   data_dir: str) -> ml_collections.ConfigDict:
    """The training config of one ablation run: the base config with the row's switches, without ``ablation``."""
    variant = ml_collections.ConfigDict(config.to_dict())
    del variant["ablation"]
    variant.seed = int(seed)
    variant.model.classifier = backbone
    variant.model.use_decouplers = row != "baseline"
    if row != "icfdnet_at":
        variant.adv.enabled = False
    variant.data.data_dir = data_dir
    return variant


ANATOMY_METHOD = "Anatomical-cue floor (logistic regression, hepatorenal index + portal wall + diaphragm)"
FLOORS = {  # kind -> (row label, fitting function in flax_fld.evaluation.linear_probe | shortcut_probes)
    "linear": (LINEAR_METHOD, "fit_linear_probe"),
    "texture": (TEXTURE_METHOD, "fit_texture_probe"),
    "anatomy": (ANATOMY_METHOD, "fit_anatomy_probe"),  # simulator version 2 only (its tissue masks)
}


def floor_result(kind: str, config: ml_collections.ConfigDict, workdir: str, data_dir: str,
                 log: Callable[[str], Any] = print) -> dict:
    """A floor row (WORKDIR/<kind>/eval.json, reused when present) in the ``results`` item layout; ``kind`` is
    ``linear`` (logistic regression on the raw pixels) or ``texture`` (on hand-made texture features)."""
    method, fit_name = FLOORS[kind]
    path = os.path.join(workdir, kind, "eval.json")
    if os.path.exists(path):
        log(f"{kind} floor: reusing {path}")
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
    else:
        from flax_fld.data import input_pipeline
        from flax_fld.evaluation import linear_probe, shortcut_probes  # the training stack, as in run_ablation

        log(f"{kind} floor: {method}")
        data_config = ml_collections.ConfigDict(config.data.to_dict())
        data_config.data_dir = data_dir
        if kind == "anatomy":
            report = shortcut_probes.fit_anatomy_probe(data_config)
        else:
            report = getattr(linear_probe, fit_name)(input_pipeline.prepare_data_source(data_config, data_dir))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomically(path, report)
    return {"backbone": kind, "row": kind, "method": method, "class_names": list(report["class_names"]),
            "runs": {"-": {"average": report["average"], "best_worst": report["best_worst"],
                           "per_class_accuracy": report["per_class_accuracy"]}},
            "summary": across_seeds.aggregate_reports([report])}


_RADIUS = re.compile(r"^pgd\d+_linf_([0-9.]+)/255$")  # end-to-end PGD entries (evaluate.attack_name)


def robust_curves(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[float, dict]]:
    """``{method: {radius in 1/255: robust Average {mean, std, n}}}`` from the end-to-end PGD entries of each
    result's summary (``launch/eval.py --epsilons`` adds one per radius); methods with fewer than two radii
    are left out."""
    curves = {}
    for result in results:
        points = {float(match.group(1)): stats["average"]
                  for attack, stats in result["summary"].get("robust", {}).items()
                  if (match := _RADIUS.match(attack))}
        if len(points) >= 2:
            curves[result["method"]] = dict(sorted(points.items()))
    return curves


def row_reports(row_directory: str) -> dict[str, dict]:
    """``{seed: eval.json}`` of one ablation row directory (``WORKDIR/<backbone>/<row>``, runs ``seed_<s>``)."""
    reports = {}
    for name in sorted(os.listdir(row_directory)) if os.path.isdir(row_directory) else ():
        path = os.path.join(row_directory, name, "eval.json")
        if name.startswith("seed_") and os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                reports[name[len("seed_"):]] = json.load(handle)
    if not reports:
        raise ValueError(f"{row_directory}: no seed_<s>/eval.json (an ablation row directory was expected)")
    return reports


def variant_rows(reference: str, variants: Sequence[str]) -> list[dict]:
    """``tables.format_variant_table``'s rows: each row directory's ``{seed: eval.json}`` and per-seed training
    attack gap (``adversarial_training_gap``), the reference first."""
    rows = []
    for directory in [reference, *variants]:
        reports = row_reports(directory)
        rows.append({"directory": directory, "reports": reports,
                     "gaps": [adversarial_training_gap(os.path.join(directory, f"seed_{seed}")) for seed in reports]})
    return rows


def adversarial_training_gap(run_directory: str) -> float:
    """Mean over the epochs with the TRADES term on (some ``class_beta`` > 0) of training clean accuracy minus
    training adversarial accuracy, in points (WORKDIR/metrics.jsonl); NaN for a run trained without
    adversarial training (``adv.enabled`` False in WORKDIR/config.json) or without adversarial epochs.

    A gap near 0 says the training attack barely moves the classifier: Eq. 3's robust term then works as a
    weak regulariser, and Eq. 1/2 calibrate on accuracies that hardly differ from the clean ones.
    """
    from flax_fld.reporting import metric_writers  # pylint: disable=import-outside-toplevel

    with open(os.path.join(run_directory, "config.json"), encoding="utf-8") as handle:
        if not json.load(handle).get("adv", {}).get("enabled", True):
            return float("nan")
    epochs = [r for r in metric_writers.read_metrics(run_directory, "epoch") if max(r.get("class_beta", [0])) > 0]
    if not epochs:
        return float("nan")
    return 100.0 * float(np.mean([r["train_clean_acc"] - r["train_adv_acc"] for r in epochs]))


def write_outputs(workdir: str, results: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                  command: str) -> tuple[str, str]:
    """Writes WORKDIR/ablation.md and WORKDIR/ablation.json (atomically, so a crash never leaves half)."""
    table = tables.format_ablation_table(results)
    counts = sorted({r["summary"]["average"]["n"] for r in results})
    markdown = (
        "# Ablation (Table 2 layout)\n\n"
        + (f"Command: `{command}`\n\n" if command else "")
        + f"Written {datetime.datetime.now().isoformat(timespec='seconds')}. Each cell: mean ± sample std over "
        f"seeds {list(seeds)} (runs per cell: {', '.join(map(str, counts))}), test split, percent. Arrows compare "
        "the mean Average with the group's baseline; bold is the group's best Average. An epoch marked * was "
        "the run's last: its validation figure was still improving when training ended (raise "
        "train.num_epochs, with train.early_stopping_patience to stop once it settles).\n\n" + table)
    curves = robust_curves(results)
    if curves:
        from flax_fld.reporting import plots  # matplotlib only when there is a curve to draw

        markdown += ("\n## Robust Average against the radius (PGD-CE, end to end)\n\n"
                     + tables.format_robust_curve_table(curves) + "\n![robust curves](robust_curves.png)\n")
        plots.plot_robust_curves(curves, os.path.join(workdir, "robust_curves.png"))
    shift = tables.format_ablation_shift_table(results)
    if shift:
        markdown += ("\n## On ten times as many test patients, and under scanner shift (the other site's "
                     "scanners; ten corruptions at five severities, mean)\n\n" + shift)
    payload = {"command": command, "seeds": list(seeds), "results": list(results)}
    return (write_text_atomically(os.path.join(workdir, "ablation.md"), markdown),
            write_json_atomically(os.path.join(workdir, "ablation.json"), payload))


def run_ablation(config: ml_collections.ConfigDict, workdir: str, *,
                 train_fn: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
                 command: str = "", log: Callable[[str], Any] = print,
                 clock: Callable[[], float] = time.monotonic) -> list[dict]:
    """Runs (or resumes) every (backbone, row, seed) run and writes the tables; returns the results list.

    ``log`` gets a line as each run starts and ends: runs done / total over the whole ablation, the time
    elapsed, and an ETA from the mean duration of the runs trained so far (reused runs cost nothing and are
    not counted in it).
    """
    backbones, seeds, rows = ablation_settings(config)
    if train_fn is None:
        from flax_fld.training import train  # imported here so the table code is usable without the training stack
        train_fn = train.train_and_evaluate
    started = clock()
    os.makedirs(workdir, exist_ok=True)
    from flax_fld.data import input_pipeline  # pylint: disable=import-outside-toplevel

    data_dir = input_pipeline.resolve_data_dir(config.data, workdir)
    results = []
    from flax_fld.evaluation import shortcut_probes  # pylint: disable=import-outside-toplevel

    for kind in FLOORS:
        if kind == "anatomy" and not shortcut_probes.has_anatomy(config.data):
            continue
        if config.ablation.get(f"{kind}_floor", True):
            results.append(floor_result(kind, config, workdir, data_dir, log))
            write_outputs(workdir, results, seeds, command)
    plan = [(backbone, row, seed) for backbone in backbones for row in rows for seed in seeds]
    to_train = sum(not os.path.exists(os.path.join(run_directory(workdir, *run), "eval.json")) for run in plan)
    durations: list[float] = []
    done = 0
    for backbone in backbones:
        for row in rows:
            reports, runs = [], {}
            for seed in seeds:
                done += 1
                run_dir = run_directory(workdir, backbone, row, seed)
                eval_path = os.path.join(run_dir, "eval.json")
                label = f"[{done}/{len(plan)}] {method_name(backbone, row)} seed {seed}"
                if os.path.exists(eval_path):
                    log(f"{label}: reusing {eval_path}")
                    with open(eval_path, encoding="utf-8") as handle:
                        report = json.load(handle)
                else:
                    left = max(to_train - len(durations), 0)
                    log(f"{label}: training in {run_dir} | {progress_note(clock() - started, durations, left)}")
                    run_started = clock()
                    report = train_fn(variant_config(config, backbone, row, seed, data_dir), run_dir)
                    durations.append(clock() - run_started)
                    left = max(to_train - len(durations), 0)
                    improving = (" (best epoch was the last: still improving)"
                                 if across_seeds.still_improving(report) else "")
                    log(f"{label}: finished in {format_duration(durations[-1])}{improving} | "
                        f"{progress_note(clock() - started, durations, left)}")
                reports.append(report)
                runs[str(seed)] = {"average": report["average"], "best_worst": report["best_worst"],
                                   "per_class_accuracy": report["per_class_accuracy"]}
                if "shift" in report:
                    runs[str(seed)]["shift"] = {kind: report["shift"][kind] for kind in ("large_test", "site", "corruption_mean")
                                                if kind in report["shift"]}
            class_names = reports[0].get("class_names", list(reports[0]["per_class_accuracy"]))
            results.append({"backbone": backbone, "row": row, "method": method_name(backbone, row),
                            "class_names": list(class_names), "runs": runs,
                            "summary": across_seeds.aggregate_reports(reports)})
            write_outputs(workdir, results, seeds, command)
    return results
