#!/usr/bin/env python3
"""GELU variants on an MLP-hidden-sized tensor, forward and forward + backward, side by side in one process:

    python benchmarks/bench_activations.py [--rows 1024] [--width 2048] [--threads 1,2]

  gelu_new   transformers' NewGELUActivation (GPT-2's formula, eight elementwise passes)
  tanh       torch's fused kernel for the same formula (what `speedups.fused_activations` swaps in)
  erf        torch's exact GELU (the default model's `activation_function: gelu`)

Prints milliseconds per call and each variant's time relative to erf. This is why the default model uses the exact
GELU: on CPU, torch's tanh kernel is several times slower than its erf kernel (the two functions differ by < 5e-4).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from transformers.activations import NewGELUActivation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.utils.resources import peak_rss_mib  # noqa: E402

VARIANTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": NewGELUActivation(),
    "tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "erf": torch.nn.functional.gelu,
}


def seconds_per_call(function: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024, help="tokens per call")
    parser.add_argument("--width", type=int, default=2048, help="MLP hidden width (d_ff)")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.rows, args.width) * 2
    grad = torch.randn_like(x)
    print(f"({args.rows}, {args.width}) float32, {args.repeats} calls each; ms per call (x erf)")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        times = {}
        for name, activation in VARIANTS.items():
            leaf = x.clone().requires_grad_(True)
            forward = seconds_per_call(lambda: activation(x), args.repeats)
            both = seconds_per_call(lambda: torch.autograd.grad(activation(leaf), leaf, grad), args.repeats)
            times[name] = (forward, both)
        erf_forward, erf_both = times["erf"]
        for name, (forward, both) in times.items():
            print(f"threads {threads}  {name:<9} forward {forward * 1e3:7.3f} ({forward / erf_forward:4.1f}x)   "
                  f"forward+backward {both * 1e3:7.3f} ({both / erf_both:4.1f}x)")
    difference = (VARIANTS["tanh"](x) - VARIANTS["erf"](x)).abs().max().item()
    print(f"max |tanh - erf| on these inputs: {difference:.2e}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
