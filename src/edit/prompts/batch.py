"""Batches of prompts of different lengths, padded on an explicit side.

Right padding (the default) is exact for causal LMs: no real token attends to a pad, and real tokens keep positions
0..n-1. Left padding is exact too because the batch passes position ids counted over real tokens only (pads get 0),
so a prompt's tokens see the positions they would have alone. Indices into a prompt's own tokens map to batch
columns with `columns`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from src.utils.errors import InputError

PADDING_SIDES = ("right", "left")


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad token, else its EOS, else 0 (pads are masked, so any id is exact)."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


@dataclass(frozen=True)
class PromptBatch:
    """input_ids / attention_mask / position_ids (B, T_max); offset (B,) pads before each prompt (0 unless left
    padded); last (B,) column of each prompt's final real token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offset: torch.Tensor
    last: torch.Tensor

    @classmethod
    def of(cls, prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device,
           side: str = "right") -> "PromptBatch":
        if side not in PADDING_SIDES:
            raise InputError(f"unknown padding side '{side}'; allowed: {', '.join(PADDING_SIDES)}")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        offset = torch.tensor([width - len(p) if side == "left" else 0 for p in prompts])
        for row, prompt in enumerate(prompts):
            start = int(offset[row])
            ids[row, start:start + len(prompt)] = torch.tensor(list(prompt))
            mask[row, start:start + len(prompt)] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        last = offset + torch.tensor([len(p) - 1 for p in prompts])
        return cls(ids.to(device), mask.to(device), positions.to(device), offset.to(device), last.to(device))

    @classmethod
    def for_tokenizer(cls, prompts: Sequence[Sequence[int]], tokenizer: PreTrainedTokenizerBase,
                      device: torch.device) -> "PromptBatch":
        """Padded with the tokenizer's pad id on the tokenizer's `padding_side`."""
        return cls.of(prompts, pad_id(tokenizer), device, side=getattr(tokenizer, "padding_side", "right"))

    def columns(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """(B,) batch columns of one token index per prompt, counted within each prompt."""
        return self.offset + torch.as_tensor(indices, device=self.offset.device)

    def forward(self, model, **kwargs):
        """The model's output on this batch (pads masked, positions over real tokens, no KV cache)."""
        return model(input_ids=self.input_ids, attention_mask=self.attention_mask, position_ids=self.position_ids,
                     use_cache=False, **kwargs)

    def last_logits(self, model) -> torch.Tensor:
        """(B, vocab) float32 logits at each prompt's last token."""
        logits = self.forward(model).logits
        return logits[torch.arange(len(self.last), device=logits.device), self.last].float()
