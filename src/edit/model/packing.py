"""Prompts of different lengths packed side by side into fewer rows, for forwards resumed at a block.

A padded batch (B, T) computes every pad: ROME's delta batch holds 11 rewrite prompts of up to 6 tokens and KL
prompts of 2, so about a third of its token-rows are pads. `PackedLayout` places whole prompts one after another
in rows of T slots (first fit, longest first) and an attention mask that lets each token see the earlier tokens of
its own prompt only, so every real token sees exactly the keys it saw in the padded batch, at other slots; the keys
it does not see weigh exactly 0, as the pads did. `packed_call` rearranges a block call's per-token arguments
(mask, position ids, rotary tables) into the layout. Exact up to float rounding; the padded batch is the plain path
it replaces.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import torch

from src.edit.model.block_call import BlockCall, additive_mask, per_token


@dataclass(frozen=True)
class PackedLayout:
    """Where each real token of a padded (B, T) batch sits in R packed rows of T slots.

    index: (R, T) long, each slot's token as a flat index b * T + t of the padded batch, B * T for an empty slot;
    segment: (R, T) long, the slot's prompt (its padded row), -1 for an empty slot; place: (B * T,) long, each
    padded token's flat slot r * T + w, -1 for a pad."""

    index: torch.Tensor
    segment: torch.Tensor
    place: torch.Tensor
    batch_rows: int

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> "PackedLayout":
        """From a padded batch's (B, T) 0/1 mask (real tokens in order, on either side of the pads)."""
        B, T = attention_mask.shape
        device = attention_mask.device
        lengths = attention_mask.sum(1).tolist()
        by_free: list[list[int]] = [[] for _ in range(T + 1)]  # heaps of the rows with f slots free, by f
        used: list[int] = []  # slots taken in each row
        row_of, start_of = [0] * B, [0] * B
        for b in sorted(range(B), key=lambda b: -lengths[b]):  # longest first; stable, so ties keep their order
            n = lengths[b]
            tops = [by_free[f][0] for f in range(n, T + 1) if by_free[f]]
            if tops:  # the first row it fits in
                r = min(tops)
                heapq.heappop(by_free[T - used[r]])
            else:
                r = len(used)
                used.append(0)
            row_of[b], start_of[b] = r, used[r]
            used[r] += n
            heapq.heappush(by_free[T - used[r]], r)
        rows, columns = attention_mask.nonzero(as_tuple=True)  # real tokens, row by row in order
        rank = attention_mask.cumsum(1)[rows, columns] - 1  # each token's place within its prompt
        slot = torch.tensor(row_of, device=device)[rows] * T + torch.tensor(start_of, device=device)[rows] + rank
        index = torch.full((len(used) * T,), B * T, dtype=torch.long, device=device)
        segment = torch.full((len(used) * T,), -1, dtype=torch.long, device=device)
        place = torch.full((B * T,), -1, dtype=torch.long, device=device)
        index[slot], segment[slot], place[rows * T + columns] = rows * T + columns, rows, slot
        return cls(index.view(-1, T), segment.view(-1, T), place, B)

    @property
    def num_rows(self) -> int:
        return self.index.shape[0]

    @property
    def num_slots(self) -> int:
        return self.index.shape[1]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(R, T, ...) from a padded (B, T, ...) tensor (or one of batch 1, broadcast over rows); empty slots 0.
        Differentiable in x."""
        T = self.num_slots
        x = x.expand(self.batch_rows, *x.shape[1:]) if x.shape[0] == 1 else x
        flat = x.reshape(self.batch_rows * T, *x.shape[2:])
        return torch.cat([flat, flat.new_zeros(1, *flat.shape[1:])])[self.index]

    def slots(self, rows: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed (rows, slots) of the padded batch's real tokens at (rows, columns), (n,) each."""
        flat = self.place[rows * self.num_slots + columns]
        if bool((flat < 0).any()):
            raise ValueError("a position read from a packed batch is a pad")
        return flat // self.num_slots, flat % self.num_slots

    def mask(self) -> torch.Tensor:
        """(R, 1, T, T) bool, True where a query slot sees a key slot: the earlier tokens of its own prompt and itself;
        an empty slot sees itself only (so that its softmax stays finite; no real token sees it)."""
        T = self.num_slots
        same = (self.segment[:, :, None] == self.segment[:, None, :]) & (self.segment[:, :, None] >= 0)
        earlier = torch.ones(T, T, dtype=torch.bool, device=self.segment.device).tril()
        return ((same & earlier) | torch.eye(T, dtype=torch.bool, device=self.segment.device))[:, None]


def packed_call(call: BlockCall, layout: PackedLayout) -> BlockCall | None:
    """`call` (recorded on the padded batch, every row kept) with its per-token arguments rearranged into `layout`:
    the mask replaced by the layout's (in the recorded mask's form: bool, or additive with the dtype's minimum), the
    position ids and rotary tables gathered; None if the call holds a per-token argument this does not know, or was
    made without a mask (the attention then builds its own)."""
    arguments = dict(call.arguments)
    for name, value in call.arguments.items():
        if name == "attention_mask" and isinstance(value, torch.Tensor):
            mask = layout.mask()
            arguments[name] = mask if value.dtype == torch.bool else additive_mask(mask, value.dtype)
        elif name == "position_ids" and isinstance(value, torch.Tensor):
            arguments[name] = layout.gather(value[..., None])[..., 0]
        elif name == "position_embeddings" and isinstance(value, tuple):
            arguments[name] = tuple(layout.gather(v) for v in value)
        elif name == "cache_position" or name == call.cache_argument:
            continue  # no cache is passed: the rows' cache positions (0..T-1) are the slots'
        elif per_token(value, call.num_tokens, layout.batch_rows):
            return None
    if not isinstance(arguments.get("attention_mask"), torch.Tensor):
        return None  # a block called without a mask builds its own (causal) one, which packed rows must not get
    return replace(call, arguments=arguments)
