#!/usr/bin/env python3
"""Per-fact tracing time: batched CausalTracer vs the plain one-forward-per-restoration reference, side by side.

    python benchmarks/bench_tracing.py [--model-dir outputs/models/gpt_small] [--num-facts 10] [--device cpu]

Both run the three kinds on the same facts with the same noise; the script also checks the scores are equal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.causal_tracing import KINDS, CausalTracer  # noqa: E402
from src.edit.tracing_reference import plain_trace  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.edit.locating import sample_facts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-file", default="data/kg/ba/graph.jsonl")
    parser.add_argument("--num-facts", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()

    model, tokenizer = load_model(args.model_dir, device=args.device)
    model = model.to(getattr(torch, args.dtype))
    graph = read_graph_jsonl(args.kg_file)
    facts = sample_facts(graph.facts, args.num_facts, seed=0)
    tracer = CausalTracer(model, tokenizer, device=args.device, subjects=graph.entities)
    sync = torch.cuda.synchronize if tracer.device.type == "cuda" else (lambda: None)
    tracer.trace_kinds(facts[0].s, facts[0].r, facts[0].o)  # warm-up

    fast_seconds, plain_seconds, max_diff = 0.0, 0.0, 0.0
    for i, fact in enumerate(facts):
        generator = torch.Generator().manual_seed(i)
        n_subject = tracer.trace_important_states(fact.s, fact.r, fact.o, num_samples=1).subject_range
        shape = (args.num_samples, n_subject[1] - n_subject[0], tracer.layout.hidden_size)
        noise = torch.randn(shape, generator=generator) * 3 * tracer.embedding_std
        sync(); start = time.perf_counter()
        results = tracer.trace_kinds(fact.s, fact.r, fact.o, num_samples=args.num_samples, noise=noise)
        sync(); fast_seconds += time.perf_counter() - start
        start = time.perf_counter()
        for kind in KINDS:
            result = results[kind]
            scores, _, _ = plain_trace(model, list(result.input_ids), result.subject_range, result.answer_id,
                                       noise.to(tracer.device), kind, result.window)
            max_diff = max(max_diff, float(np.abs(scores - result.scores).max()))
        sync(); plain_seconds += time.perf_counter() - start

    n = len(facts)
    print(f"model {args.model_dir} ({tracer.num_layers} layers, {args.dtype}, {tracer.device}), {n} facts, "
          f"{args.num_samples} noise samples, kinds {','.join(KINDS)}, torch threads {torch.get_num_threads()}")
    print(f"{'implementation':<28}{'s/fact':>10}")
    print(f"{'plain (one forward/cell)':<28}{plain_seconds / n:>10.4f}")
    print(f"{'CausalTracer (batched)':<28}{fast_seconds / n:>10.4f}")
    print(f"speed-up: {plain_seconds / fast_seconds:.1f}x   max |score difference|: {max_diff:.2e}")


if __name__ == "__main__":
    main()
