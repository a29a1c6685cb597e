#!/usr/bin/env python3
"""Attribution patching against exact tracing as prompts grow: time per fact and agreement, side by side.

    python benchmarks/bench_attribution.py [--model-dir outputs/models/gpt_small] [--num-facts 16] [--prefixes 0,2,5]

For each number of context prefixes (other true facts "s r o ; " before the traced prompt, so the cells tokens x
layers multiply), the same facts with the same noise are traced for all three kinds by: CausalTracer.trace_many with
method "exact" and "attribution", the plain one-forward-per-restoration reference (on the first --plain-facts facts),
and, as the yardstick attribution should cost about, a forward of the clean and corrupted rows without gradients
plus a forward and backward of them with gradients. Printed: ms per fact of each, the number of cells, and per kind
attribution's agreement with exact tracing (mean Spearman over cells from the subject on, share of facts with the
same best layer at the last token) and the largest difference of the exact tracer from the plain reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.causal_tracing import KINDS, METRICS, CausalTracer, TraceRequest  # noqa: E402
from src.edit.prompts.encoding import encode_fact_prompt  # noqa: E402
from src.edit.reference.plain_tracing import plain_trace  # noqa: E402
from src.edit.tracing.stats import agreement, mean_agreement  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.pipelines.locate_sample import sample_facts  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402


def prefixes_for(graph, count: int, num_prefixes: int, seed: int) -> list[str]:
    """Per fact, `num_prefixes` random true facts as a context prefix "s r o ; ... ; "."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(graph.facts), size=(count, num_prefixes), replace=True)
    return ["".join(f"{graph.facts[j].sentence()} ; " for j in row) for row in picks.tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-file", default="data/kg/ba/graph.jsonl")
    parser.add_argument("--num-facts", type=int, default=16)
    parser.add_argument("--plain-facts", type=int, default=2, help="facts also traced by the plain reference")
    parser.add_argument("--prefixes", default="0,2,5", help="context prefixes per prompt, comma-separated")
    parser.add_argument("--num-samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=None, help="MLP/attention window (default: the tracer's)")
    parser.add_argument("--metric", default="prob", choices=METRICS)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model_dir, device=args.device)
    graph = read_graph_jsonl(args.kg_file)
    facts = sample_facts(graph.facts, args.num_facts, seed=0)
    tracer = CausalTracer(model, tokenizer, device=args.device, subjects=graph.entities)
    sync = torch.cuda.synchronize if tracer.device.type == "cuda" else (lambda: None)

    def timed(function):
        sync(); start = time.perf_counter()
        value = function()
        sync()
        return value, time.perf_counter() - start

    print(f"model {args.model_dir} ({tracer.num_layers} layers, {tracer.device}), {len(facts)} facts, "
          f"{args.num_samples} noise samples, metric {args.metric}, kinds {','.join(KINDS)}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'prefixes':>8}{'tokens':>8}{'cells':>7}{'exact':>10}{'attrib.':>10}{'fwd+bwd':>10}{'plain':>10}"
          f"{'exact/attr':>12}   (ms per fact, 3 kinds)")
    agreements = {}
    for num_prefixes in [int(n) for n in args.prefixes.split(",")]:
        prefixes = prefixes_for(graph, len(facts), num_prefixes, seed=1)
        requests = []
        for i, (fact, prefix) in enumerate(zip(facts, prefixes)):
            b, e = encode_fact_prompt(tokenizer, fact.s, fact.r, prefix).subject_range
            noise = torch.randn(args.num_samples, e - b, tracer.layout.hidden_size,
                                generator=torch.Generator().manual_seed(i)) * 3 * tracer.embedding_std
            requests.append(TraceRequest(fact.s, fact.r, fact.o, noise=noise, prefix=prefix))
        common = dict(num_samples=args.num_samples, window=args.window, metric=args.metric)
        tracer.trace_many(requests[:2], method="attribution", **common)  # warm-up
        exact, seconds_exact = timed(lambda: tracer.trace_many(requests, **common))
        estimated, seconds_attribution = timed(lambda: tracer.trace_many(requests, method="attribution", **common))
        seconds_yardstick = 0.0
        for request, traced in zip(requests, exact):
            seconds_yardstick += timed(lambda: yardstick(tracer, request, args.num_samples))[1]
        seconds_plain, max_difference = 0.0, 0.0
        for request, traced in zip(requests[: args.plain_facts], exact):
            for kind in KINDS:
                result = traced[kind]
                (scores, _, _), elapsed = timed(lambda: plain_trace(
                    model, list(result.input_ids), result.subject_range, result.answer_id,
                    request.noise.to(tracer.device), kind, result.window, args.metric, result.contrast_id))
                seconds_plain += elapsed
                max_difference = max(max_difference, float(np.abs(scores - result.scores).max()))
        n, tokens = len(requests), len(exact[0]["hidden"].input_ids)
        plain = seconds_plain / max(1, min(args.plain_facts, n)) * 1000
        print(f"{num_prefixes:>8}{tokens:>8}{tokens * tracer.num_layers:>7}{seconds_exact / n * 1000:>10.1f}"
              f"{seconds_attribution / n * 1000:>10.1f}{seconds_yardstick / n * 1000:>10.1f}{plain:>10.1f}"
              f"{seconds_exact / seconds_attribution:>11.1f}x")
        agreements[num_prefixes] = ({kind: mean_agreement([agreement(x[kind], y[kind]) for x, y in zip(exact, estimated)])
                                     for kind in KINDS}, max_difference)
    print("\nattribution vs exact: mean rank correlation over cells / share of facts with the same best layer")
    for num_prefixes, (per_kind, max_difference) in agreements.items():
        cells = "   ".join(f"{kind} {a.mean_rank_correlation:.3f} / {a.same_best_layer:.2f}"
                           for kind, a in per_kind.items())
        print(f"  {num_prefixes} prefixes: {cells}   (exact tracer vs plain: max |difference| {max_difference:.1e})")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


def yardstick(tracer: CausalTracer, request: TraceRequest, num_samples: int) -> None:
    """What attribution should cost: the clean and corrupted rows once without and once with gradients, backward."""
    prompt = encode_fact_prompt(tracer.tokenizer, request.s, request.r, request.prefix)
    b, e = prompt.subject_range
    ids = torch.tensor([list(prompt.input_ids)] * (1 + num_samples), device=tracer.device)
    embeddings = tracer.layout.embed(ids).detach()
    embeddings[1:, b:e] += request.noise.to(embeddings)
    with torch.no_grad():
        tracer.model(inputs_embeds=embeddings, use_cache=False)
    leaf = embeddings.clone().requires_grad_(True)
    measured = tracer.model(inputs_embeds=leaf, use_cache=False).logits[1:, -1].float().softmax(-1).max(-1).values
    torch.autograd.grad(measured.sum(), [leaf])


if __name__ == "__main__":
    main()
