#!/usr/bin/env python3
"""How far each step of the researcher's loop is from what its matrix products alone cost on these cores.

    python benchmarks/bench_floors.py [--steps trace,statistics,edit,evaluation,training] [--model-dir DIR]

Each step runs as users call it, first timed alone (wall seconds per call), then again under torch.profiler, which
gives the self time of its matrix products (aten::mm, addmm, bmm, baddbmm) and their FLOPs, hence the rate they ran
at. The rest of the wall time is every other kernel (GELU, attention, norms, copies), Python, hooks and dispatch. A
step whose matrix products alone take longer than its target cannot reach it by removing overhead: only less work
(another algorithm, fewer optimisation steps, another recipe) or faster cores can. The yardstick, timed in the same
run on the same cores: square products of 2048 in float32 and float64.

Steps and their targets:
- trace: one fact, one kind per call (`trace_important_states`, mlp, window 10, 10 noise samples, as notebooks and
  ROME's layer search call it); target: a tenth of the plain one-forward-per-restoration reference, timed here.
- statistics: key statistics of one layer over the default corpus, no cache (`compute_second_moment`); target 3 s.
- edit: `ROME.apply_edit` with statistics cached, as the usage guide calls it (copy, metrics); target 0.5 s.
- evaluation: per rome edit of `./run_editing_eval.sh --methods rome --num-edits 200 --procs 2` (two processes of one
  thread each): evaluations of 2 and 2 + --eval-edits edits on one thread, the difference per edit; target 1.2 s
  (100 edits per process in 120 s).
- training: `train_model` on a fresh model of the config for --training-steps steps, per step, then times the
  steps the model in --model-dir took to reach its target (its train_log.json); target: all of `make demo` in 300 s.
Peak RSS is printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from src.edit.causal_tracing import CausalTracer  # noqa: E402
from src.edit.evaluation.requests import draw_requests  # noqa: E402
from src.edit.rank_one.key_statistics import compute_second_moment  # noqa: E402
from src.edit.reference.plain_tracing import plain_trace  # noqa: E402
from src.edit.rome import ROME  # noqa: E402
from src.kg.corpus import read_corpus  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.config import load_train_config  # noqa: E402
from src.lm.model import build_model, load_model  # noqa: E402
from src.lm.train import train_model  # noqa: E402
from src.pipelines.evaluate_methods import EvalConfig, run_evaluation  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402

PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
STEPS = ("trace", "statistics", "edit", "evaluation", "training")


@dataclasses.dataclass(frozen=True)
class Floor:
    """Seconds per call of one step: wall (timed alone), its matrix products (their self time under the profiler)
    and the rate they ran at (FLOP/s; 0: not counted), everything else (wall - products), and the step's target
    (None: none of its own)."""

    step: str
    calls: int
    wall: float
    products: float
    product_rate: float
    target: float | None

    @property
    def rest(self) -> float:
        return max(0.0, self.wall - self.products)


def measure(step: str, call: Callable[[object], object], items: Sequence, target: float | None,
            per_optimizer_step: bool = False, flops: bool = True) -> Floor:
    """Time `call(item)` over `items` alone, then once more under the profiler. The profiler's events are tallied and
    dropped after each item (with per_optimizer_step, after each step of any torch optimizer), so that it holds one
    call's or one training step's events at a time. flops: count the products' FLOPs (their input shapes recorded;
    False keeps fewer bytes per event, and the rate is reported as 0)."""
    start = time.perf_counter()
    for item in items:
        call(item)
    wall = (time.perf_counter() - start) / len(items)
    tally = {"seconds": 0.0, "flops": 0.0}

    def count(prof) -> None:
        events = [e for e in prof.key_averages() if e.key in PRODUCTS]
        tally["seconds"] += sum(e.self_cpu_time_total for e in events) / 1e6
        tally["flops"] += sum(e.flops for e in events)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(warmup|clears events).*")  # one call or step per cycle, as meant
        with profile(activities=[ProfilerActivity.CPU], with_flops=flops, on_trace_ready=count,
                     schedule=schedule(wait=0, warmup=0, active=1)) as prof:
            hook = register_optimizer_step_post_hook(lambda *_: prof.step()) if per_optimizer_step else None
            try:
                for item in items:
                    call(item)
                    prof.step()
            finally:
                if hook is not None:
                    hook.remove()
    products = tally["seconds"]
    return Floor(step, len(items), wall, products / len(items), tally["flops"] / products if products else 0.0, target)


def yardstick(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a (size, size) @ (size, size) product in `dtype`, best of `repeats`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def trace_floor(model, tokenizer, facts, num_facts: int) -> Floor:
    tracer = CausalTracer(model, tokenizer, device="cpu")
    chosen = facts[:num_facts]

    def call(fact):
        return tracer.trace_important_states(fact.s, fact.r, fact.o, kind="mlp", window=10, num_samples=10)

    traced = [call(fact) for fact in chosen[:4]]  # the reference's prompts and answers (and a warm-up)
    noises = [torch.randn(10, r.subject_range[1] - r.subject_range[0], model.config.hidden_size,
                          generator=torch.Generator().manual_seed(i)) * r.noise_std for i, r in enumerate(traced)]
    start = time.perf_counter()
    for result, noise in zip(traced, noises):
        plain_trace(model, list(result.input_ids), result.subject_range, result.answer_id, noise, "mlp", 10)
    reference = (time.perf_counter() - start) / len(traced)
    return measure("trace (mlp, window 10)", call, chosen, reference / 10)


def statistics_floor(model, tokenizer, corpus: list[str], layer: int) -> Floor:
    return measure(f"key statistics, layer {layer}",
                   lambda _: compute_second_moment(model, tokenizer, corpus, layer, progress=False), [None], 3.0)


def edit_floor(model, tokenizer, graph, corpus_path: Path, num_edits: int) -> Floor:
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=corpus_path, progress=False)
    for layer in range(rome.layout.num_layers):  # statistics cached, as the target asks
        rome.covariance.preconditioner(model, layer, rome.layout.key_size(layer))
    requests = draw_requests(graph, num_edits, 0)

    def call(request) -> None:
        rome.apply_edit(request.s, request.r, request.target, copy_model=True)

    return measure("ROME.apply_edit", call, requests, 0.5)


def evaluation_floor(model_dir: Path, kg_dir: Path, counts: tuple[int, int]) -> Floor:
    """Per edit of `./run_editing_eval.sh --methods rome --num-edits 200 --procs 2`, whose two processes run one
    thread each: evaluations of counts[0] and counts[1] rome edits in this process on one thread, their difference
    per edit (what each further edit costs, the run's fixed work left out). Target: 200 edits in 120 s, i.e. 100
    edits per process, 1.2 s each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = []
        for count in counts:
            with tempfile.TemporaryDirectory() as tmp:
                config = EvalConfig(model_dir=str(model_dir), kg_file=str(kg_dir / "graph.jsonl"),
                                    kg_corpus=str(kg_dir / "corpus.train.txt"), methods=("rome",), num_edits=count,
                                    output_dir=str(Path(tmp) / "eval"), device="cpu", progress=False)
                # one profile for the whole run: torch's profiler crashed (a segmentation fault) closing a cycle from
                # an optimizer step hook inside the evaluation; without shapes the run's events stay a few GiB
                runs.append(measure("evaluation", lambda _: run_evaluation(config, REPO_ROOT), [None], None,
                                    flops=False))
    finally:
        torch.set_num_threads(threads)
    small, large = runs
    edits = counts[1] - counts[0]
    products = large.products - small.products
    return Floor("evaluated rome edit, one thread", edits, (large.wall - small.wall) / edits, products / edits, 0.0,
                 1.2)


def training_floor(config_path: Path, model_dir: Path, tokenizer, steps: int) -> tuple[Floor, int]:
    """Per-step figures of `steps` steps on a fresh model of the config (with the trained model's tokenizer), and the
    steps the trained model in `model_dir` took to its target."""
    config = load_train_config(config_path)
    to_target = int(json.loads((model_dir / "train_log.json").read_text())["result"]["steps"])
    graph = read_graph_jsonl(config.kg_dir / "graph.jsonl")
    lines = read_corpus(config.kg_dir / "corpus.train.txt")
    optim = dataclasses.replace(config.optim, max_steps=steps, eval_every=steps + 1)
    few_facts = list(graph.facts)[:8]  # the one evaluation at the last step, kept small

    def call(_) -> None:
        model = build_model(config.model, tokenizer)
        train_model(model, tokenizer, lines, few_facts, optim, config.seed, progress=False)

    floor = measure("training step", call, [None], None, per_optimizer_step=True)
    per_step = dataclasses.replace(floor, calls=steps, wall=floor.wall / steps, products=floor.products / steps,
                                   target=None)
    return per_step, to_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from: {', '.join(STEPS)}")
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-dir", default="data/kg/ba")
    parser.add_argument("--config", default="configs/train_gpt_small.yaml", help="the model's training config")
    parser.add_argument("--num-facts", type=int, default=16, help="facts traced (one call each)")
    parser.add_argument("--num-edits", type=int, default=10)
    parser.add_argument("--eval-edits", type=int, default=4, help="edits of the evaluation step beyond its first 2")
    parser.add_argument("--layers", default="0,1", help="layers of the statistics step")
    parser.add_argument("--training-steps", type=int, default=30)
    args = parser.parse_args()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step '{unknown[0]}'; allowed: {', '.join(STEPS)}")

    model, tokenizer = load_model(args.model_dir, device="cpu")
    kg_dir = Path(args.kg_dir)
    graph = read_graph_jsonl(kg_dir / "graph.jsonl")
    corpus = read_corpus(kg_dir / "corpus.train.txt")
    floors: list[Floor] = []
    training = None
    for step in steps:
        if step == "trace":
            floors.append(trace_floor(model, tokenizer, list(graph.facts), args.num_facts))
        elif step == "statistics":
            floors.extend(statistics_floor(model, tokenizer, corpus, int(layer)) for layer in args.layers.split(","))
        elif step == "edit":
            floors.append(edit_floor(model, tokenizer, graph, kg_dir / "corpus.train.txt", args.num_edits))
        elif step == "evaluation":
            floors.append(evaluation_floor(Path(args.model_dir), kg_dir, (2, 2 + args.eval_edits)))
        else:
            training = training_floor(Path(args.config), Path(args.model_dir), tokenizer, args.training_steps)
    rates = {dtype: yardstick(dtype) for dtype in (torch.float32, torch.float64)}

    print(f"\nseconds per call; products: the matrix products' self time (profiled), at the rate in GFLOP/s; rest: "
          f"wall - products (other kernels, Python, hooks)\nyardstick, 2048^3 products on these cores: float32 "
          f"{rates[torch.float32] / 1e9:.0f} GFLOP/s, float64 {rates[torch.float64] / 1e9:.0f} GFLOP/s")
    if training is not None:
        f, to_target = training
        floors += [f, Floor("training, to the target", to_target, f.wall * to_target, f.products * to_target, 0.0,
                            300.0)]
    rows = [(f.step, f.calls, f.wall, f.products, f"{f.product_rate / 1e9:.0f}" if f.product_rate else "-", f.rest,
             f.target) for f in floors]
    width = max(len(row[0]) for row in rows) + 2
    print(f"{'step':<{width}}{'calls':>6}{'wall':>10}{'products':>10}{'GFLOP/s':>9}{'rest':>10}{'target':>9}"
          f"{'products / target':>19}")
    for step, calls, wall, products, rate, rest, target in rows:
        tail = "" if target is None else f"{target:>9.3f}{products / target:>19.2f}"
        print(f"{step:<{width}}{calls:>6}{wall:>10.4f}{products:>10.4f}{rate:>9}{rest:>10.4f}{tail}")
    if training is not None:
        print(f"training: per step over {training[0].calls} steps of a fresh model (its construction and one 8-fact "
              f"evaluation included), times the {training[1]} steps {args.model_dir} took to its target; the target "
              "is all of make demo")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
