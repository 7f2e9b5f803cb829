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
(``flax_fld.linear_probe``): on the raw pixels (WORKDIR/linear/eval.json; ``config.ablation.linear_floor=False``
skips it) and on hand-made texture features, the classical ultrasound baseline (WORKDIR/texture/eval.json;
``config.ablation.texture_floor=False``), so a deep row below a shallow model shows at once. A run whose test predictions collapsed to one class is marked.

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

from flax_fld import names
from flax_fld.atomic_files import write_json_atomically, write_text_atomically
from flax_fld.progress import format_duration, progress_note

ROWS = ("baseline", "icfdnet", "icfdnet_at")
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


FLOORS = {  # kind -> (row label, fitting function in flax_fld.linear_probe)
    "linear": (LINEAR_METHOD, "fit_linear_probe"),
    "texture": (TEXTURE_METHOD, "fit_texture_probe"),
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
        from flax_fld import input_pipeline, linear_probe  # the training stack, as in run_ablation

        log(f"{kind} floor: {method}")
        data_config = ml_collections.ConfigDict(config.data.to_dict())
        data_config.data_dir = data_dir
        report = getattr(linear_probe, fit_name)(input_pipeline.prepare_data_source(data_config, data_dir))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomically(path, report)
    return {"backbone": kind, "row": kind, "method": method, "class_names": list(report["class_names"]),
            "runs": {"-": {"average": report["average"], "best_worst": report["best_worst"],
                           "per_class_accuracy": report["per_class_accuracy"]}},
            "summary": aggregate_reports([report])}


def _mean_std(values: Sequence[float]) -> dict:
    array = np.asarray(values, np.float64)
    return {
        "mean": float(np.nanmean(array)) if np.isfinite(array).any() else float("nan"),
        "std": float(np.nanstd(array, ddof=1)) if np.isfinite(array).sum() > 1 else 0.0,
        "n": int(np.isfinite(array).sum()),
    }


def aggregate_reports(reports: Sequence[Mapping[str, Any]]) -> dict:
    """Mean and sample std over seeds of every figure of the eval reports (the eval.json fields).

    Returns ``{'per_class_accuracy': {name: {mean, std, n}}, 'average': {...}, 'best_worst': {...},
    'balanced_accuracy': {...}, 'robust': {attack: {'average': {...}, 'best_worst': {...}}}}``. Best-Worst is
    averaged per seed (the mean gap), not recomputed from the mean accuracies.
    """
    if not reports:
        raise ValueError("aggregate_reports: no reports")
    class_names = list(reports[0]["per_class_accuracy"])
    summary: dict[str, Any] = {
        "per_class_accuracy": {name: _mean_std([r["per_class_accuracy"][name] for r in reports])
                               for name in class_names},
    }
    for key in ("average", "best_worst", "balanced_accuracy"):
        summary[key] = _mean_std([r[key] for r in reports])
    summary["epochs"] = [r.get("epoch") for r in reports]
    summary["still_improving"] = [still_improving(r) for r in reports]
    summary["collapsed_runs"] = sum(bool(r.get("collapsed", False)) for r in reports)
    attacks = [name for name in reports[0].get("robust", {}) if all(name in r.get("robust", {}) for r in reports)]
    summary["robust"] = {
        attack: {key: _mean_std([r["robust"][attack][key] for r in reports]) for key in ("average", "best_worst")}
        for attack in attacks
    }
    return summary


def still_improving(report: Mapping[str, Any]) -> bool:
    """Whether a run kept its checkpoint from its last epoch: its validation figure was still improving when
    training ended, so a longer run (``train.num_epochs``) may be better. Reports without ``last_epoch``
    (written before it existed) count as not improving."""
    return report.get("epoch") is not None and report.get("epoch") == report.get("last_epoch")


def _cell(stat: Mapping[str, float]) -> str:
    if not np.isfinite(stat["mean"]):
        return "n/a"
    if stat["n"] > 1:
        return f"{stat['mean']:.2f} ± {stat['std']:.2f}"
    return f"{stat['mean']:.2f}"


def format_ablation_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table in the layout of Table 2, one line per (backbone, row), mean ± std over seeds.

    ``results`` items: ``{'backbone', 'row', 'method', 'class_names', 'summary': aggregate_reports(...)}``.
    Class columns follow the paper's order (Mild, Moderate, Severe, Normal) when the classes are the
    paper's. As in Table 2, the best Average of each backbone's group is bold and an arrow compares each
    row's mean Average with its group's baseline. Extra columns: Best-Worst, the robust Average under each
    attack the runs were evaluated with, and each seed's selected epoch, starred when it was the run's last
    (``still_improving``).
    """
    if not results:
        raise ValueError("format_ablation_table: no results")
    class_names = names.paper_column_order(results[0]["class_names"])
    attacks = list(dict.fromkeys(a for r in results for a in r["summary"]["robust"]))
    header = (["Method"] + [f"{name.capitalize()}%" for name in class_names] + ["Average%", "Best-Worst%"]
              + [f"Robust Average% ({attack})" for attack in attacks] + ["Epoch (per seed)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for backbone in dict.fromkeys(r["backbone"] for r in results):
        group = [r for r in results if r["backbone"] == backbone and r["row"] in ROWS]
        if not group:  # the linear floor
            group = [r for r in results if r["backbone"] == backbone]
        best = max(r["summary"]["average"]["mean"] for r in group)
        baseline = next((r["summary"]["average"]["mean"] for r in group if r["row"] == "baseline"), None)
        for result in group:
            summary = result["summary"]
            cells = [result["method"]] + [_cell(summary["per_class_accuracy"][name]) for name in class_names]
            average = _cell(summary["average"])
            if len(group) > 1 and summary["average"]["mean"] == best:
                average = f"**{average}**"
            if baseline is not None and result["row"] != "baseline":
                average += " ↑" if summary["average"]["mean"] > baseline else " ↓"
            cells += [average, _cell(summary["best_worst"])]
            for attack in attacks:
                robust = summary["robust"].get(attack)
                cells.append(_cell(robust["average"]) if robust else "–")
            marks = summary.get("still_improving") or [False] * len(summary.get("epochs", []))
            epochs = [f"{e}*" if mark else str(e) for e, mark in zip(summary.get("epochs", []), marks) if e is not None]
            cells.append(", ".join(epochs) if epochs else "–")
            if summary.get("collapsed_runs"):
                cells[0] += f" (collapsed to one class in {summary['collapsed_runs']} run(s))"
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def format_robust_curve_table(curves: Mapping[str, Mapping[float, Mapping[str, float]]]) -> str:
    """Markdown: one row per method, robust Average (mean ± std over seeds) at each radius."""
    radii = sorted({radius for points in curves.values() for radius in points})
    header = ["Method"] + [f"{radius:g}/255" for radius in radii]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * len(radii)) + "|"]
    for method, points in curves.items():
        lines.append("| " + " | ".join([method] + [_cell(points[r]) if r in points else "–" for r in radii]) + " |")
    return "\n".join(lines) + "\n"


def paired_difference(first: Mapping[str, float], second: Mapping[str, float], confidence: float = 0.95) -> dict:
    """Mean of ``second[seed] - first[seed]`` over the seeds both hold, with its two-sided t interval.

    Pairing by seed removes what two rows of one seed share (the split, the initialisation of the common
    parts, the data order), so the interval measures the change alone. ``{mean, low, high, n, seeds}``;
    with one pair the interval is unbounded (nan).
    """
    seeds = sorted(set(first) & set(second), key=str)
    differences = np.asarray([second[seed] - first[seed] for seed in seeds], np.float64)
    if differences.size == 0:
        raise ValueError("paired_difference: the two rows share no seed")
    mean = float(differences.mean())
    if differences.size < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": 1, "seeds": seeds}
    from scipy import stats  # pylint: disable=import-outside-toplevel

    half = float(stats.t.ppf(0.5 + confidence / 2, differences.size - 1)
                 * differences.std(ddof=1) / np.sqrt(differences.size))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(differences.size), "seeds": seeds}


def run_figures(run_reports: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, float]:
    """``{seed: figure}`` of one row: ``average``, ``best_worst``, or ``robust:<attack>`` (its Average)."""
    if key.startswith("robust:"):
        attack = key.split(":", 1)[1]
        return {seed: r["robust"][attack]["average"] for seed, r in run_reports.items() if attack in r.get("robust", {})}
    return {seed: r[key] for seed, r in run_reports.items()}


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


def format_paired_comparison(first: Mapping[str, Mapping[str, Any]], second: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: each figure's mean per row and the paired difference (second - first) with its 95 % interval,
    for Average, Best-Worst and the robust entries both rows hold; ``first``/``second`` are ``row_reports``."""
    shared = [attack for attack in next(iter(first.values())).get("robust", {})
              if all(attack in r.get("robust", {}) for r in (*first.values(), *second.values()))]
    lines = ["| Figure | First | Second | Second - first (95 % interval) | Seeds |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for key in ["average", "best_worst"] + [f"robust:{attack}" for attack in shared]:
        a, b = run_figures(first, key), run_figures(second, key)
        difference = paired_difference(a, b)
        interval = (f"{difference['mean']:+.2f} [{difference['low']:+.2f}, {difference['high']:+.2f}]"
                    if difference["n"] > 1 else f"{difference['mean']:+.2f}")
        lines.append(f"| {key} | {np.mean(list(a.values())):.2f} | {np.mean(list(b.values())):.2f} | {interval} | "
                     f"{', '.join(difference['seeds'])} |")
    return "\n".join(lines) + "\n"


def adversarial_training_gap(run_directory: str) -> float:
    """Mean over the epochs with the TRADES term on (some ``class_beta`` > 0) of training clean accuracy minus
    training adversarial accuracy, in points (WORKDIR/metrics.jsonl); NaN for a run trained without
    adversarial training (``adv.enabled`` False in WORKDIR/config.json) or without adversarial epochs.

    A gap near 0 says the training attack barely moves the classifier: Eq. 3's robust term then works as a
    weak regulariser, and Eq. 1/2 calibrate on accuracies that hardly differ from the clean ones.
    """
    from flax_fld import metric_writers  # pylint: disable=import-outside-toplevel

    with open(os.path.join(run_directory, "config.json"), encoding="utf-8") as handle:
        if not json.load(handle).get("adv", {}).get("enabled", True):
            return float("nan")
    epochs = [r for r in metric_writers.read_metrics(run_directory, "epoch") if max(r.get("class_beta", [0])) > 0]
    if not epochs:
        return float("nan")
    return 100.0 * float(np.mean([r["train_clean_acc"] - r["train_adv_acc"] for r in epochs]))


def _mean_std_text(values: Sequence[float]) -> str:
    values = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if values.size == 0:
        return "–"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if values.size > 1 else f"{values[0]:.2f}"


def _difference_text(first: Mapping[str, float], second: Mapping[str, float]) -> str:
    difference = paired_difference(first, second)
    if difference["n"] < 2:
        return f"{difference['mean']:+.2f} (1 seed)"
    return f"{difference['mean']:+.2f} [{difference['low']:+.2f}, {difference['high']:+.2f}]"


def format_variant_table(reference: str, variants: Sequence[str]) -> str:
    """Markdown, one line per ablation row directory: seeds, mean ± std Average and Best-Worst, their paired
    differences from the ``reference`` row (95 % t interval over shared seeds), the training attack's
    clean - adversarial gap, and every robust entry all the row's seeds hold (its Average, mean ± std)."""
    base = row_reports(reference)
    lines = ["| Row | Seeds | Average % | Best-Worst % | Δ Average (95 % CI) | Δ Best-Worst (95 % CI) | "
             "train clean - adv. (points) | Robust Average % |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for directory in [reference, *variants]:
        reports = row_reports(directory)
        attacks = [a for a in next(iter(reports.values())).get("robust", {})
                   if all(a in r.get("robust", {}) for r in reports.values())]
        robust = "; ".join(f"{a}: {_mean_std_text(run_figures(reports, 'robust:' + a).values())}" for a in attacks)
        gaps = [adversarial_training_gap(os.path.join(directory, f"seed_{seed}")) for seed in reports]
        same = os.path.abspath(directory) == os.path.abspath(reference)
        deltas = ["–", "–"] if same else [_difference_text(run_figures(base, key), run_figures(reports, key))
                                          for key in ("average", "best_worst")]
        lines.append(f"| {directory} | {', '.join(reports)} | "
                     f"{_mean_std_text(run_figures(reports, 'average').values())} | "
                     f"{_mean_std_text(run_figures(reports, 'best_worst').values())} | {deltas[0]} | {deltas[1]} | "
                     f"{_mean_std_text(gaps)} | {robust or '–'} |")
    return "\n".join(lines) + "\n"


def write_outputs(workdir: str, results: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                  command: str) -> tuple[str, str]:
    """Writes WORKDIR/ablation.md and WORKDIR/ablation.json (atomically, so a crash never leaves half)."""
    table = format_ablation_table(results)
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
        from flax_fld import plots  # matplotlib only when there is a curve to draw

        markdown += ("\n## Robust Average against the radius (PGD-CE, end to end)\n\n"
                     + format_robust_curve_table(curves) + "\n![robust curves](robust_curves.png)\n")
        plots.plot_robust_curves(curves, os.path.join(workdir, "robust_curves.png"))
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
        from flax_fld import train  # imported here so the table code is usable without the training stack
        train_fn = train.train_and_evaluate
    started = clock()
    os.makedirs(workdir, exist_ok=True)
    from flax_fld import input_pipeline  # pylint: disable=import-outside-toplevel

    data_dir = input_pipeline.resolve_data_dir(config.data, workdir)
    results = []
    for kind in FLOORS:
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
                    improving = " (best epoch was the last: still improving)" if still_improving(report) else ""
                    log(f"{label}: finished in {format_duration(durations[-1])}{improving} | "
                        f"{progress_note(clock() - started, durations, left)}")
                reports.append(report)
                runs[str(seed)] = {"average": report["average"], "best_worst": report["best_worst"],
                                   "per_class_accuracy": report["per_class_accuracy"]}
            class_names = reports[0].get("class_names", list(reports[0]["per_class_accuracy"]))
            results.append({"backbone": backbone, "row": row, "method": method_name(backbone, row),
                            "class_names": list(class_names), "runs": runs,
                            "summary": aggregate_reports(reports)})
            write_outputs(workdir, results, seeds, command)
    return results
