"""The localization-vs-editing study's figure (`src.pipelines.localization_study`)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from src.viz.figures import save_figure

EDIT_LINES = {"efficacy": "efficacy", "paraphrase": "paraphrase", "specificity_neighbourhood": "specificity (neighb.)",
              "specificity_random": "specificity (random)"}


def plot_localization_vs_editing(per_layer: Mapping[int, dict], records: Sequence[dict], num_layers: int,
                                 outcome: str, path: str | Path, kind: str = "mlp",
                                 scatter_variant: str = "gaussian/exact") -> None:
    """Three panels: held-out edit metrics per edited layer; the mean traced effect of `kind` per layer for each
    trace variant; the outcome of every edit against its fact's traced effect at the edited layer, coloured by layer."""
    fig = Figure(figsize=(15, 4.2))
    metrics_ax, effects_ax, scatter_ax = fig.subplots(1, 3)
    layers = np.arange(num_layers)
    for name, label in EDIT_LINES.items():
        values = [per_layer[layer].get(name) for layer in range(num_layers)]
        metrics_ax.plot(layers, [np.nan if v is None else v for v in values], marker="o", label=label)
    metrics_ax.set(xlabel="edited layer", ylabel="mean over requests (held-out)", ylim=(-0.02, 1.02),
                   title="ROME at each layer")
    metrics_ax.legend(fontsize=7)
    variants = sorted({name.rsplit("/", 1)[0] for name in per_layer[0] if name.count("/") == 2})
    for variant in variants:
        effects_ax.plot(layers, [per_layer[layer][f"{variant}/{kind}"] for layer in range(num_layers)], marker="o",
                        label=variant)
    effects_ax.set(xlabel="layer", ylabel=f"mean indirect effect ({kind})", title="traced effect at the edit position")
    effects_ax.axhline(0, color="black", linewidth=0.5)
    effects_ax.legend(fontsize=7)
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 1, num_layers))
    name = f"{scatter_variant}/{kind}"
    for layer in range(num_layers):
        rows = [r for r in records if r["layer"] == layer]
        scatter_ax.scatter([r["effects"][name] for r in rows], [r["metrics"][outcome] for r in rows], s=14,
                           color=colours[layer], label=f"layer {layer}")
    scatter_ax.set(xlabel=f"traced effect ({name}) at the edited layer", ylabel=outcome.replace("_", " "),
                   title="edit success against tracing effect")
    scatter_ax.legend(fontsize=6, ncol=2)
    for ax in (metrics_ax, effects_ax):
        ax.set_xticks(layers)
    fig.tight_layout()
    save_figure(fig, path)
