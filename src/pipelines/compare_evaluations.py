"""Two edit-evaluation run directories of the same requests side by side (two models, or two hyperparameter files of
one method): per method run in both, each run's estimates, the paired differences first - second over the requests
both edited, and each run's estimates by the layers its edits changed.

The runs must share the evaluation protocol (the KG and corpus bytes, seed, mode, split, and the number of prompts
per metric), so that request i is the same request in both and every metric is scored on the same facts; the model
and the hyperparameters may differ. The differences are `summarize`'s, over both runs' records with each method
renamed by its run's label, so they are those an evaluation of both in one run would report. `save_comparison` writes
the comparison as JSON and the paired differences as a figure."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from src.edit.evaluation.metrics import EditRecord
from src.pipelines.evaluate_methods import (COMPARED_METRICS, RECORDS_FILE, RUN_FILE, metric_estimate, read_records,
                                           summarize)
from src.utils.errors import InputError
from src.utils.io import atomic_write_json
from src.viz.evaluation import plot_paired_differences

# What two runs must share for their records to be paired: run parameters (eval_run.json) that decide the requests,
# the split and the scored prompts.
PROTOCOL = ("kg_sha256", "corpus_sha256", "seed", "mode", "allowed_fraction", "num_prefixes", "num_neighbors",
            "num_random", "every")


@dataclass(frozen=True)
class EvaluationComparison:
    """directories, labels: (first, second); methods: those run in both, in the first run's order; estimates:
    method -> label -> metric -> estimate (`Estimate.to_dict`, the run's own summary); differences: method -> metric
    -> paired difference first - second; by_layer: method -> label -> the edited layers ("1" or "1,2") -> metric
    -> estimate over that run's edits at those layers."""

    directories: tuple[str, str]
    labels: tuple[str, str]
    methods: tuple[str, ...]
    estimates: dict[str, dict[str, dict[str, dict]]]
    differences: dict[str, dict[str, dict]]
    by_layer: dict[str, dict[str, dict[str, dict[str, dict]]]]

    def to_dict(self) -> dict:
        return {"directories": list(self.directories), "labels": list(self.labels), "methods": list(self.methods),
                "estimates": self.estimates, "differences": self.differences, "by_layer": self.by_layer}


def read_protocol(run_dir: Path) -> dict:
    """The protocol parameters of an evaluation run directory (its eval_run.json)."""
    path = run_dir / RUN_FILE
    if not path.is_file() or not (run_dir / RECORDS_FILE).is_file():
        raise InputError(f"{run_dir} is not an evaluation run directory (it needs {RUN_FILE} and {RECORDS_FILE}, "
                         "written by run_editing_eval.sh)")
    try:
        identity = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    return {key: identity.get(key) for key in PROTOCOL}


def require_same_protocol(first: Path, second: Path) -> None:
    a, b = read_protocol(first), read_protocol(second)
    for key in PROTOCOL:
        if a[key] != b[key]:
            raise InputError(f"runs {first} and {second} differ in {key} ({a[key]!r} against {b[key]!r}); paired "
                             "differences need the same evaluation protocol: " + ", ".join(PROTOCOL))


def _layers_key(record: EditRecord) -> str:
    return ",".join(str(layer) for layer in record.layers)


def by_edited_layers(records: Sequence[EditRecord], seed: int = 0) -> dict[str, dict[str, dict]]:
    """Edited layers -> compared metric -> estimate over the records that changed those layers (sorted by layer)."""
    groups: dict[str, list[EditRecord]] = {}
    for record in sorted(records, key=lambda r: r.layers):
        groups.setdefault(_layers_key(record), []).append(record)
    return {key: {name: metric_estimate(name, [getattr(r, name) for r in group], seed).to_dict()
                  for name in COMPARED_METRICS}
            for key, group in groups.items()}


def compare_evaluations(first_dir: str | Path, second_dir: str | Path,
                        labels: tuple[str, str] | None = None) -> EvaluationComparison:
    """Compare two run directories of `run_editing_eval.sh` (labels: default, the directories' names)."""
    dirs = (Path(first_dir), Path(second_dir))
    require_same_protocol(*dirs)
    labels = labels or (dirs[0].name, dirs[1].name)
    if len(labels) != 2 or labels[0] == labels[1] or not all(labels):
        raise InputError(f"two different, non-empty labels are needed, got {list(labels)}")
    renamed: tuple[list, list, list] = ([], [], [])  # edits, checkpoints, retention passes of both runs
    own: dict[str, dict[str, list[EditRecord]]] = {}  # method -> label -> that run's edit records
    for directory, label in zip(dirs, labels):
        records = read_records(directory / RECORDS_FILE)  # (edits, checkpoints, retention passes)
        for kept, items in zip(renamed, records):
            kept += [replace(item, method=f"{item.method} ({label})") for item in items]
        edits = records[0]
        for edit in edits:
            own.setdefault(edit.method, {}).setdefault(label, []).append(edit)
    summary = summarize(*renamed)
    methods = tuple(m for m in own if set(own[m]) == set(labels))
    if not methods:
        raise InputError(f"runs {dirs[0]} and {dirs[1]} share no method; they ran "
                         + " and ".join(", ".join(m for m in own if label in own[m]) or "none" for label in labels))
    first, second = labels
    return EvaluationComparison(
        directories=(str(dirs[0]), str(dirs[1])), labels=labels, methods=methods,
        estimates={m: {label: summary[f"{m} ({label})"]["metrics"] for label in labels} for m in methods},
        differences={m: summary[f"{m} ({first})"]["compared"].get(f"{m} ({second})", {}) for m in methods},
        by_layer={m: {label: by_edited_layers(own[m][label]) for label in labels} for m in methods})


def save_comparison(comparison: EvaluationComparison, json_path: str | Path | None = None,
                    plot_path: str | Path | None = None) -> None:
    """Write the comparison to `json_path` (atomically) and its paired differences, one panel per metric, to
    `plot_path`; either may be None."""
    if json_path is not None:
        atomic_write_json(json_path, comparison.to_dict())
    if plot_path is not None:
        plot_paired_differences(comparison.differences, comparison.labels, plot_path)
