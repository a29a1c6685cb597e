"""Packing padded prompts into fewer rows (`src.edit.model.packing`): the layout, its mask and the rearranged block
arguments, against layouts written out by hand. That packed forwards compute the padded ones' logits and gradients
is tested with `ResumedForward` in tests/test_fast_paths.py."""

from __future__ import annotations

import pytest
import torch

from src.edit.model.block_call import BlockCall
from src.edit.model.packing import PackedLayout, packed_call

LENGTHS = [2, 6, 6, 2, 2, 2, 2]  # ROME's delta batch in small: the bare prompt, two prefixed ones, four KL prompts
T = 6


def right_padded(lengths: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


def test_prompts_are_packed_longest_first_into_the_first_row_they_fit():
    layout = PackedLayout.of(right_padded(LENGTHS, T))
    empty = len(LENGTHS) * T
    # rows: prompt 1; prompt 2; prompts 0, 3, 4; prompts 5, 6 (flat index b * 6 + t)
    assert layout.index.tolist() == [[6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17], [0, 1, 18, 19, 24, 25],
                                     [30, 31, 36, 37, empty, empty]]
    assert layout.segment.tolist() == [[1] * 6, [2] * 6, [0, 0, 3, 3, 4, 4], [5, 5, 6, 6, -1, -1]]
    rows, slots = layout.slots(torch.tensor([6, 0, 1]), torch.tensor([1, 1, 5]))
    assert rows.tolist() == [3, 2, 0] and slots.tolist() == [3, 1, 5]
    with pytest.raises(ValueError, match="pad"):
        layout.slots(torch.tensor([0]), torch.tensor([3]))


def test_the_mask_lets_a_token_see_its_own_prompts_earlier_tokens_and_an_empty_slot_itself():
    mask = PackedLayout.of(right_padded(LENGTHS, T)).mask()
    assert mask.shape == (4, 1, T, T)
    expected_last_row = [[1, 0, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0],
                         [0, 0, 1, 0, 0, 0],
                         [0, 0, 1, 1, 0, 0],
                         [0, 0, 0, 0, 1, 0],
                         [0, 0, 0, 0, 0, 1]]
    assert mask[3, 0].int().tolist() == expected_last_row
    assert torch.equal(mask[0, 0], torch.ones(T, T, dtype=torch.bool).tril())  # one whole prompt: causal


def test_left_padded_prompts_are_packed_from_their_real_tokens():
    layout = PackedLayout.of(torch.tensor([[0, 0, 1], [1, 1, 1]]))
    x = torch.arange(6.0).view(2, 3, 1)  # each token's flat index
    assert layout.gather(x)[..., 0].tolist() == [[3.0, 4.0, 5.0], [2.0, 0.0, 0.0]]  # empty slots hold zeros
    assert layout.gather(x[:1]).shape == (2, 3, 1)  # a batch-1 tensor broadcasts over the rows


def test_a_block_call_is_rearranged_into_the_layout_or_refused():
    layout = PackedLayout.of(right_padded(LENGTHS, T))
    B = len(LENGTHS)
    positions = torch.arange(T).repeat(B, 1)
    cos = torch.randn(B, T, 4)
    causal = torch.ones(T, T, dtype=torch.bool).tril().expand(B, 1, T, T)
    call = BlockCall({"attention_mask": causal, "position_ids": positions, "position_embeddings": (cos, cos),
                      "use_cache": False}, None, T)
    packed = packed_call(call, layout)
    assert torch.equal(packed.arguments["attention_mask"], layout.mask())
    assert packed.arguments["position_ids"][2].tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(packed.arguments["position_embeddings"][0][2, 2], cos[3, 0])
    additive = packed_call(BlockCall({**call.arguments, "attention_mask": torch.zeros(B, 1, T, T)}, None, T), layout)
    assert additive.arguments["attention_mask"][3, 0, 1].tolist() == [0.0, 0.0] + [torch.finfo(torch.float32).min] * 4
    assert packed_call(BlockCall({**call.arguments, "token_type": torch.zeros(B, T)}, None, T), layout) is None
    assert packed_call(BlockCall({**call.arguments, "attention_mask": None}, None, T), layout) is None
