#!/usr/bin/env python3
"""Time to the fact-accuracy target for the default training recipe, and for the naive recipe side by side.

    python benchmarks/bench_training.py [--recipes default,all_tokens] [--max-seconds 900]

"default" is configs/train_gpt_small.yaml (loss on object tokens). "all_tokens" changes only the loss to every next
token (the naive recipe). Each trains a fresh model in a temporary directory from the default KG (make data).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.lm.config import load_train_config  # noqa: E402
from src.pipelines.train_model import train_and_save  # noqa: E402

RECIPES = {"default": {}, "all_tokens": {"loss_on": "all"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/train_gpt_small.yaml")
    parser.add_argument("--recipes", default="default")
    args = parser.parse_args()
    base = load_train_config(args.config)
    rows = []
    for name in args.recipes.split(","):
        config = dataclasses.replace(base, optim=dataclasses.replace(base.optim, **RECIPES[name]))
        with tempfile.TemporaryDirectory() as tmp:
            result = train_and_save(config, Path(tmp) / "model").result
        reached = next((h for h in result.history if h["accuracy"] >= config.optim.target_accuracy), None)
        rows.append((name, result, reached))
    print(f"\n{'recipe':<12}{'steps':>8}{'seconds':>10}{'accuracy':>10}  time to {base.optim.target_accuracy:.0%}")
    for name, result, reached in rows:
        to_target = f"{reached['seconds']:.1f} s (step {reached['step']})" if reached else "not reached"
        print(f"{name:<12}{result.steps:>8}{result.seconds:>10.1f}{result.final_accuracy:>10.4f}  {to_target}")


if __name__ == "__main__":
    main()
