#!/usr/bin/env python3
"""Key statistics C = E[k k^T] of one MLP layer over the KG corpus: speed paths against the plain path, side by side.

    python benchmarks/bench_key_statistics.py [--model-dir outputs/models/gpt_small] [--layers 0,1,4,7] [--gram-keys N]

Per layer, `compute_second_moment` runs with every speed path on ("fast": each distinct token prefix's key once,
weighted, and C's symmetric product), with `SpeedPaths.symmetric_product` off ("full": the whole product keys^T
keys) and with both off ("plain": every key of every line, the whole product), in turn, no cache; printed: seconds
of each, plain's over fast's, and the largest difference of each C from plain's relative to C's largest entry.
First, the product alone on one batch of random keys (--gram-keys x d_ff, float64, best of 5): the whole product,
the symmetric one at several block widths, and the whole product in float32.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.model.speedups import SpeedPaths  # noqa: E402
from src.edit.model.layout import ModelLayout  # noqa: E402
from src.edit.rank_one.key_statistics import (KeyPlan, WeightedGram, compute_second_moment,  # noqa: E402
                                             encode_lines)
from src.kg.corpus import read_corpus  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402


def time_products(num_keys: int, size: int, repeats: int = 5) -> None:
    """Best-of-`repeats` milliseconds of one batch's product of (num_keys, size) keys, by method."""
    keys = torch.randn(num_keys, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(num_keys, dtype=torch.float64)
    keys32 = keys.float()
    grams = {b: WeightedGram(size, b) for b in (None, 128, 256, 512, 1024) if b is None or b < size}
    ways = {"whole, float64": lambda: grams[None].add(keys, weights)}
    ways.update({f"symmetric, blocks of {b}": (lambda b=b: grams[b].add(keys, weights)) for b in grams if b})
    ways["whole, float32"] = lambda: keys32.T @ keys32
    print(f"one batch's product, ({num_keys}, {size}) keys, best of {repeats}:")
    for name, work in ways.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            best = min(best, time.perf_counter() - start)
        print(f"  {name:<24}{best * 1e3:>8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--corpus", default="data/kg/ba/corpus.train.txt")
    parser.add_argument("--layers", default="0,1,4,7")
    parser.add_argument("--gram-keys", type=int, default=1536, help="keys in the one-batch product timing")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model_dir, device="cpu")
    time_products(args.gram_keys, ModelLayout.of(model).key_size(0))
    lines = read_corpus(args.corpus)
    encoded = encode_lines(tokenizer, lines)
    shared, plain = KeyPlan.shared(encoded, False), KeyPlan.plain(encoded, False)
    keys_shared = shared.num_distinct
    print(f"{len(lines)} corpus lines, {plain.num_keys} keys; shared prefixes: {len(shared.lines)} lines run, "
          f"{keys_shared} distinct keys in the GEMM ({plain.num_keys / keys_shared:.2f}x fewer)")
    settings = {"fast": SpeedPaths(), "full": SpeedPaths(symmetric_product=False), "plain": SpeedPaths.plain()}
    print(f"{'layer':>5}" + "".join(f"{name + ' s':>10}" for name in settings) + f"{'plain/fast':>12}"
          f"{'max |fast - plain| / max |C|':>30}{'full':>10}")
    for layer in [int(x) for x in args.layers.split(",")]:
        seconds, moments = {}, {}
        for name, speed in settings.items():
            start = time.perf_counter()
            moments[name], _ = compute_second_moment(model, tokenizer, lines, layer, progress=False, speed=speed)
            seconds[name] = time.perf_counter() - start
        scale = moments["plain"].abs().max()
        differences = [float((moments[name] - moments["plain"]).abs().max() / scale) for name in ("fast", "full")]
        print(f"{layer:>5}" + "".join(f"{seconds[name]:>10.2f}" for name in settings)
              + f"{seconds['plain'] / seconds['fast']:>11.2f}x{differences[0]:>30.1e}{differences[1]:>10.1e}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB; "
          f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
