#!/usr/bin/env python3
"""How cost grows: tracing, editing and evaluation against facts, prompt length and KG size, with fitted slopes.

    python benchmarks/bench_scaling.py [--kg-config configs/kg_ba.yaml] [--train-config configs/train_gpt_small.yaml]

Two KGs from the same generator and config, the default one (1x) and one with 4x the entities (4x the facts, the
corpus lines and the vocabulary), each with a model of the default architecture over its own vocabulary at its
seeded initial weights: what is timed here (forwards, backwards, solves over fixed shapes and fixed step counts)
costs the same whatever the weights hold, and no 4x model needs training. ROME edits at a fixed layer for a fixed
number of optimisation steps (no early stop), so that every edit does the same work.

Printed, each measured alone in this process (best of `--repeats`): time against
  - facts traced per call (trace_many, three kinds) and facts edited (independent rome edits with their evaluation);
  - the prompt length (0, 2 and 5 context prefixes before the traced prompt; 0, 5 and 10 context prefixes in ROME's
    k* and v*);
  - the KG size (1x and 4x): key statistics of one layer, one trace, one edit, and the evaluation of one edit
    (whose retention pass runs a forward over every held-out fact);
with the slope of log(time) against log(size) fitted by least squares (1: linear, 0: constant). Peak RSS at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.causal_tracing import KINDS, CausalTracer, TraceRequest  # noqa: E402
from src.edit.evaluation.metrics import KGEvaluator  # noqa: E402
from src.edit.evaluation.requests import draw_requests  # noqa: E402
from src.edit.methods import EditEnvironment  # noqa: E402
from src.edit.prompts.encoding import encode_fact_prompt  # noqa: E402
from src.edit.prompts.kg_context import KGContext  # noqa: E402
from src.edit.rank_one.key_statistics import load_or_compute_second_moment  # noqa: E402
from src.kg.build import CORPUS_FILE, build_kg  # noqa: E402
from src.kg.corpus import read_corpus  # noqa: E402
from src.kg.generate import load_kg_config  # noqa: E402
from src.kg.split import FactSplit  # noqa: E402
from src.lm.config import load_train_config  # noqa: E402
from src.lm.model import build_model  # noqa: E402
from src.lm.tokenizer import build_kg_tokenizer, corpus_words  # noqa: E402
from src.pipelines.evaluate_methods import run_method  # noqa: E402
from src.pipelines.locate_sample import sample_facts  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402

EDIT_LAYER, EDIT_STEPS = 1, 20


def best_time(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def slope(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def print_series(title: str, unit: str, sizes, seconds, per: str | None = None) -> None:
    cells = "  ".join(f"{size:>4} {unit}: {t:7.3f} s" + (f" ({t / size * 1000:6.1f} ms/{per})" if per else "")
                      for size, t in zip(sizes, seconds))
    print(f"{title:<44}{cells}   slope {slope(sizes, seconds):.2f}")


@dataclasses.dataclass
class Setup:
    name: str
    kg_dir: Path
    model: torch.nn.Module
    tokenizer: object
    graph: object

    @property
    def corpus(self) -> Path:
        return self.kg_dir / CORPUS_FILE


def make_setup(name: str, kg_config, train_config, directory: Path) -> Setup:
    built = build_kg(kg_config, directory)
    lines = read_corpus(built.directory / CORPUS_FILE)
    words = corpus_words(lines) | set(built.graph.entities) | set(built.graph.relations)
    tokenizer = build_kg_tokenizer(train_config.tokenizer.kind, lines, words, train_config.tokenizer.vocab_size,
                                   train_config.tokenizer.bos)
    torch.manual_seed(train_config.seed)
    model = build_model(train_config.model, tokenizer).eval()
    return Setup(name, built.directory, model, tokenizer, built.graph)


def prefixed(setup: Setup, facts, count: int, seed: int) -> list[str]:
    """Per fact, `count` other true facts as a context prefix "s r o ; ... ; "."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(setup.graph.facts), size=(len(facts), count), replace=True)
    return ["".join(f"{setup.graph.facts[j].sentence()} ; " for j in row) for row in picks.tolist()]


def edit_hparams(num_context_prefixes: int) -> dict:
    return {"layer": EDIT_LAYER, "v_num_grad_steps": EDIT_STEPS, "v_stop": "loss", "v_stop_loss": 0.0,
            "layer_retries": 0, "num_context_prefixes": num_context_prefixes}


def evaluate(setup: Setup, cache: Path, num_edits: int, num_context_prefixes: int, seed: int) -> tuple[float, float]:
    """(seconds of the whole independent evaluation of `num_edits` rome edits, seconds of the edits alone)."""
    split = FactSplit(seed)
    aliases = KGContext.from_corpus(setup.corpus).aliases
    evaluator = KGEvaluator(setup.model, setup.tokenizer, setup.graph.facts, aliases, 5, 20, 20, seed, split=split)
    env = EditEnvironment(setup.corpus, torch.device("cpu"), cache, split=split)
    requests = draw_requests(setup.graph, num_edits, seed)
    start = time.perf_counter()
    run = run_method("rome", setup.model, setup.tokenizer, requests, "independent", evaluator, env,
                     edit_hparams(num_context_prefixes), progress=False)
    total = time.perf_counter() - start
    done = {(r.steps, r.layers) for r in run.records}
    assert len(done) == 1 and next(iter(done))[1] == (EDIT_LAYER,), done  # every edit does the same work
    return total, sum(r.seconds for r in run.records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kg-config", default="configs/kg_ba.yaml")
    parser.add_argument("--train-config", default="configs/train_gpt_small.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=10, help="noise samples per trace")
    args = parser.parse_args()
    kg_config, _ = load_kg_config(args.kg_config)
    train_config = load_train_config(args.train_config)
    big = dataclasses.replace(kg_config, num_entities=4 * kg_config.num_entities, anchor_facts=())  # names widen
    torch.set_grad_enabled(True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        setups = [make_setup("1x", kg_config, train_config, tmp / "kg1"), make_setup("4x", big, train_config, tmp / "kg4")]
        for setup in setups:
            print(f"KG {setup.name}: {len(setup.graph.entities)} entities, {len(setup.graph)} facts, "
                  f"{len(read_corpus(setup.corpus))} corpus lines, vocabulary {len(setup.tokenizer)}")
        small = setups[0]
        tracer = CausalTracer(small.model, small.tokenizer, device="cpu", subjects=small.graph.entities)
        facts = sample_facts(small.graph.facts, 64, seed=0)

        def trace(count: int, num_prefixes: int = 0, kinds=KINDS):
            prefixes = prefixed(small, facts[:count], num_prefixes, seed=1)
            requests = [TraceRequest(f.s, f.r, f.o, seed=i, prefix=p) for i, (f, p) in enumerate(zip(facts, prefixes))]
            return lambda: tracer.trace_many(requests, 3.0, args.num_samples, kinds)

        print("\n-- against the number of facts (1x KG)")
        counts = [1, 4, 16, 64]
        print_series("trace_many, three kinds", "facts", counts, [best_time(trace(n), args.repeats) for n in counts],
                     "fact")
        cache = tmp / "cache"
        for setup in setups:  # the statistics the edits use, computed once (timed below)
            load_or_compute_second_moment(setup.model, setup.tokenizer, setup.corpus, EDIT_LAYER, 0, cache, False)
        edits = [2, 4, 8]
        runs = [evaluate(small, cache, n, 10, seed=0) for n in edits]
        print_series("rome edits with their evaluation", "edits", edits, [t for t, _ in runs], "edit")
        print_series("rome edits alone (apply, no metrics)", "edits", edits, [e for _, e in runs], "edit")

        print("\n-- against the prompt length (1x KG)")
        prefixes = [0, 2, 5]
        tokens = [len(encode_fact_prompt(small.tokenizer, facts[0].s, facts[0].r, prefixed(small, facts[:1], n, 1)[0])
                      .input_ids) for n in prefixes]
        print(f"prompt tokens: {tokens} for {prefixes} context prefixes")
        print_series("trace_many of 8 facts, three kinds", "tok", tokens,
                     [best_time(trace(8, n), args.repeats) for n in prefixes])
        print_series("one fact, one kind (mlp)", "tok", tokens,
                     [best_time(trace(1, n, ("mlp",)), args.repeats) for n in prefixes])
        context = [1, 5, 10]
        runs = [evaluate(small, cache, 4, n, seed=0) for n in context]
        print_series("rome edit, k*/v* context prefixes", "pre", context, [e / 4 for _, e in runs])

        print("\n-- against the KG size (1x vs 4x facts, corpus and vocabulary)")
        sizes = [1, 4]
        stats, one_trace, edit, whole = [], [], [], []
        for setup in setups:
            fresh = tmp / f"fresh-{setup.name}"  # an empty cache: C is computed
            stats.append(best_time(lambda: load_or_compute_second_moment(
                setup.model, setup.tokenizer, setup.corpus, 0, 0, fresh, False), 1))
            local = CausalTracer(setup.model, setup.tokenizer, device="cpu", subjects=setup.graph.entities)
            picked = sample_facts(setup.graph.facts, 8, seed=0)
            requests = [TraceRequest(f.s, f.r, f.o, seed=i) for i, f in enumerate(picked)]
            one_trace.append(best_time(lambda: local.trace_many(requests, 3.0, args.num_samples, KINDS), args.repeats) / 8)
            total, alone = evaluate(setup, cache, 4, 10, seed=0)
            edit.append(alone / 4)
            whole.append(total / 4)
        print_series("key statistics, one layer (no cache)", "x", sizes, stats)
        print_series("trace per fact (trace_many of 8, 3 kinds)", "x", sizes, one_trace)
        print_series("rome edit alone", "x", sizes, edit)
        print_series("rome edit with its evaluation", "x", sizes, whole)
        print_series("evaluation of one edit (minus the edit)", "x", sizes, [w - e for w, e in zip(whole, edit)])
    print(f"\npeak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
