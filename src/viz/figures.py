"""Saving figures: PNG written to a temporary file beside the target, then renamed (never half-written)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from src.utils.io import atomic_path


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
