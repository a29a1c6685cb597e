"""Causal-trace figures: per-fact heatmaps, average indirect effect per token group, histogram of best layers."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure
import numpy as np
from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm
from tqdm.auto import tqdm

from src.edit.causal_tracing import TraceResult
from src.edit.tracing.stats import TOKEN_GROUPS, AverageEffects, GroupEffect
from src.viz.figures import save_figure

# green = negative indirect effect, white = none, red = positive (the usage guide's convention)
EFFECT_CMAP = LinearSegmentedColormap.from_list("effect", ["#1a9850", "#ffffff", "#d73027"])
KIND_TITLES = {"hidden": "hidden states (block outputs)", "mlp": "MLP outputs", "attn": "attention outputs"}


def how_traced(trace: TraceResult, per_fact: bool = True) -> str:
    """One line: corruption, metric, method (per_fact: with the fact's replacement and contrast token)."""
    if trace.corruption == "replace":
        corruption = f"subject replaced by {trace.replacement}" if per_fact else "subject replaced by another entity"
    else:
        corruption = f"gaussian noise on the subject, {trace.num_samples} samples"
    if trace.metric == "prob":
        metric = "p(answer)"
    else:
        metric = f"logit difference vs {trace.contrast}" if per_fact else "logit difference vs the corrupted answer"
    method = "exact restorations" if trace.method == "exact" else "attribution patching (first-order estimate)"
    return f"{corruption} · {metric} · {method}"


def effect_label(trace: TraceResult) -> str:
    """The colour bar's label: the metric minus its corrupted value (the title says against which token)."""
    measured = f"p({trace.answer})" if trace.metric == "prob" else "logit diff"
    return f"{'estimated ' if trace.method == 'attribution' else ''}{measured} - corrupted"


def token_labels(trace: TraceResult) -> list[str]:
    b, e = trace.subject_range
    return [f"{tok}*" if b <= i < e else tok for i, tok in enumerate(trace.input_tokens)]


def draw_trace(ax, trace: TraceResult, best_layer: int | None = None, colorbar: bool = True) -> None:
    """Heatmap of the indirect effect (tokens x layers) into `ax`; subject tokens carry a `*`."""
    effect = trace.indirect_effect
    limit = max(float(np.abs(effect).max()), 1e-6)
    image = ax.imshow(effect, cmap=EFFECT_CMAP, norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit),
                      aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(trace.input_tokens)), token_labels(trace))
    ax.set_xticks(range(trace.num_layers))
    ax.set_xlabel("layer")
    window = f", window {trace.window}" if trace.kind != "hidden" else ""
    ax.set_title(f"{KIND_TITLES.get(trace.kind, trace.kind)}{window}", fontsize=9)
    if best_layer is not None:
        ax.axvline(best_layer, color="red", linewidth=2)
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.05)
        bar.set_label(effect_label(trace), fontsize=8)


def plot_trace(traces: Mapping[str, TraceResult] | Sequence[TraceResult], path: str | Path,
               best_layer: int | None = None, title: str | None = None) -> None:
    """One panel per kind; the red vertical line marks `best_layer` on every panel."""
    traces = list(traces.values()) if isinstance(traces, Mapping) else list(traces)
    TraceFigure(traces).save(traces, path, best_layer, title)


class TraceFigure:
    """A trace figure (one panel per kind), built once and redrawn for many traces of one shape (the same kinds and
    number of tokens): only the data, labels and limits change, so each further figure costs its rendering alone,
    and each is the image a fresh figure draws."""

    def __init__(self, traces: Sequence[TraceResult]) -> None:
        self.shape = self.shape_of(traces)
        self.fig = Figure(figsize=(4.2 * len(traces), 1.2 + 0.35 * len(traces[0].input_tokens)))
        self.axes = self.fig.subplots(1, len(traces), squeeze=False)[0]
        self.images, self.bars, self.lines = [], [], []
        for ax, trace in zip(self.axes, traces):
            image = ax.imshow(np.zeros_like(trace.indirect_effect), cmap=EFFECT_CMAP, aspect="auto",
                              interpolation="nearest", norm=TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0))
            ax.set_xticks(range(trace.num_layers))
            ax.set_xlabel("layer")
            self.images.append(image)
            self.bars.append(self.fig.colorbar(image, ax=ax, fraction=0.05))
            self.lines.append(ax.axvline(0, color="red", linewidth=2, visible=False))

    @staticmethod
    def shape_of(traces: Sequence[TraceResult]) -> tuple:
        return tuple((t.kind, len(t.input_tokens), t.num_layers) for t in traces)

    def save(self, traces: Sequence[TraceResult], path: str | Path, best_layer: int | None = None,
             title: str | None = None) -> None:
        if self.shape_of(traces) != self.shape:
            raise ValueError(f"traces of shape {self.shape_of(traces)} drawn on a figure of shape {self.shape}")
        first = traces[0]
        for ax, image, bar, line, trace in zip(self.axes, self.images, self.bars, self.lines, traces):
            effect = trace.indirect_effect
            limit = max(float(np.abs(effect).max()), 1e-6)
            image.set_data(effect)
            image.set_norm(TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit))
            bar.update_normal(image)
            bar.set_label(effect_label(trace), fontsize=8)
            ax.set_yticks(range(len(trace.input_tokens)), token_labels(trace))
            window = f", window {trace.window}" if trace.kind != "hidden" else ""
            ax.set_title(f"{KIND_TITLES.get(trace.kind, trace.kind)}{window}", fontsize=9)
            line.set_visible(best_layer is not None)
            if best_layer is not None:
                line.set_xdata([best_layer, best_layer])
        score = "p" if first.metric == "prob" else "logit diff"
        self.fig.suptitle(title or f"{first.prompt} -> {first.answer}   (clean {score}={first.high_score:.3f}, "
                          f"corrupted {score}={first.low_score:.3f})\n{how_traced(first)}", fontsize=9)
        # fixed margins (inches) instead of tight_layout: a third of the drawing time, and these figures are many
        width, height = self.fig.get_figwidth(), self.fig.get_figheight()
        label_inches = 0.1 + 0.08 * max(len(label) for label in token_labels(first))
        self.fig.subplots_adjust(left=label_inches / width, right=0.95, bottom=0.55 / height, top=1 - 0.75 / height,
                                 wspace=0.55)
        save_figure(self.fig, path)


def _plot_chunk(jobs: Sequence[tuple]) -> int:
    """Draw `plot_trace` jobs (traces, path, best_layer) in turn, reusing one `TraceFigure` per shape; returns how
    many were drawn."""
    figures: dict[tuple, TraceFigure] = {}
    for traces, path, best_layer in jobs:
        traces = list(traces.values()) if isinstance(traces, Mapping) else list(traces)
        shape = TraceFigure.shape_of(traces)
        if shape not in figures:
            figures[shape] = TraceFigure(traces)
        figures[shape].save(traces, path, best_layer)
    return len(jobs)


def plot_traces(jobs: Sequence[tuple], progress: bool = False, workers: int | None = None,
                chunk: int = 5) -> None:
    """Many `plot_trace(traces, path, best_layer)` figures. Drawing is CPU-bound Python, so with more than a few
    figures they are drawn in forked worker processes (one per CPU core, at most 4), `chunk` figures per task on one
    reused `TraceFigure`; figures only, no torch work."""
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    bar = tqdm(total=len(jobs), desc="plotting", unit="fig", disable=not progress)
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    if workers > 1 and len(jobs) > 4 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for done in pool.map(_plot_chunk, chunks):
                bar.update(done)
    else:
        for part in chunks:
            bar.update(_plot_chunk(part))
    bar.close()


def plot_average_effects(averages: Mapping[str, AverageEffects], path: str | Path, description: str | None = None
                         ) -> None:
    """Mean indirect effect per layer, one line per token group, shaded 95% intervals; one panel per kind.
    description: how the traces were made (`how_traced(..., per_fact=False)`), as the figure's title."""
    fig = Figure(figsize=(4.6 * len(averages), 3.6 if description is None else 3.9))
    axes = fig.subplots(1, len(averages), squeeze=False, sharey=True)
    colors = dict(zip(TOKEN_GROUPS, matplotlib.colormaps['tab10'].colors))
    for ax, (kind, average) in zip(axes[0], averages.items()):
        for name, group in average.groups.items():
            layers = np.arange(len(group.mean))
            ax.plot(layers, group.mean, label=f"{name.replace('_', ' ')} (n={group.count})", color=colors[name])
            ax.fill_between(layers, group.mean - group.ci95, group.mean + group.ci95, color=colors[name], alpha=0.2)
        ax.axhline(0, color="black", linewidth=0.5)
        window = f", window {average.window}" if kind != "hidden" else ""
        ax.set_title(f"{KIND_TITLES.get(kind, kind)}{window}", fontsize=9)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("average indirect effect")
    axes[0][-1].legend(fontsize=7, loc="best")
    if description is not None:
        fig.suptitle(description, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_best_layers(best_layers: Sequence[int], num_layers: int, path: str | Path, label: str = "best layer") -> None:
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    counts = np.bincount(np.asarray(best_layers, dtype=int), minlength=num_layers)
    ax.bar(range(num_layers), counts, color="#d73027")
    ax.set_xticks(range(num_layers))
    ax.set_xlabel(label)
    ax.set_ylabel("facts")
    ax.set_title(f"{label} over {len(best_layers)} facts", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_knockout(averages: Mapping[str, GroupEffect], window: int, path: str | Path) -> None:
    """Mean change of p(answer) per layer when the last token's attention to each target (subject, relation) is
    blocked in the `window` layers around the layer, shaded 95% intervals."""
    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.subplots()
    for (target, average), color in zip(averages.items(), ("#d73027", "#4575b4")):
        layers = np.arange(len(average.mean))
        ax.plot(layers, average.mean, label=f"last token -> {target} (n={average.count})", color=color)
        ax.fill_between(layers, average.mean - average.ci95, average.mean + average.ci95, color=color, alpha=0.2)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(range(len(next(iter(averages.values())).mean)))
    ax.set_xlabel("layer (centre of the blocked window)")
    ax.set_ylabel("change of p(answer)")
    ax.set_title(f"attention knockout, window {window}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def plot_comparison(first: Mapping[str, AverageEffects], second: Mapping[str, AverageEffects], labels: Sequence[str],
                    path: str | Path, groups: Sequence[str] = ("last", "last_subject")) -> None:
    """Average indirect effects of two runs side by side, one panel per kind both have: `groups` of the first run
    solid, of the second dashed, shaded 95% intervals."""
    kinds = [kind for kind in first if kind in second]
    fig = Figure(figsize=(4.6 * len(kinds), 4.0))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    colors = dict(zip(TOKEN_GROUPS, matplotlib.colormaps['tab10'].colors))
    for ax, kind in zip(axes, kinds):
        for averages, style in ((first, "-"), (second, "--")):
            for name in groups:
                group = averages[kind].groups.get(name)
                if group is None:
                    continue
                layers = np.arange(len(group.mean))
                ax.plot(layers, group.mean, style, color=colors[name],  # one legend entry per group
                        label=name.replace("_", " ") if style == "-" else None)
                ax.fill_between(layers, group.mean - group.ci95, group.mean + group.ci95, color=colors[name],
                                alpha=0.12)
        ax.axhline(0, color="black", linewidth=0.5)
        window = f", window {first[kind].window}" if kind != "hidden" else ""
        ax.set_title(f"{KIND_TITLES.get(kind, kind)}{window}", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_xticks(range(len(next(iter(first[kind].groups.values())).mean)))
    axes[0].set_ylabel("average indirect effect")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"solid: {labels[0]}\ndashed: {labels[1]}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
