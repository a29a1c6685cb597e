#!/usr/bin/env python3
"""The speed paths against the plain paths they replace, side by side in one process, with the results compared.

    python benchmarks/bench_fast_paths.py [--model-dir outputs/models/gpt_mlp2048] [--rome-edits 10] [--memit-edits 16]

Plain = `SpeedPaths.plain()` (`src.edit.model.speedups`), the paths the speed paths replace: GPT-2's gelu_new as
transformers runs it (eight elementwise passes), weights that require grad while delta is optimised, every prompt of
a batch in one forward (the KG probe with every prompt run whole), ROME's delta and MEMIT's z steps through the whole
model. (Two other savings are on in both columns: ROME keeps the initial C and its factorisation per layer, and the
evaluation skips ROME's own metric prompts.) Rows:
  KG probe     one top-1 pass over every KG fact (what independent evaluation runs after each edit)
  rome         independent edits (edit + restore), method time only
  memit        one batch of edits
  evaluation   run_method("rome", independent): edits and all their metrics
Each row prints seconds plain / fast, the ratio, and how far the results differ (updates: max |dW_plain - dW_fast| /
max |dW_plain| per edit call; float32 rounding, amplified where C is ill-conditioned: up to ~1e-3 at layer 1 of the
d_ff 512 model, whose rank-one updates reach entries of 30).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit import rome  # noqa: E402
from src.edit.evaluation.metrics import KGEvaluator  # noqa: E402
from src.pipelines.evaluate_methods import default_corpus, run_method  # noqa: E402
from src.edit.model.speedups import SpeedPaths  # noqa: E402
from src.edit.evaluation.requests import draw_requests  # noqa: E402
from src.edit.prompts.kg_context import KGContext  # noqa: E402
from src.edit.methods import EditEnvironment, build_editor  # noqa: E402
from src.edit.evaluation.prompt_probe import PromptProbe  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.utils.device import resolve_device  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402


PLAIN = SpeedPaths.plain()


def timed(function):
    """(seconds, value); waits for queued CUDA work before reading the clock."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    synchronize()
    started = time.perf_counter()
    value = function()
    synchronize()
    return time.perf_counter() - started, value


def row(name: str, plain: float, fast: float, unit: str, difference: str) -> None:
    print(f"{name:<12} {plain:>10.3f} {fast:>10.3f} {plain / fast:>7.1f}x  {unit:<8} {difference}", flush=True)


def edited_weights(editor_name, model, tokenizer, requests, env, hparams, batch: bool) -> tuple[float, list]:
    """(seconds, the weight updates of each edit call) on a private copy of `model`."""
    work = copy.deepcopy(model)
    editor = build_editor(editor_name, work, tokenizer, hparams, env)
    snapshot = {n: p.detach().clone() for n, p in work.named_parameters()}
    weights, seconds = [], 0.0
    for group in ([requests] if batch else [[q] for q in requests]):
        elapsed, output = timed(lambda group=group: editor.edit(group))
        seconds += elapsed
        params = dict(work.named_parameters())
        weights.append([(params[n] - snapshot[n]).detach().clone() for n in output.changed])
        with torch.no_grad():
            for n in output.changed:
                params[n].copy_(snapshot[n])
        editor.forget()
    return seconds, weights


def max_difference(a: list, b: list) -> float:
    """The largest |update_a - update_b| relative to the largest |update_a|, over the edit calls."""
    return max((float((x - y).abs().max() / x.abs().max()) for wa, wb in zip(a, b) for x, y in zip(wa, wb)),
               default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-file", default="data/kg/ba/graph.jsonl")
    parser.add_argument("--rome-edits", type=int, default=10)
    parser.add_argument("--memit-edits", type=int, default=16)
    parser.add_argument("--eval-edits", type=int, default=5)
    parser.add_argument("--rome-hparams", default="configs/rome_gpt_small.yaml")
    parser.add_argument("--memit-hparams", default="configs/memit_gpt_small.yaml")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    args = parser.parse_args()
    device = resolve_device(args.device)

    graph = read_graph_jsonl(args.kg_file)
    corpus = default_corpus(args.kg_file)
    model, tokenizer = load_model(args.model_dir, device=device, dtype="float32")
    env = EditEnvironment(corpus_path=corpus, device=device)
    plain_env = EditEnvironment(corpus_path=corpus, device=device, speed=PLAIN)
    where = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else str(device)
    print(f"{args.model_dir}: {sum(p.numel() for p in model.parameters()):,} parameters, {where}")
    print(f"{'':<12} {'plain s':>10} {'fast s':>10} {'ratio':>8}  {'per':<8} results")

    prompts = [f.prompt() for f in graph.facts]
    probe_fast = PromptProbe(tokenizer, prompts)
    probe_plain = PromptProbe(tokenizer, prompts, speed=PLAIN)
    probe_fast.top1(model)  # warm-up
    plain_s, plain_top1 = timed(lambda: probe_plain.top1(model))
    fast_s, fast_top1 = timed(lambda: probe_fast.top1(model))
    row("KG probe", plain_s, fast_s, "pass", f"{len(prompts)} facts, top-1 differs on {int((plain_top1 != fast_top1).sum())}")

    requests = draw_requests(graph, max(args.rome_edits, args.memit_edits, args.eval_edits), 0)
    rome_requests = requests[: args.rome_edits]
    edited_weights("rome", model, tokenizer, rome_requests[:1], env, args.rome_hparams, False)  # C into the cache
    plain_s, plain_w = edited_weights("rome", model, tokenizer, rome_requests, plain_env, args.rome_hparams, False)
    fast_s, fast_w = edited_weights("rome", model, tokenizer, rome_requests, env, args.rome_hparams, False)
    row("rome", plain_s / len(rome_requests), fast_s / len(rome_requests), "edit",
        f"{len(rome_requests)} edits, updates differ by {max_difference(plain_w, fast_w):.1e} (relative)")

    memit_requests = requests[: args.memit_edits]
    plain_s, plain_w = edited_weights("memit", model, tokenizer, memit_requests, plain_env, args.memit_hparams, True)
    fast_s, fast_w = edited_weights("memit", model, tokenizer, memit_requests, env, args.memit_hparams, True)
    row("memit", plain_s, fast_s, "batch",
        f"{len(memit_requests)} edits, updates differ by {max_difference(plain_w, fast_w):.1e} (relative)")

    aliases = KGContext.from_corpus(corpus).aliases
    evaluator = KGEvaluator(model, tokenizer, graph.facts, aliases, 5, 20, 20, 0)
    hparams = rome.load_hparams(args.rome_hparams)
    eval_requests = requests[: args.eval_edits]
    plain_evaluator = KGEvaluator(model, tokenizer, graph.facts, aliases, 5, 20, 20, 0, speed=PLAIN)
    plain_s, plain_run = timed(lambda: run_method("rome", model, tokenizer, eval_requests, "independent",
                                                  plain_evaluator, plain_env, hparams, progress=False))
    fast_s, fast_run = timed(lambda: run_method("rome", model, tokenizer, eval_requests, "independent", evaluator,
                                                env, hparams, progress=False))
    same = sum(a.retention_after == b.retention_after and a.efficacy == b.efficacy
               for a, b in zip(plain_run.records, fast_run.records))
    row("evaluation", plain_s / len(eval_requests), fast_s / len(eval_requests), "edit",
        f"{len(eval_requests)} edits, efficacy and retention equal on {same}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
