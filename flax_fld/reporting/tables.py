"""Every table and line a person reads, formatted from computed data: the paper-style result tables (Tables 1
and 2), the strong-attack report, prediction lines, the ablation, robust-curve and variant tables, and the model
summary. Nothing here computes a figure; the statistics come from ``flax_fld.evaluation``.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from flax_fld.evaluation import across_seeds, metrics
from flax_fld.reporting import names
from flax_fld.robustness import robust_eval


def _interval_suffix(interval) -> str:
    """`` [low, high]`` (percent, one decimal) after a table cell; '' when absent or undefined."""
    if interval is None or not np.all(np.isfinite(interval)):
        return ""
    return f" [{interval[0]:.1f}, {interval[1]:.1f}]"


def format_table(rows: Sequence[tuple[str, dict]], *, intervals: bool = False) -> str:
    """A markdown table in the layout of the paper's Table 1.

    Columns: Method, one per class, Best-Worst, Average (all in percent, two decimals). With the paper's four
    classes the class columns follow its order (Mild, Moderate, Severe, Normal) whatever the label order;
    otherwise the label order. As in the paper, each row's best and worst class are in italics, and the best
    Average and smallest Best-Worst over all rows are in bold.

    Args:
        rows: ``(method_name, class_report(...))`` pairs; all reports must share their class names.
        intervals: follow each figure with its 95 % interval, ``76.67 [66.9, 84.2]`` (one decimal: the
            interval's ends are no more precise than that); reports without interval fields get none.

    Returns:
        The table as a string (header, separator, one line per row, trailing newline).
    """
    if not rows:
        raise ValueError("format_table: no rows")
    class_names = list(rows[0][1]["per_class_accuracy"])
    for method, report in rows:
        if list(report["per_class_accuracy"]) != class_names:
            raise ValueError(
                f"format_table: row {method!r} has classes {list(report['per_class_accuracy'])}, "
                f"expected {class_names}"
            )
    columns = names.paper_column_order(class_names)
    header = ["Method"] + [f"{name.capitalize()}%" for name in columns] + ["Best-Worst%", "Average%"]
    best_average = max(round(report["average"], 2) for _, report in rows)
    smallest_gap = min(round(report["best_worst"], 2) for _, report in rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for method, report in rows:
        rounded = {name: round(report["per_class_accuracy"][name], 2) for name in columns}
        finite = [value for value in rounded.values() if not np.isnan(value)]
        cells = [method]
        for name in columns:
            text = f"{rounded[name]:.2f}"
            if finite and len(set(finite)) > 1 and rounded[name] in (max(finite), min(finite)):
                text = f"*{text}*"
            if intervals:
                text += _interval_suffix(report.get("per_class_interval", {}).get(name))
            cells.append(text)
        gap, average = round(report["best_worst"], 2), round(report["average"], 2)
        gap_text = f"**{gap:.2f}**" if gap == smallest_gap else f"{gap:.2f}"
        average_text = f"**{average:.2f}**" if average == best_average else f"{average:.2f}"
        if intervals:
            gap_text += _interval_suffix(report.get("best_worst_interval"))
            average_text += _interval_suffix(report.get("average_interval"))
        cells += [gap_text, average_text]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_strong(result: dict, method: str) -> str:
    """The paper-style table (one row per attack) and one line per sanity check."""
    settings = result["settings"]
    labels = {"clean": "clean", "noise": "random-sign noise", "pgd": f"PGD-{settings['pgd_steps']} (CE)",
              "strong": f"strong ({settings['steps']} steps)", "worst": "worst case"}
    rows = [(f"{method} {labels[name]}", result["attacks"][name]) for name in robust_eval.ATTACKS]
    lines = [f"L-inf {result['epsilon'] * 255:g}/255, {result['threat_model']}:", format_table(rows)]
    lines += [f"[{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}" for c in result["sanity_checks"]]
    return "\n".join(lines + result["warnings"])


def format_prediction(path: str, probabilities: np.ndarray, class_names: Sequence[str]) -> str:
    """``path: moderate (71.0%) | normal 5.0% mild 18.0% moderate 71.0% severe 6.0%``."""
    best = int(np.argmax(probabilities))
    spread = " ".join(f"{name} {100 * p:.1f}%" for name, p in zip(class_names, probabilities))
    return f"{path}: {class_names[best]} ({100 * probabilities[best]:.1f}%) | {spread}"


def format_file_summary(path: str, probabilities: np.ndarray, class_names: Sequence[str]) -> str:
    """The line for a file of several frames ``probabilities [F, K]``: its majority grade and mean probabilities.

    ``scan.dcm: moderate (majority, 21 of 30 frames) | mean normal 5.0% mild 18.0% moderate 71.0% severe 6.0%``.
    """
    best, votes = metrics.majority_grade(probabilities)
    spread = " ".join(f"{name} {100 * p:.1f}%" for name, p in zip(class_names, probabilities.mean(axis=0)))
    return f"{path}: {class_names[best]} (majority, {votes} of {len(probabilities)} frames) | mean {spread}"


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
        group = [r for r in results if r["backbone"] == backbone and r["row"] in names.TABLE2_ROWS]
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


def format_robust_curve_table(curves: Mapping[str, Mapping[float, Mapping[str, float]]]) -> str:
    """Markdown: one row per method, robust Average (mean ± std over seeds) at each radius."""
    radii = sorted({radius for points in curves.values() for radius in points})
    header = ["Method"] + [f"{radius:g}/255" for radius in radii]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * len(radii)) + "|"]
    for method, points in curves.items():
        lines.append("| " + " | ".join([method] + [_cell(points[r]) if r in points else "–" for r in radii]) + " |")
    return "\n".join(lines) + "\n"


def format_paired_comparison(first: Mapping[str, Mapping[str, Any]], second: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: each figure's mean per row and the paired difference (second - first) with its 95 % interval,
    for Average, Best-Worst and the robust entries both rows hold; ``first``/``second`` are ``row_reports``."""
    shared = [attack for attack in next(iter(first.values())).get("robust", {})
              if all(attack in r.get("robust", {}) for r in (*first.values(), *second.values()))]
    lines = ["| Figure | First | Second | Second - first (95 % interval) | Seeds |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for key in ["average", "best_worst"] + [f"robust:{attack}" for attack in shared]:
        a, b = across_seeds.run_figures(first, key), across_seeds.run_figures(second, key)
        difference = across_seeds.paired_difference(a, b)
        interval = (f"{difference['mean']:+.2f} [{difference['low']:+.2f}, {difference['high']:+.2f}]"
                    if difference["n"] > 1 else f"{difference['mean']:+.2f}")
        lines.append(f"| {key} | {np.mean(list(a.values())):.2f} | {np.mean(list(b.values())):.2f} | {interval} | "
                     f"{', '.join(difference['seeds'])} |")
    return "\n".join(lines) + "\n"


def _mean_std_text(values: Sequence[float]) -> str:
    values = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if values.size == 0:
        return "–"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if values.size > 1 else f"{values[0]:.2f}"


def _difference_text(first: Mapping[str, float], second: Mapping[str, float]) -> str:
    difference = across_seeds.paired_difference(first, second)
    if difference["n"] < 2:
        return f"{difference['mean']:+.2f} (1 seed)"
    return f"{difference['mean']:+.2f} [{difference['low']:+.2f}, {difference['high']:+.2f}]"


def format_model_summary(rows: list[tuple]) -> str:
    """Markdown table of summary_rows(); params with thousands separators, FLOPs in M (64 px) and G (224 px)."""

    def fmt(value: Optional[float], scale: float, digits: int) -> str:
        return "n/a" if value is None else f"{value / scale:,.{digits}f}"

    lines = ["| Model | In ch. | Params @64 px | Params @224 px | MFLOPs/img @64 px | GFLOPs/img @224 px |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, channels, params, flops in rows:
        lines.append(f"| {name} | {channels} | {params[64]:,} | {params[224]:,} | {fmt(flops[64], 1e6, 1)} | "
                     f"{fmt(flops[224], 1e9, 2)} |")
    return "\n".join(lines)


def format_variant_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown, one line per ablation row: seeds, mean ± std Average and Best-Worst, their paired differences
    from the first row (95 % t interval over shared seeds), the training attack's clean - adversarial gap,
    and every robust entry all the row's seeds hold (its Average, mean ± std).

    ``rows``: ``ablation.variant_rows(reference, variants)``, the reference first; each
    ``{'directory', 'reports': {seed: eval.json}, 'gaps': [points per seed]}``.
    """
    base = rows[0]["reports"]
    lines = ["| Row | Seeds | Average % | Best-Worst % | Δ Average (95 % CI) | Δ Best-Worst (95 % CI) | "
             "train clean - adv. (points) | Robust Average % |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for index, row in enumerate(rows):
        reports = row["reports"]
        attacks = [a for a in next(iter(reports.values())).get("robust", {})
                   if all(a in r.get("robust", {}) for r in reports.values())]
        robust = "; ".join(f"{a}: {_mean_std_text(across_seeds.run_figures(reports, 'robust:' + a).values())}"
                           for a in attacks)
        deltas = ["–", "–"] if index == 0 else [
            _difference_text(across_seeds.run_figures(base, key), across_seeds.run_figures(reports, key))
            for key in ("average", "best_worst")]
        lines.append(f"| {row['directory']} | {', '.join(reports)} | "
                     f"{_mean_std_text(across_seeds.run_figures(reports, 'average').values())} | "
                     f"{_mean_std_text(across_seeds.run_figures(reports, 'best_worst').values())} | {deltas[0]} | "
                     f"{deltas[1]} | {_mean_std_text(row['gaps'])} | {robust or '–'} |")
    return "\n".join(lines) + "\n"


def format_shift(shift: Mapping[str, Any], method: str) -> str:
    """One run under scanner shift (eval.json 'shift'): per-class accuracy and Average on the clean test
    split, on the other site's scanners and averaged over the corruptions, each with its drop from clean; then
    each corruption's Average at severities 1-5."""
    class_names = names.paper_column_order(list(shift["clean"]["per_class_accuracy"]))
    header = ["Method"] + [f"{name.capitalize()}%" for name in class_names] + ["Average%", "Best-Worst%", "Drop"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    rows = [("clean", shift["clean"])]
    if "site" in shift:
        rows.append((f"site {shift['site']['site']} scanners", shift["site"]))
    rows.append((f"corruptions, mean of {shift['corruption_mean']['num_evaluations']}", shift["corruption_mean"]))
    if "large_test" in shift:
        rows.append((f"no shift, {shift['large_test']['num_examples']} new test patients", shift["large_test"]))
    for label, entry in rows:
        cells = [f"{method} ({label})"] + [f"{entry['per_class_accuracy'][name]:.2f}" for name in class_names]
        drop = f"{entry['drop']:+.2f}" if "drop" in entry else "–"
        lines.append("| " + " | ".join(cells + [f"{entry['average']:.2f}", f"{entry['best_worst']:.2f}", drop]) + " |")
    lines += ["", "| Corruption | " + " | ".join(f"severity {s}" for s in range(1, 6)) + " |",
              "| --- |" + " ---: |" * 5]
    for name, by_severity in shift["corruptions"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by_severity[str(s)]['average']:.2f}" for s in range(1, 6)) + " |")
    return "\n".join(lines) + "\n"


def format_ablation_shift_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The ablation's rows under scanner shift, mean ± std over seeds: per-class accuracy and Average on ten
    times as many new test patients (no shift), on the other site's scanners and averaged over the
    corruptions, with the drop of the last two from the clean test split.
    ``results`` items as for ``format_ablation_table``; a run carries ``shift`` (eval.json's ``site`` and
    ``corruption_mean``) when it was evaluated under shift; rows without (the floors) are left out."""
    rows = [r for r in results if any("shift" in run for run in r.get("runs", {}).values())]
    if not rows:
        return ""
    class_names = names.paper_column_order(rows[0]["class_names"])
    header = (["Method", "Shift"] + [f"{name.capitalize()}%" for name in class_names]
              + ["Average%", "Best-Worst%", "Drop from clean"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * 2 + [" ---: "] * (len(header) - 2)) + "|"]
    for result in rows:
        runs = [run["shift"] for run in result["runs"].values() if "shift" in run]
        for kind in ("large_test", "site", "corruption_mean"):
            entries = [run[kind] for run in runs if kind in run]
            if not entries:
                continue
            if kind == "large_test":
                label = f"none, {entries[0]['num_examples']} new test patients"
            else:
                label = f"site {entries[0].get('site', '?')}" if kind == "site" else "corruptions (mean)"
            cells = [result["method"], label]
            cells += [_mean_std_text([e["per_class_accuracy"][name] for e in entries]) for name in class_names]
            cells += [_mean_std_text([e[key] for e in entries]) for key in ("average", "best_worst")]
            cells.append(_mean_std_text([e["drop"] for e in entries]) if "drop" in entries[0] else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
