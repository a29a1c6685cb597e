"""Next-token predictions for a fixed list of prompts, many times over (the whole KG after every edit).

Prompts are tokenized once and batched by token length (no padding). Where many prompts of one length share all
but their last token (the KG's `s r` prompts share the subject: 7,001 facts, 1,000 subjects), the shared part (the
stem) runs once, inside its first prompt, and every other prompt runs its last token alone over the stem's keys and
values (`src.edit.model.block_call`, the tracer's suffix calls): exact up to float rounding, and 8,001 token
positions instead of 14,002 for the KG. Forwards are sized to the model and GPT-2's activation runs
fused (`speed`, see `src.edit.model.speedups`). Measured on the d_ff 2048 model (2 CPU cores): one KG pass in
4096-row forwards took 3.8 s, with more system than user time; in 256-row forwards, 1.2 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.block_call import BlockCall, RecordKeysValues, attention_takes_any_mask
from src.edit.model.hooks import RecordCall
from src.edit.model.layout import ModelLayout
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
    most half as many distinct stems as prompts (False: every prompt whole, the reference; None: `speed.share_stems`);
    speed: see `SpeedPaths`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], share_stems: bool | None = None,
                 speed: SpeedPaths = FAST) -> None:
        self.speed = speed
        share_stems = speed.share_stems if share_stems is None else share_stems
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
        by_hand = ModelLayout.supports(model)  # calling blocks by hand needs the family table
        with self.speed.fused(model):
            for group in self.groups:
                if group.stems is None or not by_hand:
                    out += _run_whole(model, group, reduce, self.speed)
                else:
                    out += _run_shared(model, group, reduce, self.speed)
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


def _run_shared(model: PreTrainedModel, group: _LengthGroup, reduce: Reduce,
                speed: SpeedPaths) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each stem's first prompt whole, keeping every block's keys and values; then every other prompt's last token
    alone, block by block over its stem's keys and values (`BlockCall` on a suffix, as the tracer replays). Runs the
    prompts whole where the family's blocks cannot be called on a suffix."""
    layout, device = ModelLayout.of(model), _device(model)
    T = group.ids.shape[1]
    first = torch.full((len(group.stems),), len(group.rows), dtype=torch.long)
    first.scatter_reduce_(0, group.stem_of, torch.arange(len(group.rows)), reduce="amin")  # (U,) each stem's first
    rest = torch.ones(len(group.rows), dtype=torch.bool).index_fill_(0, first, False).nonzero()[:, 0]

    out, recorded, call = [], [], None
    step = speed.rows(model, T)
    for start in range(0, len(first), step):
        chunk = first[start : start + step]
        with RecordKeysValues([layout.attn(l) for l in range(layout.num_layers)]) as keys_values, \
                RecordCall(layout.block(0)) as block_call:
            logits = model(input_ids=group.ids[chunk].to(device), use_cache=False, logits_to_keep=1).logits[:, -1]
        if keys_values.recorded is None:
            return _run_whole(model, group, reduce, speed)
        call = call or BlockCall.from_record(layout.block(0), block_call, num_tokens=T, batch=len(chunk))
        if not (call.supports_suffix and attention_takes_any_mask(model)):
            return _run_whole(model, group, reduce, speed)
        recorded.append(keys_values.recorded)
        out.append((group.rows[chunk], reduce(logits.float())))
    prefixes = [tuple(torch.cat([r[l][i] for r in recorded])[..., : T - 1, :] for i in (0, 1))
                for l in range(layout.num_layers)]  # per layer (U, kv heads, T - 1, head dim) each, stem order

    for start in range(0, len(rest), step):
        chunk = rest[start : start + step]
        with RecordCall(layout.block(0), stop=True) as embedded:  # the embeddings only
            model(input_ids=group.ids[chunk].to(device), use_cache=False)
        hidden = (embedded.args[0] if embedded.args else embedded.kwargs["hidden_states"])[:, T - 1 :]  # (rows, 1, d)
        stems = group.stem_of[chunk].to(device)
        hidden = call.through(layout.blocks, hidden, T - 1, [tuple(x[stems] for x in kv) for kv in prefixes])
        out.append((group.rows[chunk], reduce(layout.unembed(layout.final_norm(hidden[:, -1])).float())))
    return out
