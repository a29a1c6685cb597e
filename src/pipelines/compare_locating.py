"""Two locating results directories side by side (e.g. gaussian noise against token replacement, exact tracing
against attribution): average effects in one figure and, where both traced the same facts, how their traces agree
per fact (rank correlation over cells, same best layer: `src.edit.tracing.stats.agreement`).

Writes comparison.png and comparison.json into the plot directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.edit.tracing.stats import MeanAgreement, agreement, mean_agreement
from src.pipelines.locate_sample import load_results
from src.utils.io import atomic_write_json, require_writable_dir
from src.viz.tracing import how_traced, plot_comparison

COMPARISON_PLOT, COMPARISON_FILE = "comparison.png", "comparison.json"


@dataclass(frozen=True)
class LocatingComparison:
    """labels: how each run traced; agreement: per kind, over the facts both traced, the second run read as the
    estimate of the first (empty when they share no fact); peaks: per run (first, second), per kind, the layer and
    value of the last token's peak average effect."""

    directories: tuple[str, str]
    labels: tuple[str, str]
    num_common_facts: int
    agreement: dict[str, MeanAgreement]
    peaks: tuple[dict[str, dict], dict[str, dict]]

    def to_dict(self) -> dict:
        return {"directories": list(self.directories), "labels": list(self.labels),
                "num_common_facts": self.num_common_facts,
                "agreement": {kind: found.to_dict() for kind, found in self.agreement.items()},
                "peaks": {"first": self.peaks[0], "second": self.peaks[1]}}


def compare_results(first_dir: str | Path, second_dir: str | Path, plot_dir: str | Path) -> LocatingComparison:
    """Compare two results directories of `run_locating.sh`; write the figure and the JSON into `plot_dir`."""
    plot_dir = require_writable_dir(Path(plot_dir), "plot directory")
    runs = [load_results(first_dir), load_results(second_dir)]
    labels = tuple(how_traced(next(iter(samples[0].traces.values())), per_fact=False) if samples else str(directory)
                   for (_, samples, _), directory in zip(runs, (first_dir, second_dir)))
    (_, first, first_averages), (_, second, second_averages) = runs
    by_index = {(s.index, s.fact): s for s in second}
    common = [(a, by_index[(a.index, a.fact)]) for a in first if (a.index, a.fact) in by_index]
    kinds = [kind for kind in first_averages if kind in second_averages]
    position = runs[0][0]["parameters"].get("position", "last")
    agreements = {kind: mean_agreement([agreement(a.traces[kind], b.traces[kind], position) for a, b in common])
                  for kind in kinds} if common else {}
    peaks = tuple({kind: {"layer": int(avg.groups["last"].mean.argmax()), "effect": float(avg.groups["last"].mean.max())}
                   for kind, avg in averages.items() if "last" in avg.groups}
                  for averages in (first_averages, second_averages))
    comparison = LocatingComparison((str(first_dir), str(second_dir)), labels, len(common), agreements, peaks)
    plot_dir.mkdir(parents=True, exist_ok=True)
    if kinds:
        plot_comparison(first_averages, second_averages, labels, plot_dir / COMPARISON_PLOT)
    atomic_write_json(plot_dir / COMPARISON_FILE, comparison.to_dict())
    return comparison
