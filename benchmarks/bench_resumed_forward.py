#!/usr/bin/env python3
"""One step of ROME's delta optimisation, forward + backward, three ways side by side in one process:

    python benchmarks/bench_resumed_forward.py [--model-dir outputs/models/gpt_small] [--layers 0,1] [--steps 60]

  whole    the whole model with a hook adding the tensor to block l's output (the plain way)
  padded   `ResumedForward` with pack=False: blocks l+1.. only on the padded batch, the final norm and the
           unembedding at the positions read
  packed   `ResumedForward` as ROME runs it: the same, on the prompts packed into fewer rows (no pads)

The batch has the shape of ROME's on the default KG: the bare prompt (2 tokens), 10 prompts behind context prefixes
(6 tokens) and 7 KL prompts (2 tokens): 18 rows of 6 tokens padded, 13 packed; random token ids. Prints
milliseconds per step, the ratios and the largest logit difference from the whole model. Steps alternate between
the ways, so that the machine's speed drifts alike for all.
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

PROMPT_LENGTHS = [2] + [6] * 10 + [2] * 7


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
            packed = ResumedForward(model, layer, batch, rows, batch.last)
            padded = ResumedForward(model, layer, batch, rows, batch.last, pack=False)
            whole = ResumedForward(model, layer, batch, rows, batch.last, resume=False)  # the plain path
            added = (torch.randn(packed.start.shape, generator=generator) * 0.1).requires_grad_(True)
            ways = {"whole": lambda: whole(added), "padded": lambda: padded(added), "packed": lambda: packed(added)}
            seconds = dict.fromkeys(ways, 0.0)
            logits = {}
            for _ in range(args.steps):
                for name, way in ways.items():
                    started = time.perf_counter()
                    logits[name] = way()
                    logits[name].sum().backward()
                    seconds[name] += time.perf_counter() - started
            difference = max((logits["whole"] - logits[n]).abs().max().item() for n in ("padded", "packed"))
            ms = {name: seconds[name] / args.steps * 1e3 for name in ways}
            rows_packed = packed.packing.num_rows if packed.packed else len(prompts)
            print(f"layer {layer}: whole {ms['whole']:.2f} ms, padded {ms['padded']:.2f} ms, packed "
                  f"{ms['packed']:.2f} ms per step ({rows_packed} rows); whole / packed "
                  f"{ms['whole'] / ms['packed']:.2f}x, padded / packed {ms['padded'] / ms['packed']:.2f}x; "
                  f"max logit difference {difference:.1e}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
