"""Fact accuracy: does the model's argmax next token after `"{s} {r}"` equal the object? Used by training and later issues."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.kg.graph import Fact


@dataclass(frozen=True)
class FactAccuracy:
    accuracy: float
    correct: int
    total: int
    wrong: tuple[Fact, ...]

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total, "num_wrong": len(self.wrong)}


def starts_with_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer's own template starts every text with BOS (Llama's do; GPT-2's and, unless built
    with `bos=True`, the KG word tokenizer do not). Prompts follow the tokenizer, as the model saw text in training."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, bos: bool | None = None) -> list[int]:
    """Token ids of `prompt`, behind BOS when `bos` (None: when the tokenizer adds one). Never an EOS or other
    trailing special token: the next token after the prompt is what the model is asked for."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if starts_with_bos(tokenizer) if bos is None else bos:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def first_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """Id of the first token of ` word` as it follows a prompt (the whole word for the KG tokenizer)."""
    ids = tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
    return ids[0]


@torch.no_grad()
def next_token_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
    """Logits (len(prompts), vocab) of the token after each prompt, in float32.

    Prompts are grouped by token length so that no padding is needed (exact for any tokenizer).
    """
    device = next(model.parameters()).device
    bos = starts_with_bos(tokenizer)
    encoded = [encode_prompt(tokenizer, p, bos) for p in prompts]
    out = torch.empty(len(prompts), model.get_output_embeddings().weight.shape[0], dtype=torch.float32)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            input_ids = torch.tensor([encoded[i] for i in chunk], device=device)
            logits = model(input_ids=input_ids).logits[:, -1, :]
            out[chunk] = logits.float().cpu()
    return out


def predict_objects(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact], batch_size: int = 1024) -> list[str]:
    logits = next_token_logits(model, tokenizer, [f.prompt() for f in facts], batch_size)
    return tokenizer.convert_ids_to_tokens(logits.argmax(dim=-1).tolist())


def fact_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact], batch_size: int = 1024) -> FactAccuracy:
    """Share of facts whose object's first token is the argmax next token after `"{s} {r}"` (whole vocabulary)."""
    was_training = model.training
    model.eval()
    logits = next_token_logits(model, tokenizer, [f.prompt() for f in facts], batch_size)
    model.train(was_training)
    targets = torch.tensor([first_token_id(tokenizer, f.o) for f in facts])
    hits = logits.argmax(dim=-1) == targets
    wrong = tuple(f for f, ok in zip(facts, hits.tolist()) if not ok)
    correct = int(hits.sum())
    return FactAccuracy(accuracy=correct / max(1, len(facts)), correct=correct, total=len(facts), wrong=wrong)
