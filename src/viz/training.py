"""Training curve: loss and fact accuracy against steps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from src.viz.figures import save_figure


def plot_training_curve(history: Sequence[dict], path: str | Path, target_accuracy: float | None = None) -> None:
    steps = [h["step"] for h in history]
    fig = Figure(figsize=(6.4, 3.6))
    loss_axis = fig.subplots()
    loss_axis.plot(steps, [h["loss"] for h in history], color="tab:blue", label="loss (object tokens)")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss", color="tab:blue")
    loss_axis.set_yscale("log")
    accuracy_axis = loss_axis.twinx()
    accuracy_axis.plot(steps, [h["accuracy"] for h in history], color="tab:red", label="fact accuracy")
    if target_accuracy is not None:
        accuracy_axis.axhline(target_accuracy, color="tab:red", linestyle=":", linewidth=1)
    accuracy_axis.set_ylabel("fact accuracy", color="tab:red")
    accuracy_axis.set_ylim(0, 1.02)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
