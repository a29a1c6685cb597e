"""Fact accuracy: does greedy decoding after `"{s} {r}"` give the object (all of its tokens)? Used by training,
locating (facts the model gets wrong are skipped) and the editing methods. `greedy_ids` is the library's one greedy
decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.kg.graph import Fact
from src.lm.token_ids import encode_prompt, object_token_ids, starts_with_bos
from src.utils.batching import batches_by_key


@dataclass(frozen=True)
class FactAccuracy:
    accuracy: float
    correct: int
    total: int
    wrong: tuple[Fact, ...]

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total, "num_wrong": len(self.wrong)}


@torch.no_grad()
def greedy_continuations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                         lengths: Sequence[int], batch_size: int = 1024) -> list[list[int]]:
    """`greedy_ids` of text prompts (behind BOS when the tokenizer adds one)."""
    bos = starts_with_bos(tokenizer)
    return greedy_ids(model, [encode_prompt(tokenizer, p, bos) for p in prompts], lengths, batch_size)


@torch.no_grad()
def greedy_ids(model: PreTrainedModel, encoded: Sequence[Sequence[int]], lengths: Sequence[int],
               batch_size: int = 1024) -> list[list[int]]:
    """Per prompt (token ids), `lengths[i]` greedily decoded token ids (argmax, whole vocabulary). Prompts are grouped
    by token length and continuation length, so no padding is needed (exact for any tokenizer)."""
    device = next(model.parameters()).device
    encoded = [list(ids) for ids in encoded]
    out: list[list[int]] = [[] for _ in encoded]
    for chunk in batches_by_key([(len(ids), int(n)) for ids, n in zip(encoded, lengths)], batch_size):
        steps = int(lengths[chunk[0]])
        input_ids = torch.tensor([encoded[i] for i in chunk], device=device)
        for _ in range(steps):
            next_ids = model(input_ids=input_ids).logits[:, -1, :].argmax(dim=-1)
            input_ids = torch.cat([input_ids, next_ids[:, None]], dim=1)
        for row, i in enumerate(chunk):
            out[i] = input_ids[row, input_ids.shape[1] - steps:].tolist()
    return out


def object_predictions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact],
                       batch_size: int = 1024) -> tuple[list[list[int]], list[list[int]]]:
    """(greedy ids, object ids) per fact: as many tokens decoded as the true object has. Compare ids, not text: a
    non-canonical piece sequence can decode to the object's text."""
    targets = [object_token_ids(tokenizer, f.o) for f in facts]
    predicted = greedy_continuations(model, tokenizer, [f.prompt() for f in facts], [len(t) for t in targets], batch_size)
    return predicted, targets


def predict_objects(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact], batch_size: int = 1024) -> list[str]:
    """The model's object for each fact: greedy decoding of as many tokens as the true object has, as text."""
    predicted, _ = object_predictions(model, tokenizer, facts, batch_size)
    return [tokenizer.decode(ids).strip() for ids in predicted]


def fact_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact], batch_size: int = 1024) -> FactAccuracy:
    """Share of facts whose object is what greedy decoding after `"{s} {r}"` gives (every token of it)."""
    was_training = model.training
    model.eval()
    predicted, targets = object_predictions(model, tokenizer, facts, batch_size)
    model.train(was_training)
    hits = [p == t for p, t in zip(predicted, targets)]
    wrong = tuple(f for f, ok in zip(facts, hits) if not ok)
    correct = sum(hits)
    return FactAccuracy(accuracy=correct / max(1, len(facts)), correct=correct, total=len(facts), wrong=wrong)
