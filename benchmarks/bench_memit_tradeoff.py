#!/usr/bin/env python3
"""MEMIT on one batch: efficacy against preservation of the rest of the KG, for several lambdas and layer sets.

    python benchmarks/bench_memit_tradeoff.py [--num-edits 500] [--lambdas 100,200,300]
        [--layer-sets 0-1-2,0-1-2-3-4-5-6-7] [--mom2-source fact_prompts] [--hparam v_stop_prob=0.99 ...]

The target residuals z do not depend on lambda, so they are computed once per layer set; each lambda then applies
MEMIT's layer updates to a fresh copy of the weights. unchanged = share of the unedited KG facts whose top-1 is as
before; retention = accuracy on them.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.evaluation.metrics import KGEvaluator  # noqa: E402
from src.edit.evaluation.prompt_probe import PromptProbe  # noqa: E402
from src.pipelines.evaluate_methods import default_corpus  # noqa: E402
from src.edit.evaluation.requests import draw_requests  # noqa: E402
from src.edit.methods import EditEnvironment, build_editor  # noqa: E402
from src.edit.methods.memit import MEMITHyperParams  # noqa: E402
from src.edit.prompts.encoding import answer_token_id  # noqa: E402
from src.edit.prompts.rewrite import rewrite_set  # noqa: E402
from src.edit.model.layout import apply_update  # noqa: E402
from src.utils.config import parse_overrides  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-file", default="data/kg/ba/graph.jsonl")
    parser.add_argument("--num-edits", type=int, default=500)
    parser.add_argument("--lambdas", default="100,200,300")
    parser.add_argument("--layer-sets", default="0-1-2,0-1-2-3-4-5-6-7")
    parser.add_argument("--mom2-source", default="corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                        help="another MEMIT hyperparameter (configs/memit_gpt_small.yaml), e.g. v_stop_prob=0.99")
    args = parser.parse_args()
    overrides = parse_overrides(args.hparam)

    model, tokenizer = load_model(args.model_dir, device="cpu")
    graph = read_graph_jsonl(args.kg_file)
    env = EditEnvironment(default_corpus(args.kg_file), torch.device("cpu"))
    evaluator = KGEvaluator(model, tokenizer, graph.facts)
    requests = draw_requests(graph, args.num_edits, args.seed)
    edited = {(q.s, q.r) for q in requests}
    keep = torch.tensor([(f.s, f.r) not in edited for f in evaluator.facts])
    targets = torch.tensor([answer_token_id(tokenizer, q.target) for q in requests])
    bare = PromptProbe(tokenizer, [f"{q.s} {q.r}" for q in requests])
    print(f"{args.num_edits} edits in one batch, key statistics from {args.mom2_source}, other hyperparameters {overrides}")
    print(f"{'layers':<18}{'lambda':>8}{'efficacy':>10}{'unchanged':>11}{'retention':>11}")
    for layer_set in args.layer_sets.split(","):
        layers = [int(v) for v in layer_set.split("-")]
        work = copy.deepcopy(model)
        editor = build_editor("memit", work, tokenizer, {"layers": layers, "mom2_source": args.mom2_source, **overrides}, env)
        hp = editor.hparams
        sets = [rewrite_set(tokenizer, editor.kg, q.s, q.r, hp.num_context_prefixes, hp.bare_prompt_weight, hp.seed)
                for q in requests]
        started = time.perf_counter()
        chunks = range(0, len(sets), hp.z_batch_size)
        z = torch.cat([editor._target_residuals(sets[i : i + hp.z_batch_size],
                                                targets[i : i + hp.z_batch_size].tolist())[0] for i in chunks])
        z_seconds = time.perf_counter() - started
        original = copy.deepcopy(work.state_dict())
        for lam in (float(v) for v in args.lambdas.split(",")):
            work.load_state_dict(original)
            editor.hparams = MEMITHyperParams(**{**hp.to_dict(), "mom2_update_weight": lam})
            for index, layer in enumerate(layers):
                residual = (z - editor._residuals_now(sets)) / (len(layers) - index)
                keys = editor._request_keys(sets, layer)
                apply_update(editor.layout.mlp_out(layer), editor._layer_update(layer, keys, residual))
            efficacy = float((bare.top1(work) == targets).float().mean())
            predictions = evaluator.kg_probe.top1(work)
            unchanged = float((predictions[keep] == evaluator.predictions_before[keep]).float().mean())
            retention = evaluator.retention(predictions, edited)
            print(f"{layer_set:<18}{lam:>8g}{efficacy:>10.3f}{unchanged:>11.3f}{retention:>11.3f}")
        print(f"{'':<18}(z for {len(requests)} requests: {z_seconds:.0f} s)")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
