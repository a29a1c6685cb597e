#!/usr/bin/env python3
"""CUDA checks in one run: tracing and ROME in float32 / float16 / bfloat16 against CPU float32, and speed.

    python benchmarks/cuda_check.py [--num-facts 10] [--num-edits 20]

Prints, per dtype: max |trace score - CPU float32 score| over all kinds and facts, agreement of best layers, and
ROME efficacy / specificity over the same edits; then the batched-vs-plain tracing speed on the GPU.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.causal_tracing import KINDS, CausalTracer  # noqa: E402
from src.edit.evaluation.estimates import mean, proportion  # noqa: E402
from src.edit.evaluation.requests import draw_requests  # noqa: E402
from src.pipelines.locate_sample import sample_facts  # noqa: E402
from src.edit.rome import ROME  # noqa: E402
from src.edit.reference.plain_tracing import plain_trace  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-dir", default="data/kg/ba")
    parser.add_argument("--num-facts", type=int, default=10)
    parser.add_argument("--num-edits", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    graph = read_graph_jsonl(Path(args.kg_dir) / "graph.jsonl")
    corpus = Path(args.kg_dir) / "corpus.train.txt"
    facts = sample_facts(graph.facts, args.num_facts, seed=0)
    base, tokenizer = load_model(args.model_dir, device="cpu")
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")

    # noise scaled like the default: 3 x the entity-embedding std
    std = CausalTracer(base, tokenizer, device="cpu", subjects=graph.entities).embedding_std
    noises = [torch.randn((10, 1, base.config.hidden_size), generator=torch.Generator().manual_seed(i)) * 3 * std
              for i in range(len(facts))]

    def trace_all(model, device):
        tracer = CausalTracer(model, tokenizer, device=device, subjects=graph.entities)
        return [tracer.trace_kinds(f.s, f.r, f.o, noise=n, num_samples=10) for f, n in zip(facts, noises)]

    reference = trace_all(copy.deepcopy(base), "cpu")
    requests = draw_requests(graph, args.num_edits, seed=0)
    print(f"\n{'dtype':<10}{'max|dscore|':>12}{'best layer agree':>18}{'efficacy':>22}{'spec_random':>16}{'spec_subject':>16}")
    for name, dtype in DTYPES.items():
        model = copy.deepcopy(base).to(args.device, dtype)
        traces = trace_all(model, args.device)
        diff = max(float(np.abs(t[k].scores - r[k].scores).max()) for t, r in zip(traces, reference) for k in KINDS)
        agree = np.mean([t["mlp"].best_layer() == r["mlp"].best_layer() for t, r in zip(traces, reference)])
        rome = ROME(model, tokenizer, device=args.device, kg_corpus_path=corpus, progress=False)
        results = [rome.apply_edit(q.s, q.r, q.target)[1] for q in requests]
        print(f"{name:<10}{diff:>12.2e}{agree:>18.2f}{str(proportion(r.success for r in results)):>22}"
              f"{str(mean(r.metrics.specificity_random for r in results)):>22}"
              f"{str(mean(r.metrics.specificity_subject for r in results)):>22}")

    # batched vs plain on the device, float32, identical noise
    model = copy.deepcopy(base).to(args.device)
    tracer = CausalTracer(model, tokenizer, device=args.device, subjects=graph.entities)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    tracer.trace_kinds(facts[0].s, facts[0].r, facts[0].o, noise=noises[0])
    sync(); start = time.perf_counter()
    fast = [tracer.trace_kinds(f.s, f.r, f.o, noise=n) for f, n in zip(facts, noises)]
    sync(); fast_s = (time.perf_counter() - start) / len(facts)
    start = time.perf_counter()
    worst = 0.0
    for f, n, result in zip(facts, noises, fast):
        for kind in KINDS:
            r = result[kind]
            scores, _, _ = plain_trace(model, list(r.input_ids), r.subject_range, r.answer_id, n.to(args.device), kind, r.window)
            worst = max(worst, float(np.abs(scores - r.scores).max()))
    sync(); plain_s = (time.perf_counter() - start) / len(facts)
    print(f"\n{args.device} float32 tracing, 3 kinds: plain {plain_s:.4f} s/fact, batched {fast_s:.4f} s/fact, "
          f"speed-up {plain_s / fast_s:.1f}x, max |batched - plain| {worst:.2e}")
    cuda = torch.cuda.is_available() and torch.device(args.device).type == "cuda"
    print(f"peak RSS: {peak_rss_mib():.0f} MiB"
          + (f"; peak CUDA memory allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else ""))


if __name__ == "__main__":
    main()
