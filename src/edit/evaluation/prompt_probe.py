"""Next-token predictions for a fixed list of prompts, many times over (the whole KG after every edit).

Prompts are tokenized once and batched by token length (no padding). Where many prompts of one length share all
but their last token (the KG's `s r` prompts share the subject: 7,001 facts, 1,000 subjects), the shared part (the
stem) runs once with a key/value cache and only the last tokens run per prompt: exact up to float rounding, and
8,001 token positions instead of 14,002 for the KG. Forwards are sized to the model and GPT-2's activation runs
fused (`speed`, see `src.edit.model.speedups`). Measured on the d_ff 2048 model (2 CPU cores): one KG pass in
4096-row forwards took 3.8 s, with more system than user time; in 256-row forwards, 1.2 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.block_call import cache_argument
from src.edit.model.speedups import FAST, SpeedPaths
from src.lm.token_ids import encode_prompt, starts_with_bos
from src.utils.batching import batches_by_key

Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _LengthGroup:
    """Prompts of one token length. rows: (n,) their positions in the probe's list; ids: (n, T) tokens; stems:
    (U, T - 1) distinct first T - 1 tokens and stem_of (n,) each prompt's stem, or None to run prompts whole."""

    rows: torch.Tensor
    ids: torch.Tensor
    stems: torch.Tensor | None
    stem_of: torch.Tensor | None


class PromptProbe:
    """Next-token logits for a fixed list of prompts. share_stems: run shared stems once when a length group has at
    most half as many distinct stems as prompts (False: every prompt whole, the reference); speed: see `SpeedPaths`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], share_stems: bool = True,
                 speed: SpeedPaths = FAST) -> None:
        self.speed = speed
        bos = starts_with_bos(tokenizer)
        encoded = [encode_prompt(tokenizer, p, bos) for p in prompts]
        self.size = len(prompts)
        self.groups = [self._group(torch.tensor(indices), torch.tensor([encoded[i] for i in indices]), share_stems)
                       for indices in batches_by_key([len(ids) for ids in encoded])]

    @staticmethod
    def _group(rows: torch.Tensor, ids: torch.Tensor, share_stems: bool) -> _LengthGroup:
        if share_stems and ids.shape[1] >= 2:
            stems, stem_of = torch.unique(ids[:, :-1], dim=0, return_inverse=True)
            if 2 * len(stems) <= len(rows):
                return _LengthGroup(rows, ids, stems, stem_of)
        return _LengthGroup(rows, ids, None, None)

    def top1(self, model: PreTrainedModel) -> torch.Tensor:
        """(n,) long, CPU: the argmax token after each prompt."""
        out = torch.empty(self.size, dtype=torch.long)
        for rows, ids in self._run(model, lambda logits: logits.argmax(-1).cpu()):
            out[rows] = ids
        return out

    def probabilities(self, model: PreTrainedModel) -> torch.Tensor:
        """(n, vocab) float32, CPU: softmax of the next-token logits (for small prompt sets)."""
        results = self._run(model, lambda logits: torch.softmax(logits, dim=-1).cpu())
        out = torch.empty(self.size, results[0][1].shape[-1]) if results else torch.empty(0, 0)
        for rows, probs in results:
            out[rows] = probs
        return out

    @torch.no_grad()
    def _run(self, model: PreTrainedModel, reduce: Reduce) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(rows, reduce(logits)) per forward, logits (rows, vocab) float32 after each prompt's last token."""
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        with self.speed.fused(model):
            keyword = cache_argument(model)  # the model's own forward takes the cache like its blocks do
            for group in self.groups:
                if group.stems is None or keyword is None:
                    out += _run_whole(model, group, reduce, self.speed)
                else:
                    out += _run_shared(model, group, reduce, keyword, self.speed)
        return out


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def _run_whole(model: PreTrainedModel, group: _LengthGroup, reduce: Reduce,
               speed: SpeedPaths) -> list[tuple[torch.Tensor, torch.Tensor]]:
    step = speed.rows(model, group.ids.shape[1])
    out = []
    for start in range(0, len(group.rows), step):
        chunk = group.ids[start : start + step].to(_device(model))
        logits = model(input_ids=chunk, logits_to_keep=1, use_cache=False).logits[:, -1].float()
        out.append((group.rows[start : start + step], reduce(logits)))
    return out


def _run_shared(model: PreTrainedModel, group: _LengthGroup, reduce: Reduce, keyword: str,
                speed: SpeedPaths) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The stems once (keeping each layer's keys and values), then each prompt's last token over its stem's. Runs
    the prompts whole where the transformers version's cache does not expose its layers."""
    device = _device(model)
    stem_length = group.stems.shape[1]
    step = speed.rows(model, stem_length)
    per_chunk = []
    for start in range(0, len(group.stems), step):
        output = model(input_ids=group.stems[start : start + step].to(device), use_cache=True, logits_to_keep=1)
        layers = getattr(output.get(keyword), "layers", None)
        if layers is None:
            return _run_whole(model, group, reduce, speed)
        per_chunk.append([(layer.keys, layer.values) for layer in layers])
    keys_values = [(torch.cat([c[l][0] for c in per_chunk]), torch.cat([c[l][1] for c in per_chunk]))
                   for l in range(len(per_chunk[0]))]  # per layer, (U, kv heads, T - 1, head dim) each

    step = speed.rows(model, stem_length + 1)
    out = []
    for start in range(0, len(group.rows), step):
        stem_of = group.stem_of[start : start + step].to(device)
        cache = DynamicCache([(k[stem_of], v[stem_of]) for k, v in keys_values])
        last = group.ids[start : start + step, -1:].to(device)
        logits = model(input_ids=last, use_cache=True, logits_to_keep=1, **{keyword: cache}).logits[:, -1].float()
        out.append((group.rows[start : start + step], reduce(logits)))
    return out
