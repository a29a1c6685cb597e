"""Figures of an edit evaluation run: metrics per method (bars with 95% intervals) and sequential checkpoints; and of
two runs compared: paired differences per method and metric."""

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


DIFFERENCE_METRICS = {**{k: v.replace("\n", " ") for k, v in BAR_METRICS.items()},
                      "retention_drop_points": "retention drop (points)"}


def plot_paired_differences(differences: Mapping[str, Mapping[str, dict]], labels: tuple[str, str],
                            path: str | Path) -> None:
    """One panel per metric: per method (rows), the paired difference first - second (`labels`) with its 95%
    interval, a line at 0; differences: method -> metric -> estimate dict (mean, low, high, n)."""
    methods = list(differences)
    metrics = [m for m in DIFFERENCE_METRICS if any(differences[x].get(m, {}).get("n") for x in methods)]
    columns = min(4, max(1, len(metrics)))
    rows = -(-len(metrics) // columns)
    fig = Figure(figsize=(3.2 * columns, 0.5 + (0.35 * len(methods) + 0.9) * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    y = np.arange(len(methods))[::-1]
    for ax, metric in zip(axes, metrics):
        for row, method in zip(y, methods):
            found = differences[method].get(metric)
            if not found or not found["n"]:
                continue
            excludes_zero = not found["low"] <= 0 <= found["high"]
            ax.errorbar(found["mean"], row, xerr=[[max(0.0, found["mean"] - found["low"])],
                                                  [max(0.0, found["high"] - found["mean"])]],
                        fmt="o", color="C3" if excludes_zero else "C0", capsize=3)
        ax.axvline(0.0, color="0.5", linewidth=0.8)
        ax.set_yticks(y, methods, fontsize=8)
        ax.set_title(DIFFERENCE_METRICS[metric], fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.locator_params(axis="x", nbins=4)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"{labels[0]} - {labels[1]}, paired over the same requests (95% intervals; red: 0 outside)",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
