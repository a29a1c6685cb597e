#!/usr/bin/env python3
"""Key statistics C = E[k k^T] of one MLP layer over the KG corpus: shared prefixes against every key, side by side.

    python benchmarks/bench_key_statistics.py [--model-dir outputs/models/gpt_small] [--layers 0,1,4,7]

Per layer, `compute_second_moment` runs with `SpeedPaths.share_prefixes` on (each distinct token prefix's key once,
weighted) and off (every key of every line: the plain path), alternately, no cache; printed: seconds of each, the
ratio, the keys run through the GEMM, and the largest difference between the two C relative to C's largest entry.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.model.speedups import SpeedPaths  # noqa: E402
from src.edit.rank_one.key_statistics import KeyPlan, compute_second_moment, encode_lines  # noqa: E402
from src.kg.corpus import read_corpus  # noqa: E402
from src.lm.model import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--corpus", default="data/kg/ba/corpus.train.txt")
    parser.add_argument("--layers", default="0,1,4,7")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model_dir, device="cpu")
    lines = read_corpus(args.corpus)
    encoded = encode_lines(tokenizer, lines)
    shared, plain = KeyPlan.shared(encoded, False), KeyPlan.plain(encoded, False)
    keys_shared = shared.num_distinct
    print(f"{len(lines)} corpus lines, {plain.num_keys} keys; shared prefixes: {len(shared.lines)} lines run, "
          f"{keys_shared} distinct keys in the GEMM ({plain.num_keys / keys_shared:.2f}x fewer)")
    print(f"{'layer':>5}{'shared s':>10}{'plain s':>10}{'speed-up':>10}{'max |diff| / max |C|':>22}")
    for layer in [int(x) for x in args.layers.split(",")]:
        results = {}
        for name, speed in (("shared", SpeedPaths()), ("plain", SpeedPaths.plain())):
            start = time.perf_counter()
            moment, _ = compute_second_moment(model, tokenizer, lines, layer, progress=False, speed=speed)
            results[name] = (time.perf_counter() - start, moment)
        (fast, a), (slow, b) = results["shared"], results["plain"]
        difference = float((a - b).abs().max() / b.abs().max())
        print(f"{layer:>5}{fast:>10.2f}{slow:>10.2f}{slow / fast:>9.2f}x{difference:>22.1e}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
