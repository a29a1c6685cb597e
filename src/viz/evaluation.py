"""Figures of an edit evaluation run: metrics per method (bars with 95% intervals) and sequential checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

from src.viz.figures import save_figure

BAR_METRICS = {
    "efficacy": "efficacy",
    "paraphrase": "paraphrase",
    "context_robustness": "context",
    "specificity_neighbourhood": "spec.\nneighb.",
    "specificity_relation": "spec.\nrelation",
    "specificity_subject": "spec.\nsubject",
    "specificity_random": "spec.\nrandom",
}


def plot_method_metrics(summary: Mapping[str, dict], path: str | Path, title: str = "") -> None:
    """Grouped bars: one group per metric (fractions), one bar per method, 95% intervals (Wilson or bootstrap, as
    the summary says) as error bars; specificity groups are on held-out facts."""
    methods = list(summary)
    fig = Figure(figsize=(min(14.0, 4 + 0.45 * len(BAR_METRICS) * len(methods)), 4))
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(BAR_METRICS))
    for i, method in enumerate(methods):
        metrics = summary[method]["metrics"]
        value = lambda m, key: np.nan if metrics[m]["n"] == 0 else metrics[m][key]  # noqa: E731
        means = np.array([value(m, "mean") for m in BAR_METRICS])
        errors = np.array([[means[i] - value(m, "low") for i, m in enumerate(BAR_METRICS)],
                           [value(m, "high") - means[i] for i, m in enumerate(BAR_METRICS)]])
        errors = np.clip(errors, 0.0, None)  # asymmetric; a percentile interval may end a rounding error inside the mean
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=errors, capsize=2, label=method)
    ax.set_xticks(x, list(BAR_METRICS.values()), fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction (mean, 95% interval)")
    ax.set_title(title or "edit evaluation", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_sequential(summary: Mapping[str, dict], path: str | Path) -> None:
    """Two panels against the number of edits: KG retention and past-edit efficacy, one line per method."""
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for method, data in summary.items():
        points = data.get("checkpoints", [])
        if not points:
            continue
        edits = [p["num_edits"] for p in points]
        axes[0].plot(edits, [p["retention"] for p in points], marker="o", label=method)
        later = [p for p in points if p["past_efficacy"] is not None]
        axes[1].plot([p["num_edits"] for p in later], [p["past_efficacy"] for p in later], marker="o", label=method)
    for ax, label in zip(axes, ("KG retention (unedited facts)", "past-edit efficacy")):
        ax.set_xlabel("edits applied")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
