#!/usr/bin/env python3
"""Sequential editing (in place, one edit after another): retention and past-edit efficacy, settings side by side.

    python benchmarks/bench_sequential.py [--num-edits 100] [--every 20] [--settings rome,rome_original,rome_past]

Every setting edits its own copy of the model with the same requests; retention = accuracy over the KG's unedited
facts; past-edit efficacy = share of the edits so far whose target is still top-1. For whole runs with records and
plots use `./run_editing_eval.sh --mode sequential`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.evaluation.metrics import KGEvaluator  # noqa: E402
from src.pipelines.evaluate_methods import default_corpus, run_method  # noqa: E402
from src.edit.evaluation.requests import draw_requests  # noqa: E402
from src.edit.prompts.kg_context import KGContext  # noqa: E402
from src.edit.methods import EditEnvironment  # noqa: E402
from src.kg.split import FactSplit  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.utils.config import parse_overrides  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402

SETTINGS = {  # name -> (method, hyperparameter overrides of the method's defaults)
    "rome": ("rome", {}),
    "rome_original": ("rome-original", {}),
    "rome_lookup": ("rome", {"v_objective": "lookup"}),
    "rome_past": ("rome", {"past_keys_weight": 1.0}),
    "rome_original_past": ("rome-original", {"past_keys_weight": 1.0}),
    "rome_facts": ("rome", {"mom2_source": "fact_prompts"}),
    "rome_both": ("rome", {"mom2_source": "both"}),
    "rome_facts_past": ("rome", {"mom2_source": "fact_prompts", "past_keys_weight": 1.0}),
    "rome_null": ("rome", {"mom2_source": "fact_prompts", "past_keys_weight": 1.0, "null_space_threshold": 0.01}),
    "rome_null_corpus": ("rome", {"past_keys_weight": 1.0, "null_space_threshold": 0.01}),
    "rome_null_0.1": ("rome", {"past_keys_weight": 1.0, "null_space_threshold": 0.1}),
    "rome_null_0.3": ("rome", {"past_keys_weight": 1.0, "null_space_threshold": 0.3}),
    "memit": ("memit", {}),
    "memit_3layers": ("memit", {"layers": [0, 1, 2], "mom2_source": "corpus", "mom2_update_weight": 100.0}),
    "memit_3layers_past": ("memit", {"layers": [0, 1, 2], "mom2_source": "corpus", "mom2_update_weight": 100.0,
                                     "past_keys_weight": 1.0}),
    "memit_3layers_facts": ("memit", {"layers": [0, 1, 2], "mom2_source": "fact_prompts", "mom2_update_weight": 100.0}),
    "memit_layer1": ("memit", {"layers": [1], "mom2_source": "corpus", "mom2_update_weight": 100.0}),
    "memit_layer1_facts": ("memit", {"layers": [1]}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-file", default="data/kg/ba/graph.jsonl")
    parser.add_argument("--num-edits", type=int, default=100)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default="rome,rome_original,rome_past")
    parser.add_argument("--past-keys-weight", type=float, default=None, help="override the *_past settings' weight")
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                        help="another hyperparameter for every setting, e.g. mom2_update_weight=400")
    args = parser.parse_args()
    extra = parse_overrides(args.hparam)

    model, tokenizer = load_model(args.model_dir, device="cpu")
    graph = read_graph_jsonl(args.kg_file)
    corpus = default_corpus(args.kg_file)
    split = FactSplit(args.seed)  # the evaluation's protocol: methods use the allowed facts, retention is on the rest
    evaluator = KGEvaluator(model, tokenizer, graph.facts, KGContext.from_corpus(corpus).aliases, seed=args.seed,
                            split=split)
    env = EditEnvironment(corpus_path=corpus, device=torch.device("cpu"), progress=False, split=split)
    requests = draw_requests(graph, args.num_edits, args.seed)
    results = {}
    for name in args.settings.split(","):
        method, overrides = SETTINGS[name]
        if args.past_keys_weight is not None and "past_keys_weight" in overrides:
            overrides = {**overrides, "past_keys_weight": args.past_keys_weight}
        overrides = {**overrides, **extra}
        started = time.perf_counter()
        run = run_method(method, model, tokenizer, requests, "sequential", evaluator, env, overrides, args.every)
        results[name] = (run, time.perf_counter() - started)

    print(f"{args.num_edits} sequential edits, checkpoints every {args.every}; retention (held-out facts) / past-edit "
          "efficacy")
    names = list(results)
    print(f"{'edits':>6}" + "".join(f"{n:>24}" for n in names))
    for row in range(len(results[names[0]][0].checkpoints)):
        cells = []
        for name in names:
            c = results[name][0].checkpoints[row]
            past = "-" if c.past_efficacy is None else f"{c.past_efficacy:.3f}"
            cells.append(f"{c.retention:.3f} / {past}")
        print(f"{results[names[0]][0].checkpoints[row].num_edits:>6}" + "".join(f"{c:>24}" for c in cells))
    print(f"{'s/edit':>6}" + "".join(f"{results[n][1] / args.num_edits:>24.2f}" for n in names))
    for name in names:
        print(f"{name}: {SETTINGS[name][0]} {SETTINGS[name][1] if args.past_keys_weight is None else ''} {extra or ''}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
