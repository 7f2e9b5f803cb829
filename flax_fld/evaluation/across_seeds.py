"""Figures over seeds: mean and sample std of every eval.json figure, and paired differences between two rows.

Pure functions of host values (eval.json dicts keyed by seed); ``flax_fld.reporting.tables`` formats them and
``flax_fld.runs.ablation`` reads them from run directories.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def mean_std(values: Sequence[float]) -> dict:
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
        "per_class_accuracy": {name: mean_std([r["per_class_accuracy"][name] for r in reports])
                               for name in class_names},
    }
    for key in ("average", "best_worst", "balanced_accuracy"):
        summary[key] = mean_std([r[key] for r in reports])
    summary["epochs"] = [r.get("epoch") for r in reports]
    summary["still_improving"] = [still_improving(r) for r in reports]
    summary["collapsed_runs"] = sum(bool(r.get("collapsed", False)) for r in reports)
    attacks = [name for name in reports[0].get("robust", {}) if all(name in r.get("robust", {}) for r in reports)]
    summary["robust"] = {
        attack: {key: mean_std([r["robust"][attack][key] for r in reports]) for key in ("average", "best_worst")}
        for attack in attacks
    }
    return summary


def still_improving(report: Mapping[str, Any]) -> bool:
    """Whether a run kept its checkpoint from its last epoch: its validation figure was still improving when
    training ended, so a longer run (``train.num_epochs``) may be better. Reports without ``last_epoch``
    (written before it existed) count as not improving."""
    return report.get("epoch") is not None and report.get("epoch") == report.get("last_epoch")


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
