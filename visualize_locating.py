#!/usr/bin/env python3
"""Re-plot a locating results directory, or trace and plot one fact (the usage guide's single-trace example).

    python visualize_locating.py --results-dir outputs/locating_results        # re-plot, nothing recomputed
    python visualize_locating.py -s E_000 -r R_04 -o E_001 --output trace.png    # one fact, three kinds
    python visualize_locating.py --results-dir DIR_A --compare DIR_B [--plot-dir D]  # two runs side by side
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from src.cli.common import run_cli
from src.utils.io import require_writable_dir
from src.cli.paths import repo_path
from src.edit.causal_tracing import KINDS, CausalTracer
from src.pipelines import defaults
from src.pipelines.compare_locating import compare_results
from src.pipelines.locate_sample import load_results, plot_results
from src.kg.graph import read_graph_jsonl
from src.lm.model import load_model
from src.utils.errors import InputError
from src.viz.tracing import plot_trace


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plot causal traces.")
    p.add_argument("--results-dir", default=None, help="re-plot this run_locating output directory")
    p.add_argument("--plot-dir", default=None, help="where re-plotted figures go (default: the results dir)")
    p.add_argument("--compare", default=None, metavar="OTHER_DIR",
                   help="compare --results-dir with this results directory (e.g. gaussian vs replace, exact vs "
                        "attribution): comparison.png and comparison.json in --plot-dir")
    p.add_argument("-s", "--subject", help="trace one fact: subject")
    p.add_argument("-r", "--relation", help="relation")
    p.add_argument("-o", "--target", default=None, help="answer to trace (default: the model's prediction)")
    p.add_argument("--model-dir", default=repo_path(defaults.MODEL_DIR))
    p.add_argument("--kg-file", default=repo_path(defaults.KG_FILE), help="entities that set the noise scale")
    p.add_argument("--output", default="trace.png", help="PNG for the single trace (default: %(default)s)")
    p.add_argument("--noise-level", type=float, default=3.0)
    p.add_argument("--num-noise-samples", type=int, default=10)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)

    if a.subject or a.relation:
        if not (a.subject and a.relation):
            raise InputError("a single trace needs both --subject and --relation")
        require_writable_dir(Path(a.output).parent, "--output's directory")
        model, tokenizer = load_model(a.model_dir, device=a.device)
        entities = read_graph_jsonl(a.kg_file).entities if Path(a.kg_file).is_file() else None
        tracer = CausalTracer(model, tokenizer, device=a.device, subjects=entities)
        traces = tracer.trace_kinds(a.subject, a.relation, a.target, a.noise_level, a.num_noise_samples, KINDS,
                                    a.window, seed=a.seed)
        best = traces["mlp"].best_layer("last")
        plot_trace(traces, a.output, best_layer=best)
        print(f"{traces['hidden'].prompt} -> {traces['hidden'].answer}: best layer {best} -> {a.output}")
        return 0
    if not a.results_dir:
        raise InputError("give --results-dir DIR to re-plot, or -s/-r to trace one fact")
    if a.compare:
        comparison = compare_results(a.results_dir, a.compare, a.plot_dir or a.results_dir)
        print(f"{comparison.labels[0]}\n  against {comparison.labels[1]}: {comparison.num_common_facts} facts in both")
        for label, peaks in zip(comparison.labels, comparison.peaks):
            print(f"  {label}: last-token peaks " + ", ".join(f"{kind} {p['effect']:.3f} (layer {p['layer']})"
                                                            for kind, p in peaks.items()))
        for kind, found in comparison.agreement.items():
            correlation = "n/a" if found.mean_rank_correlation is None else f"{found.mean_rank_correlation:.3f}"
            print(f"  {kind}: mean rank correlation {correlation}, same best layer "
                  f"{found.same_best_layer:.2f} of {found.num_facts} facts")
        return 0
    summary, samples, averages = load_results(a.results_dir)
    plot_dir = require_writable_dir(Path(a.plot_dir or a.results_dir), "plot directory")
    plot_dir.mkdir(parents=True, exist_ok=True)
    plot_results(samples, averages, summary["num_layers"], plot_dir, progress=True)
    print(f"re-plotted {len(samples)} traces from {a.results_dir} -> {plot_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
