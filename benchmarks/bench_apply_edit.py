#!/usr/bin/env python3
"""Where the time of one `ROME.apply_edit` goes, with key statistics cached, for settings side by side.

    python benchmarks/bench_apply_edit.py [--num-edits 20] [--settings default,lr_2,normalized_gd_16]

Per setting (hyperparameter overrides of configs/rome_gpt_small.yaml and speed paths; "no_reuse": C read and
factorised for every edit; "padded": delta's forwards on the padded batch, not packed; "lr_N": Adam's learning rate
N; "normalized_gd_N": normalized gradient steps of length N), the same seeded edits, each from the original weights
as the usage guide calls it (copy_model=True, metrics included): seconds per edit in all and in its parts (locating
the layer by tracing, the optimisation of delta with its steps and time per step, v_stop_refine's forwards counted
in delta's time, the metrics' greedy predictions before and after, the rest: keys, the update, decoding, the model
copy), efficacy, context robustness and paraphrase on the edit's own evaluation prompts (context prefixes other
than those the edit was computed with, and the relation's alias), and the mean |delta|. A warm-up edit per layer
fills the statistics cache first. A setting that changes the optimisation changes the edits: its quality columns say
by how much.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import src.edit.rome as rome_module  # noqa: E402
from src.edit.evaluation.requests import draw_requests  # noqa: E402
from src.edit.model.speedups import FAST, SpeedPaths  # noqa: E402
from src.edit.rank_one.hparams import load_hparams  # noqa: E402
from src.edit.rome import ROME  # noqa: E402
from src.kg.graph import read_graph_jsonl  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402

# name -> (hyperparameter overrides, speed paths)
SETTINGS = {"default": ({}, FAST), "no_reuse": ({}, SpeedPaths(reuse_statistics=False)),
            "padded": ({}, SpeedPaths(pack_prompts=False)),
            "lr_1": ({"v_lr": 1.0}, FAST), "lr_2": ({"v_lr": 2.0}, FAST), "no_locate": ({"layer": 1}, FAST),
            "lr_2_refine": ({"v_lr": 2.0, "v_stop_refine": 4}, FAST),
            "normalized_gd_8": ({"v_optimizer": "normalized_gd", "v_lr": 8.0}, FAST),
            "normalized_gd_16": ({"v_optimizer": "normalized_gd", "v_lr": 16.0}, FAST)}


class Timed:
    """Replace `owner.name` by a wrapper that adds its seconds to `self.seconds` (and keeps the last result)."""

    def __init__(self, owner, name: str) -> None:
        self.owner, self.name, self.original = owner, name, getattr(owner, name)
        self.seconds = 0.0

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            value = self.original(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            return value

        setattr(owner, name, wrapper)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--kg-dir", default="data/kg/ba")
    parser.add_argument("--hparams", default="configs/rome_gpt_small.yaml")
    parser.add_argument("--num-edits", type=int, default=20)
    parser.add_argument("--settings", default="default,no_reuse,lr_1,lr_2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model_dir, device="cpu")
    graph = read_graph_jsonl(Path(args.kg_dir) / "graph.jsonl")
    requests = draw_requests(graph, args.num_edits, args.seed)
    base = load_hparams(args.hparams)
    print(f"{args.num_edits} edits of {args.model_dir}, statistics cached; seconds per edit")
    width = max(len(name) for name in ["setting", *args.settings.split(",")]) + 2
    print(f"{'setting':<{width}}{'total':>7}{'locate':>8}{'delta':>7}{'steps':>7}{'ms/step':>9}{'metrics':>9}"
          f"{'rest':>7}{'efficacy':>10}{'context':>9}{'paraphr.':>9}{'|delta|':>9}")
    for name in args.settings.split(","):
        overrides, speed = SETTINGS[name]
        rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=Path(args.kg_dir) / "corpus.train.txt",
                    hparams=base.with_overrides(**overrides), progress=False, speed=speed)
        for layer in range(rome.layout.num_layers):  # fill the statistics cache of every layer
            rome.covariance.preconditioner(model, layer, rome.layout.key_size(layer))
        parts = {"locate": Timed(ROME, "_locate"), "delta": Timed(rome_module, "compute_delta"),
                 "metrics": Timed(rome_module, "edit_predictions")}
        total, results = 0.0, []
        try:
            for request in requests:
                start = time.perf_counter()
                _, result = rome.apply_edit(request.s, request.r, request.target, copy_model=True)
                total += time.perf_counter() - start
                results.append(result)
        finally:
            for part in parts.values():
                part.restore()
        n = len(requests)
        steps = [r.v_steps for r in results if r.status == "edited"]
        per = {key: part.seconds / n for key, part in parts.items()}
        rest = total / n - sum(per.values())
        ms_per_step = parts["delta"].seconds / max(1, sum(steps)) * 1000
        metrics = [r.metrics for r in results if r.metrics is not None]
        context = np.mean([m.context_robustness for m in metrics if m.context_robustness is not None])
        paraphrase = np.mean([m.paraphrase for m in metrics if m.paraphrase is not None])
        efficacy = np.mean([r.success for r in results])
        delta_norm = np.mean([r.delta_norm for r in results if r.status == "edited"])
        print(f"{name:<{width}}{total / n:>7.3f}{per['locate']:>8.3f}{per['delta']:>7.3f}{np.mean(steps):>7.1f}"
              f"{ms_per_step:>9.1f}{per['metrics']:>9.3f}{rest:>7.3f}{efficacy:>10.2f}{context:>9.2f}{paraphrase:>9.2f}"
              f"{delta_norm:>9.1f}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
