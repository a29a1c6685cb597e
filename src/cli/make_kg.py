"""python -m src.cli.make_kg --config configs/kg_ba.yaml [--output-dir DIR] [--seed N]"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from src.cli.common import run_cli
from src.utils.io import require_writable_dir
from src.kg.build import build_kg
from src.kg.generate import load_kg_config
from src.pipelines import defaults


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a knowledge graph and its training corpus.")
    parser.add_argument("--config", default=defaults.KG_CONFIG, help="KG config YAML (default: %(default)s)")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir (relative to the working directory)")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    args = parser.parse_args(argv)
    config, output_dir = load_kg_config(args.config)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.output_dir is not None:
        output_dir = args.output_dir
    require_writable_dir(output_dir, "KG output directory")
    built = build_kg(config, output_dir)
    stats = built.graph
    print(
        f"KG '{config.graph_type}': {len(stats.entities)} entities, {len(stats.relations)} relations, {len(stats)} facts, "
        f"{built.num_corpus_lines} corpus lines -> {built.directory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
