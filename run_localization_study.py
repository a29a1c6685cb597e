#!/usr/bin/env python3
"""Does localization inform editing? ./run_localization_study.sh [--num-facts N] [--output-dir DIR] ...

ROME at every layer for N seeded requests (held-out evaluation), against causal tracing of the same facts (gaussian
and replace, exact and attribution). Writes study_records.jsonl, study_summary.json, localization_vs_editing.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from src.cli.common import run_cli
from src.cli.paths import repo_path
from src.edit.causal_tracing import METRICS
from src.pipelines.localization_study import OUTCOMES, StudyConfig, run_study


def parse_args(argv: Sequence[str] | None) -> StudyConfig:
    defaults = StudyConfig()
    p = argparse.ArgumentParser(description="ROME at every layer against causal tracing (Hase et al.'s question).")
    p.add_argument("--model-dir", default=repo_path(defaults.model_dir))
    p.add_argument("--kg-file", default=repo_path(defaults.kg_file))
    p.add_argument("--kg-corpus", default=None, help="corpus for key statistics and prefixes (default: corpus.train.txt "
                   "beside --kg-file)")
    p.add_argument("--hparams", default=None, help="ROME hyperparameters YAML (default: configs/rome_gpt_small.yaml); "
                   "its layer is replaced by each layer in turn")
    p.add_argument("--num-facts", type=int, default=defaults.num_facts, help="requests (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="requests, split and noise (default: %(default)s)")
    p.add_argument("--output-dir", default=repo_path(defaults.output_dir), help="results directory (default: %(default)s)")
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--allowed-fraction", type=float, default=defaults.allowed_fraction,
                   help="share of the KG's facts ROME may use; the rest are scored (default: %(default)s)")
    p.add_argument("--noise-level", type=float, default=defaults.noise_level,
                   help="gaussian corruption: noise std in units of the entity-embedding std (default: %(default)s)")
    p.add_argument("--num-noise-samples", type=int, default=defaults.num_noise_samples,
                   help="gaussian corruption: noise samples per trace (default: %(default)s)")
    p.add_argument("--window", type=int, default=None, help="layers restored together for mlp/attn traces")
    p.add_argument("--metric", default="prob", choices=METRICS,
                   help="what the traces measure: p(answer) (the original) or the logit difference")
    a = p.parse_args(argv)
    return StudyConfig(model_dir=a.model_dir, kg_file=a.kg_file, kg_corpus=a.kg_corpus, hparams=a.hparams,
                       num_facts=a.num_facts, seed=a.seed, output_dir=a.output_dir, device=a.device,
                       allowed_fraction=a.allowed_fraction, noise_level=a.noise_level,
                       num_noise_samples=a.num_noise_samples, window=a.window, metric=a.metric)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    summary = run_study(config, Path(__file__).resolve().parent)
    tables = summary["explained_beyond_layer"]
    print(f"\n{summary['num_requests']} requests edited at each of {summary['num_layers']} layers in "
          f"{summary['seconds']:.0f} s ({summary['num_failed_edits']} of {summary['num_requests'] * summary['num_layers']} "
          f"edits failed) -> {config.output_dir}")
    outcomes = [name for name in OUTCOMES if tables.get(name)]
    if not outcomes:
        print("  no outcome was measured")
        return 0
    print("  R^2 explained by the edited layer alone: "
          + ", ".join(f"{name} {next(iter(tables[name].values()))['r2_layer']:.3f}" for name in outcomes))
    print("  R^2 gained by adding the traced effect at that layer (rank correlation across layers, mean per request):")
    print(f"  {'trace (corruption/method/kind)':34s}" + "".join(f"{name:>28s}" for name in outcomes))
    for variant in tables[outcomes[0]]:
        cells = []
        for name in outcomes:
            row = tables[name][variant]
            correlation = row["mean_rank_correlation_across_layers"]
            cells.append(f"{row['r2_gain']:.3f} ({'n/a' if correlation is None else format(correlation, '+.2f')})")
        print(f"  {variant:34s}" + "".join(f"{cell:>28s}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
