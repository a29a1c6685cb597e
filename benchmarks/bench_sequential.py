#!/usr/bin/env python3
"""Sequential ROME edits (one after another, in place): does the model collapse? Settings side by side.

    python benchmarks/bench_sequential.py [--num-edits 100] [--every 20] [--settings default,original_keys]

C comes from the initial weights (statistics_from="initial"). Retention = fact accuracy over the KG's unedited facts.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.evaluation import draw_requests, sequential_edits  # noqa: E402
from src.edit.rome import ROME  # noqa: E402
from src.edit.rome_hparams import load_hparams  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402

SETTINGS = {
    "default": {},
    "original_keys": {"key_mode": "original", "v_objective": "lookup"},
    "lookup": {"v_objective": "lookup"},
    "clamp4": {"clamp_norm_factor": 4.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-dir", default="data/kg/ba")
    parser.add_argument("--hparams", default="configs/rome_gpt_small.yaml")
    parser.add_argument("--num-edits", type=int, default=100)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--settings", default="default,original_keys")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    base_model, tokenizer = load_model(args.model_dir, device=args.device)
    graph = read_graph_jsonl(Path(args.kg_dir) / "graph.jsonl")
    requests = draw_requests(graph, args.num_edits, seed=1)
    curves = {}
    for name in args.settings.split(","):
        rome = ROME(copy.deepcopy(base_model), tokenizer, device=args.device,
                    kg_corpus_path=Path(args.kg_dir) / "corpus.train.txt",
                    hparams=load_hparams(args.hparams).with_overrides(**SETTINGS[name]), progress=False,
                    statistics_from="initial")
        curves[name] = sequential_edits(rome, requests, graph.facts, args.every)
    print(f"\n{args.num_edits} sequential edits of {args.model_dir}: retention / past-edit efficacy")
    print(f"{'edits':>6}" + "".join(f"{name:>26}" for name in curves))
    for i, point in enumerate(next(iter(curves.values()))):
        cells = [f"{c[i].retention:.3f} / {c[i].past_efficacy:.3f}" for c in curves.values()]
        print(f"{point.num_edits:>6}" + "".join(f"{cell:>26}" for cell in cells))


if __name__ == "__main__":
    main()
