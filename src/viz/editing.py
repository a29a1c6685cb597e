"""Before/after figure of one edit: top predictions for `s r`, and unrelated facts keeping their answers."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from src.viz.figures import save_figure


def _bars(ax, top: Sequence[tuple[str, float]], title: str, highlight: dict[str, str]) -> None:
    tokens = [t for t, _ in top][::-1]
    probs = [p for _, p in top][::-1]
    colors = [highlight.get(t, "#9e9e9e") for t in tokens]
    ax.barh(range(len(tokens)), probs, color=colors)
    ax.set_yticks(range(len(tokens)), tokens)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.set_title(title, fontsize=10)
    for y, p in enumerate(probs):
        ax.text(min(p + 0.02, 0.8), y, f"{p:.3f}", va="center", fontsize=8)


def plot_edit(before: Sequence[tuple[str, float]], after: Sequence[tuple[str, float]], result, unrelated: Sequence[dict],
              path: str | Path) -> None:
    """result: an EditResult. unrelated: dicts with s, r, before, after, kept."""
    highlight = {result.original_prediction: "#1f77b4", result.target: "#d73027"}
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.3]})
    prompt = f"{result.subject} {result.relation}"
    _bars(axes[0], before, f"before: {prompt} -> {result.original_prediction}", highlight)
    _bars(axes[1], after, f"after: {prompt} -> {result.new_prediction}", highlight)
    table = axes[2]
    table.axis("off")
    lines = [f"edit layer {result.layer} ({result.layer_source}), {result.fact_token} token",
             f"success: {result.success}   p(target) {result.target_prob_before:.3f} -> {result.target_prob_after:.3f}",
             f"p(original) {result.original_prob_before:.3f} -> {result.original_prob_after:.3f}", "",
             "unrelated facts (before -> after):"]
    for row in unrelated:
        mark = "kept" if row["kept"] else "CHANGED"
        lines.append(f"  {row['s']} {row['r']}: {row['before']} -> {row['after']}  [{mark}]")
    if result.metrics is not None:
        m = result.metrics
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        lines += ["", f"context robustness {fmt(m.context_robustness)}, paraphrase {fmt(m.paraphrase)}",
                  f"specificity: subject {fmt(m.specificity_subject)}, random {fmt(m.specificity_random)}"]
    table.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    fig.suptitle(f"ROME edit: {prompt} -> {result.target}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
