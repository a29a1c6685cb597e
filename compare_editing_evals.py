#!/usr/bin/env python3
"""Two edit-evaluation runs of the same requests side by side (e.g. two models, or two hyperparameter files):

    python compare_editing_evals.py outputs/eval_D outputs/eval_A --labels D,A [--output comparison.json]
        [--plot differences.png]

Prints, as Markdown tables, each method's estimates in both runs, the paired differences first - second over the
requests both edited (95% paired-bootstrap intervals), and each run's figures by the layers its edits changed;
--output writes it all as JSON, --plot draws the paired differences (one panel per metric).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from src.cli.common import run_cli
from src.edit.evaluation.estimates import Estimate
from src.pipelines.compare_evaluations import compare_evaluations, save_comparison
from src.utils.errors import InputError
from src.utils.io import require_writable_dir

COLUMNS = (("efficacy", "efficacy"), ("paraphrase", "paraphrase"), ("context_robustness", "context"),
           ("specificity_neighbourhood", "neighbourhood"), ("specificity_relation", "same relation"),
           ("specificity_subject", "subject's facts"), ("specificity_random", "random"),
           ("retention_drop_points", "retention drop"))


def cells(metrics: dict) -> str:
    return " | ".join(str(Estimate.from_dict(metrics[name])) if name in metrics else "n/a" for name, _ in COLUMNS)


def table(first_column: str, rows: list[tuple[str, dict]]) -> str:
    head = f"| {first_column} | " + " | ".join(label for _, label in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    return "\n".join([head, rule] + [f"| {name} | {cells(metrics)} |" for name, metrics in rows])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compare two edit-evaluation run directories of the same requests.")
    p.add_argument("first", help="run directory of run_editing_eval.sh")
    p.add_argument("second", help="run directory of the same requests (same KG, seed, mode, split)")
    p.add_argument("--labels", default=None, help="FIRST,SECOND (default: the directories' names)")
    p.add_argument("--output", default=None, help="also write the comparison as JSON to this file")
    p.add_argument("--plot", default=None, help="also draw the paired differences into this image file")
    a = p.parse_args(argv)
    labels = None
    if a.labels is not None:
        labels = tuple(label.strip() for label in a.labels.split(","))
        if len(labels) != 2:
            raise InputError(f"--labels expects FIRST,SECOND, got '{a.labels}'")
    for option, path in (("--output", a.output), ("--plot", a.plot)):
        if path:
            require_writable_dir(Path(path).parent, f"the directory of {option}")
    comparison = compare_evaluations(a.first, a.second, labels)
    first, second = comparison.labels
    n = max((d["n"] for m in comparison.methods for d in comparison.differences[m].values()), default=0)
    print(f"{first}: {comparison.directories[0]}; {second}: {comparison.directories[1]}; up to {n} requests in both; "
          "mean [95% interval]\n")
    print(table("method (run)", [(f"{m} ({label})", comparison.estimates[m][label])
                                 for m in comparison.methods for label in comparison.labels]))
    print(f"\nPaired differences {first} - {second} over the requests both edited:\n")
    print(table(f"{first} - {second}", [(m, comparison.differences[m]) for m in comparison.methods]))
    print("\nBy the layers each edit changed:\n")
    print(table("method (run): layers, edits", [
        (f"{m} ({label}): {layers}, {metrics['efficacy']['n']}", metrics)
        for m in comparison.methods for label in comparison.labels
        for layers, metrics in comparison.by_layer[m][label].items()]))
    save_comparison(comparison, a.output, a.plot)
    for written in (a.output, a.plot):
        if written:
            print(f"-> {written}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
