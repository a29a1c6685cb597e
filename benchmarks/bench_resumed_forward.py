#!/usr/bin/env python3
"""One step of ROME's delta optimisation, forward + backward, two ways side by side in one process:

    python benchmarks/bench_resumed_forward.py [--model-dir outputs/models/gpt_small] [--layers 0,1] [--steps 60]

  whole    the whole model with a hook adding the tensor to block l's output (the plain way)
  resumed  `ResumedForward`: blocks l+1.. only, the final norm and the unembedding at the positions read (what ROME
           runs)

The batch has ROME's shape for a one-token subject: the bare prompt, 10 prompts behind context prefixes and 7 KL
prompts (18 rows, up to 6 tokens; random token ids). Prints milliseconds per step, the ratio and the largest logit
difference. Steps alternate between the two ways, so that the machine's speed drifts alike for both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.edit.model.speedups import frozen_parameters, fused_activations  # noqa: E402
from src.edit.prompts.batch import PromptBatch  # noqa: E402
from src.edit.model.resumed_forward import ResumedForward  # noqa: E402
from src.lm.model import load_model  # noqa: E402
from src.utils.resources import peak_rss_mib  # noqa: E402

PROMPT_LENGTHS = [2] + [6, 5] * 5 + [2] * 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="outputs/models/gpt_small")
    parser.add_argument("--layers", default="0,1", help="edited layers to time (our models' located layers: 0, 1)")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model_dir, "cpu")
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, len(tokenizer), (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]
    batch = PromptBatch.for_tokenizer(prompts, tokenizer, torch.device("cpu"))
    rows = torch.arange(len(prompts))
    print(f"{args.model_dir}: {len(prompts)} prompts, batch {tuple(batch.input_ids.shape)}, {args.steps} steps each")
    with frozen_parameters(model), fused_activations(model):
        for layer in (int(x) for x in args.layers.split(",")):
            resumed = ResumedForward(model, layer, batch, rows, batch.last)
            whole = ResumedForward(model, layer, batch, rows, batch.last, resume=False)  # the plain path
            added = (torch.randn(resumed.start.shape, generator=generator) * 0.1).requires_grad_(True)
            ways = {"whole": lambda: whole(added), "resumed": lambda: resumed(added)}
            seconds = dict.fromkeys(ways, 0.0)
            logits = {}
            for _ in range(args.steps):
                for name, way in ways.items():
                    started = time.perf_counter()
                    logits[name] = way()
                    logits[name].sum().backward()
                    seconds[name] += time.perf_counter() - started
            difference = (logits["whole"] - logits["resumed"]).abs().max().item()
            whole_ms, resumed_ms = (seconds[n] / args.steps * 1e3 for n in ("whole", "resumed"))
            print(f"layer {layer}: whole {whole_ms:.2f} ms, resumed {resumed_ms:.2f} ms per step "
                  f"({whole_ms / resumed_ms:.2f}x); max logit difference {difference:.1e}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
