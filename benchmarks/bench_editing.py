#!/usr/bin/env python3
"""ROME quality and speed over random counterfactual edits of the default model, for several settings side by side.

    python benchmarks/bench_editing.py [--num-edits 100] [--settings default,subject_last,original_keys]

Each edit starts from the original weights (copy_model=True). Efficacy: the target is top-1 for `s r`.
Generalization: top-1 behind held-out KG-fact prefixes / with the relation's alias. Specificity: the subject's other
facts / other subjects' facts keep their predictions. Time per edit with key statistics cached (a warm-up edit per
layer fills the cache first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm.auto import tqdm  # noqa: E402

from src.edit.evaluation.estimates import mean, proportion  # noqa: E402
from src.edit.evaluation.requests import draw_requests  # noqa: E402
from src.edit.rome import ROME  # noqa: E402
from src.edit.rank_one.hparams import load_hparams  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402

SETTINGS = {
    "default": {},
    "lookup": {"v_objective": "lookup"},
    "subject_last": {"fact_token": "subject_last"},
    "original_keys": {"key_mode": "original", "v_objective": "lookup"},
    "no_retry": {"layer_retries": 0},
    "facts_stats": {"mom2_source": "fact_prompts"},
    "both_stats": {"mom2_source": "both"},
    "original_all": {"key_mode": "original", "v_objective": "lookup", "fact_token": "subject_last",
                     "clamp_norm_factor": 4.0, "v_weight_decay": 0.5, "v_num_grad_steps": 20, "bare_prompt_weight": 0.05},
}
COLUMNS = ["efficacy", "context", "paraphrase", "spec_subject", "spec_random"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-dir", default="data/kg/ba")
    parser.add_argument("--hparams", default="configs/rome_gpt_small.yaml")
    parser.add_argument("--num-edits", type=int, default=100)
    parser.add_argument("--settings", default="default,subject_last,original_keys")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model_dir, device=args.device)
    graph = read_graph_jsonl(Path(args.kg_dir) / "graph.jsonl")
    requests = draw_requests(graph, args.num_edits, args.seed)
    base = load_hparams(args.hparams)
    rows = {}
    for name in args.settings.split(","):
        hparams = base.with_overrides(**SETTINGS[name])
        rome = ROME(model, tokenizer, device=args.device, kg_corpus_path=Path(args.kg_dir) / "corpus.train.txt",
                    hparams=hparams, progress=False)
        results, seconds = [], 0.0
        for request in tqdm(requests, desc=name, unit="edit"):
            start = time.perf_counter()
            _, result = rome.apply_edit(request.s, request.r, request.target, copy_model=True)
            seconds += time.perf_counter() - start
            results.append(result)
        # time again the first 10 edits now that the statistics of every layer used are cached
        start = time.perf_counter()
        for request in requests[:10]:
            rome.apply_edit(request.s, request.r, request.target, copy_model=True)
        warm = (time.perf_counter() - start) / min(10, len(requests))
        metrics = [r.metrics for r in results]
        rows[name] = {
            "efficacy": proportion(r.success for r in results),
            "context": mean(m.context_robustness for m in metrics),
            "paraphrase": mean(m.paraphrase for m in metrics),
            "spec_subject": mean(m.specificity_subject for m in metrics),
            "spec_random": mean(m.specificity_random for m in metrics),
            "seconds_per_edit_cached": warm,
            "seconds_per_edit_first_pass": seconds / len(requests),
            "layers": sorted({r.layer for r in results}),
        }
    print(f"\n{args.num_edits} counterfactual edits of {args.model_dir} ({args.device}); mean [95% interval]; spec_subject: the KL term's own prompts, not held out")
    print(f"{'setting':<15}" + "".join(f"{c:>22}" for c in COLUMNS) + f"{'s/edit':>9}  layers")
    for name, row in rows.items():
        print(f"{name:<15}" + "".join(f"{str(row[c]):>22}" for c in COLUMNS)
              + f"{row['seconds_per_edit_cached']:>9.3f}  {row['layers']}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
