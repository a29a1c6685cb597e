#!/usr/bin/env python3
"""Per-fact tracing time: batched CausalTracer vs the plain one-forward-per-restoration reference, side by side.

    python benchmarks/bench_tracing.py [--model-dir outputs/models/gpt_small] [--num-facts 24] [--window 10]

All run the three kinds on the same facts with the same noise, interleaved fact by fact (so a busy machine slows
every implementation alike), and the script checks the scores are equal. CausalTracer is timed tracing one fact and
one kind per call (`trace_important_states`, as notebooks and ROME's layer search call it), one fact and three kinds
per call (`trace_kinds`) and many facts per call (`trace_many`, what run_locating.sh does); per kind, the one-kind
call against the plain reference of that kind; and the one-kind and many-fact calls with `share_restorations` and
`merge_passes` off (the suffix replay alone); and the many-fact call with corruption "replace" (a replacement drawn
per fact, one corrupted run instead of the noise samples).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.causal_tracing import KINDS, CausalTracer, TraceRequest  # noqa: E402
from src.edit.prompts.encoding import encode_fact_prompt  # noqa: E402
from src.edit.reference.plain_tracing import plain_trace  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.pipelines.locate_sample import sample_facts  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402


class BlockRows:
    """Count the token-rows every transformer block computes inside the context (rows x tokens of each call's
    input): the work of an implementation, apart from how fast its kernels and overheads run."""

    def __init__(self, blocks) -> None:
        self.blocks, self.count = blocks, 0

    def __enter__(self) -> "BlockRows":
        def count(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.count += hidden.shape[0] * hidden.shape[1]
        self.handles = [block.register_forward_pre_hook(count, with_kwargs=True) for block in self.blocks]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-file", default="data/kg/ba/graph.jsonl")
    parser.add_argument("--num-facts", type=int, default=24)
    parser.add_argument("--facts-per-forward", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=10, help="MLP/attention window (10: the original's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()

    model, tokenizer = load_model(args.model_dir, device=args.device)
    model = model.to(getattr(torch, args.dtype))
    graph = read_graph_jsonl(args.kg_file)
    facts = sample_facts(graph.facts, args.num_facts, seed=0)
    tracer = CausalTracer(model, tokenizer, device=args.device, subjects=graph.entities)
    apart = CausalTracer(model, tokenizer, device=args.device, subjects=graph.entities, share_restorations=False,
                         merge_passes=False)  # suffix replay alone
    sync = torch.cuda.synchronize if tracer.device.type == "cuda" else (lambda: None)
    hidden_size = tracer.layout.hidden_size
    requests = []
    for i, fact in enumerate(facts):
        b, e = encode_fact_prompt(tokenizer, fact.s, fact.r).subject_range
        noise = torch.randn(args.num_samples, e - b, hidden_size, generator=torch.Generator().manual_seed(i))
        requests.append(TraceRequest(fact.s, fact.r, fact.o, noise=noise * 3 * tracer.embedding_std))
    window = args.window
    tracer.trace_many(requests[: args.facts_per_forward], num_samples=args.num_samples, window=window)  # warm-up

    def timed(function):
        sync(); start = time.perf_counter()
        value = function()
        sync()
        return value, time.perf_counter() - start

    seconds = {"plain": 0.0, "kind": 0.0, "apart": 0.0, "one": 0.0, "many": 0.0, "many_apart": 0.0, "replace": 0.0}
    replacing = [TraceRequest(q.s, q.r, q.o_target, seed=i) for i, q in enumerate(requests)]  # replacements drawn
    per_kind = {kind: {"plain": 0.0, "kind": 0.0, "apart": 0.0} for kind in KINDS}
    max_diff = 0.0
    traced_alone = []  # per fact, trace_kinds' {kind: TraceResult}, for the work count below
    for i in range(0, len(requests), args.facts_per_forward):
        group = requests[i : i + args.facts_per_forward]
        many, elapsed = timed(lambda: tracer.trace_many(group, num_samples=args.num_samples, window=window,
                                                        facts_per_forward=args.facts_per_forward))
        seconds["many"] += elapsed
        _, elapsed = timed(lambda: apart.trace_many(group, num_samples=args.num_samples, window=window,
                                                    facts_per_forward=args.facts_per_forward))
        seconds["many_apart"] += elapsed
        _, elapsed = timed(lambda: tracer.trace_many(replacing[i : i + args.facts_per_forward], window=window,
                                                     facts_per_forward=args.facts_per_forward, corruption="replace"))
        seconds["replace"] += elapsed
        for request, together in zip(group, many):
            alone, elapsed = timed(lambda: tracer.trace_kinds(request.s, request.r, request.o_target, window=window,
                                                              num_samples=args.num_samples, noise=request.noise))
            seconds["one"] += elapsed
            traced_alone.append(alone)
            for kind in KINDS:
                single, elapsed = timed(lambda: tracer.trace_important_states(
                    request.s, request.r, request.o_target, num_samples=args.num_samples, kind=kind, window=window,
                    noise=request.noise))
                seconds["kind"] += elapsed
                per_kind[kind]["kind"] += elapsed
                _, elapsed = timed(lambda: apart.trace_important_states(
                    request.s, request.r, request.o_target, num_samples=args.num_samples, kind=kind, window=window,
                    noise=request.noise))
                seconds["apart"] += elapsed
                per_kind[kind]["apart"] += elapsed
                result = alone[kind]
                start = time.perf_counter()
                scores, _, _ = plain_trace(model, list(result.input_ids), result.subject_range, result.answer_id,
                                           request.noise.to(tracer.device), kind, result.window)
                sync(); elapsed = time.perf_counter() - start
                seconds["plain"] += elapsed
                per_kind[kind]["plain"] += elapsed
                max_diff = max(max_diff, float(np.abs(scores - result.scores).max()),
                               float(np.abs(scores - together[kind].scores).max()),
                               float(np.abs(scores - single.scores).max()))

    n = len(requests)
    print(f"model {args.model_dir} ({tracer.num_layers} layers, {args.dtype}, {tracer.device}), {n} facts, "
          f"{args.num_samples} noise samples, window {window}, kinds {','.join(KINDS)}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'implementation':<44}{'s/fact':>10}{'speed-up':>10}")
    rows = [("plain (one forward per restored cell)", "plain"),
            ("CausalTracer.trace_important_states (1 kind)", "kind"),
            ("  the same, sharing and merging off", "apart"),
            ("CausalTracer.trace_kinds (1 fact per call)", "one"),
            (f"CausalTracer.trace_many ({args.facts_per_forward} facts per forward)", "many"),
            ("  the same, sharing and merging off", "many_apart"),
            ("  the same, corruption replace (one run)", "replace")]
    for label, key in rows:
        print(f"{label:<44}{seconds[key] / n:>10.4f}{seconds['plain'] / seconds[key]:>9.1f}x")
    for kind, t in per_kind.items():
        print(f"  {kind}: one kind per call {t['kind'] / n * 1000:.1f} ms ({t['plain'] / t['kind']:.1f}x), sharing and "
              f"merging off {t['apart'] / n * 1000:.1f} ms ({t['plain'] / t['apart']:.1f}x), plain {t['plain'] / n * 1000:.1f} ms")
    print(f"max |score difference| from plain: {max_diff:.2e}")
    # the work of one one-kind call (untimed): token-rows through the blocks, the plain reference's and CausalTracer's
    blocks = tracer.layout.blocks
    for kind in KINDS:
        def one_kind(trace: CausalTracer, request: TraceRequest):
            return trace.trace_important_states(request.s, request.r, request.o_target, kind=kind, window=window,
                                                num_samples=args.num_samples, noise=request.noise)

        with BlockRows(blocks) as plain_rows:
            for request, result in zip(requests, (traced[kind] for traced in traced_alone)):
                plain_trace(model, list(result.input_ids), result.subject_range, result.answer_id,
                            request.noise.to(tracer.device), kind, result.window)
        work = {"plain": plain_rows.count / n}
        for name, trace in (("kind", tracer), ("apart", apart)):
            with BlockRows(blocks) as rows:
                for request in requests:
                    one_kind(trace, request)
            work[name] = rows.count / n
        print(f"  {kind}: block token-rows per one-kind call: plain {work['plain']:.0f}, CausalTracer "
              f"{work['kind']:.0f} ({work['plain'] / work['kind']:.1f}x fewer), sharing and merging off "
              f"{work['apart']:.0f} ({work['plain'] / work['apart']:.1f}x fewer)")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
