#!/usr/bin/env python3
"""Causal tracing over random KG facts: ./run_locating.sh [--num-samples N] [--output-dir DIR] ...

Writes locating_summary.json, traces.npz, trace_NNN_<s>_<r>_<o>.png, average_indirect_effect.png, best_layers.png.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from src.cli.common import add_dtype_argument, run_cli
from src.cli.paths import repo_path
from src.edit.causal_tracing import CORRUPTIONS, KINDS, METHODS, METRICS
from src.pipelines.locate_sample import LocatingConfig, run_locating


def parse_args(argv: Sequence[str] | None) -> tuple[bool, LocatingConfig]:
    defaults = LocatingConfig()
    p = argparse.ArgumentParser(description="Causal tracing (ROME) over random facts of a knowledge graph.")
    p.add_argument("--model-dir", default=repo_path(defaults.model_dir), help="trained model directory (default: outputs/models/gpt_small)")
    p.add_argument("--kg-file", default=repo_path(defaults.kg_file), help="knowledge graph JSONL (default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=defaults.num_samples, help="random triples to trace (default: %(default)s)")
    p.add_argument("--output-dir", default=repo_path(defaults.output_dir), help="results directory (default: %(default)s)")
    p.add_argument("--noise-level", type=float, default=defaults.noise_level,
                   help="noise std in units of the entity-embedding std (default: %(default)s)")
    p.add_argument("--num-noise-samples", type=int, default=defaults.num_noise_samples,
                   help="noise samples averaged per trace (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="sampling and noise seed (default: %(default)s)")
    p.add_argument("--corruption", default="gaussian", choices=CORRUPTIONS,
                   help="gaussian: noise on the subject's token embeddings (the original); replace: the subject's "
                        "tokens replaced by another entity's with as many tokens whose answer differs, drawn with the "
                        "seed (one corrupted run; --noise-level and --num-noise-samples do not apply)")
    p.add_argument("--metric", default="prob", choices=METRICS,
                   help="prob: p(answer) (the original); logit_diff: logit of the answer minus that of the corrupted "
                        "run's answer")
    p.add_argument("--method", default="exact", choices=METHODS,
                   help="exact: restore every state (the original); attribution: estimate every cell to first order "
                        "from one forward and one backward (attribution patching)")
    p.add_argument("--knockout", action="store_true",
                   help="also attention knockout: p(answer) with the last token's attention to the subject, and apart "
                        "to the relation, blocked in the --window layers around each layer (attention_knockout.png)")
    p.add_argument("--kinds", default=",".join(defaults.kinds), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--window", type=int, default=None,
                   help="layers restored together for mlp/attn (default: num_layers*10/48, i.e. 2 for 8 layers; 10 = original)")
    p.add_argument("--position", default=defaults.position, choices=["last", "subject_last"],
                   help="token whose MLP effect picks the best layer (default: %(default)s)")
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    add_dtype_argument(p)
    p.add_argument("--no-plots", action="store_true", help="write JSON and arrays only")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output-dir (same "
                   "parameters) from the facts it traced")
    a = p.parse_args(argv)
    return a.resume, LocatingConfig(
        model_dir=a.model_dir, kg_file=a.kg_file, num_samples=a.num_samples, output_dir=a.output_dir,
        noise_level=a.noise_level, num_noise_samples=a.num_noise_samples, seed=a.seed,
        kinds=tuple(k.strip() for k in a.kinds.split(",") if k.strip()), window=a.window, position=a.position,
        device=a.device, dtype=a.dtype, plots=not a.no_plots, corruption=a.corruption, metric=a.metric,
        method=a.method, knockout=a.knockout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    resume, config = parse_args(argv)
    summary = run_locating(config, resume=resume)
    if summary is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return 0
    data = summary.to_dict()
    corrupted = ("the subject's tokens replaced by another entity's" if config.corruption == "replace" else
                 f"Gaussian noise ({config.noise_level} sigma, {config.num_noise_samples} samples) on the subject")
    measured = ("p(answer)" if config.metric == "prob" else
                "logit difference: logit of the answer minus that of the corrupted run's answer")
    method = ("exact restorations" if config.method == "exact" else
              "attribution patching (first-order estimates from one forward and one backward)")
    print(f"\nTraced {data['num_traced']} facts ({data['num_skipped']} skipped: the model gets them wrong) "
          f"in {summary.seconds:.1f} s -> {config.output_dir}\n  corruption: {corrupted}\n  metric:     {measured}"
          f"\n  method:     {method}")
    if data["num_traced"]:
        short = "p(answer)" if config.metric == "prob" else "logit diff"
        rows = [("mean best layer", f"{data['mean_best_layer']:.2f}   ({summary.best_layer_rule})"),
                (f"mean clean {short}", f"{data[f'mean_clean_{config.metric}']:.3f}"),
                (f"mean corrupted {short}", f"{data[f'mean_corrupted_{config.metric}']:.3f}")]
        width = max(len(label) for label, _ in rows) + 2
        for label, value in rows:
            print(f"  {label:<{width}}{value}")
        for kind, avg in summary.averages.items():
            last = avg.groups.get("last")
            subject = avg.groups.get("last_subject")
            if last is not None and subject is not None:
                print(f"  {kind:6s} peak avg effect: last token {last.mean.max():.3f} (layer {int(last.mean.argmax())}), "
                      f"last subject token {subject.mean.max():.3f} (layer {int(subject.mean.argmax())})")
        for target, avg in summary.knockout_averages.items():
            print(f"  knockout last token -> {target:8s} largest mean drop of p(answer) {-avg.mean.min():.3f} "
                  f"(window centred on layer {int(avg.mean.argmin())})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
