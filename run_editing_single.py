#!/usr/bin/env python3
"""Edit one fact with ROME: ./run_editing.sh -s E_000 -r R_04 -o E_999 [--layer 5] [--kg-corpus FILE] ...

Writes edit_result.json, locating_result.png and editing_result.png to --output-dir.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from src.cli.common import add_dtype_argument, run_cli
from src.cli.paths import repo_path
from src.pipelines import defaults
from src.pipelines.edit_fact import SingleEditConfig, run_single_edit


def parse_args(argv: Sequence[str] | None) -> SingleEditConfig:
    p = argparse.ArgumentParser(description="Edit one fact of a KG model with ROME.")
    p.add_argument("--model-dir", default=repo_path(defaults.MODEL_DIR),
                   help="trained model directory (default: outputs/models/gpt_small)")
    p.add_argument("--kg-corpus", default=None,
                   help=f"corpus for key statistics, context prefixes and KL facts (default: {defaults.KG_CORPUS} when it exists)")
    p.add_argument("--no-corpus", action="store_true", help="edit without a corpus (C = I, no prefixes, no KL)")
    p.add_argument("-s", "--subject", required=True, help="subject entity, e.g. E_000")
    p.add_argument("-r", "--relation", required=True, help="relation, e.g. R_04")
    p.add_argument("-o", "--target", required=True, help="new object the model should predict, e.g. E_999")
    p.add_argument("--original", default=None, help="original object for comparison (default: the model's prediction)")
    p.add_argument("--layer", type=int, default=None, help="layer to edit (default: located by causal tracing)")
    p.add_argument("--output-dir", default=repo_path("outputs/editing_results"),
                   help="results directory (default: outputs/editing_results)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    add_dtype_argument(p)
    p.add_argument("--hparams", default=repo_path(defaults.ROME_HPARAMS),
                   help="ROME hyperparameters YAML (default: configs/rome_gpt_small.yaml)")
    p.add_argument("--save-model", default=None, help="also write the edited model to this directory (never the input)")
    a = p.parse_args(argv)
    corpus = a.kg_corpus
    if corpus is None and not a.no_corpus and Path(repo_path(defaults.KG_CORPUS)).is_file():
        corpus = repo_path(defaults.KG_CORPUS)
    return SingleEditConfig(
        model_dir=a.model_dir, subject=a.subject, relation=a.relation, target=a.target,
        kg_corpus=None if a.no_corpus else corpus, original=a.original, layer=a.layer, output_dir=a.output_dir,
        device=a.device, dtype=a.dtype, hparams=a.hparams, save_model=a.save_model,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    report = run_single_edit(config)
    r = report.result
    if r.status == "unchanged":
        print(f"Nothing to do: {r.note}. No outputs written.")
        return 0
    print(f"\nROME edit {r.subject} {r.relation}: {r.original_prediction} -> {r.target}")
    print(f"  success             {r.success}   (new prediction {r.new_prediction})")
    print(f"  layer               {r.layer} ({r.layer_source}), edit position: {r.fact_token} token")
    print(f"  {'p(' + r.target + ')':<20}{r.target_prob_before:.4f} -> {r.target_prob_after:.4f}")
    print(f"  {'p(' + r.original + ')':<20}{r.original_prob_before:.4f} -> {r.original_prob_after:.4f}")
    print(f"  |dW| {r.update_norm:.3f}   |delta| {r.delta_norm:.3f}   {r.v_steps} optimisation steps   {r.elapsed_seconds:.2f} s")
    if r.metrics:
        m = r.metrics
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"  context robustness  {fmt(m.context_robustness)} (n={m.num_prefix_prompts}), "
              f"paraphrase {fmt(m.paraphrase)}")
        print(f"  specificity         subject's other facts {fmt(m.specificity_subject)} (n={m.num_subject_facts}), "
              f"other subjects {fmt(m.specificity_random)} (n={m.num_random_facts})")
    kept = sum(row["kept"] for row in report.unrelated)
    print(f"  unrelated facts kept {kept}/{len(report.unrelated)}")
    print(f"  -> {config.output_dir}" + (f"; edited model -> {config.save_model}" if config.save_model else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
