"""What a model says after a prompt: greedy continuations and teacher-forced probabilities of given continuations,
for `EncodedPrompt`s (the subject's range known). ROME scores its edit with them; the edit pipeline its unrelated facts.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.prompts.batch import PromptBatch
from src.edit.prompts.encoding import EncodedPrompt
from src.lm.fact_accuracy import greedy_ids


def decode_ids(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    """The text of `token_ids`, without the leading space an object has after a prompt."""
    return tokenizer.decode(list(token_ids)).strip()


@torch.no_grad()
def greedy_decode(model: PreTrainedModel, prompts: Sequence[EncodedPrompt], lengths: Sequence[int]) -> list[tuple[int, ...]]:
    """Per prompt, `lengths[i]` greedily decoded token ids (one for the word tokenizer)."""
    return [tuple(ids) for ids in greedy_ids(model, [p.input_ids for p in prompts], lengths)]


@torch.no_grad()
def sequence_probs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: EncodedPrompt,
                   candidates: Sequence[tuple[int, ...]]) -> list[float]:
    """p(c | prompt) per candidate c, teacher-forced (the product of its tokens' probabilities); one forward per
    distinct prompt + c[:-1], so one in all for one-token candidates."""
    device = next(model.parameters()).device
    read = len(prompt.input_ids) - 1
    distributions: dict[tuple[int, ...], torch.Tensor] = {}  # c[:-1] -> (len(c), vocab) next-token probabilities
    out = []
    for candidate in candidates:
        prefix = tuple(candidate[:-1])
        if prefix not in distributions:
            batch = PromptBatch.for_tokenizer([list(prompt.input_ids) + list(prefix)], tokenizer, device)
            columns = batch.columns([read])[0] + torch.arange(len(candidate), device=device)
            distributions[prefix] = torch.softmax(batch.forward(model).logits[0, columns].float(), dim=-1)
        probs = distributions[prefix][torch.arange(len(candidate)), torch.tensor(candidate)]
        out.append(float(torch.prod(probs.double())))
    return out
