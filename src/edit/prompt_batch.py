"""Batches of prompts of different lengths, right-padded: exact for causal LMs, since no real token attends to a pad."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class PromptBatch:
    """input_ids / attention_mask (B, T_max); last (B,) index of each prompt's final real token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    last: torch.Tensor

    @classmethod
    def of(cls, prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> "PromptBatch":
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(list(prompt))
            mask[row, : len(prompt)] = 1
        last = torch.tensor([len(p) - 1 for p in prompts])
        return cls(ids.to(device), mask.to(device), last.to(device))

    def last_logits(self, model) -> torch.Tensor:
        """(B, vocab) float32 logits at each prompt's last token."""
        logits = model(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False).logits
        return logits[torch.arange(len(self.last), device=logits.device), self.last].float()
