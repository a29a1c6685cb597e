"""What defines one fact edit for the optimisation-based methods (FT, MEMIT): the rewrite prompts with their
weights and the KL anchor prompts (the MLP keys at the edit positions: `src.edit.rank_one.keys.mlp_keys`).

The rewrite prompts are the bare prompt `"s r"` and the same prompt behind KG context prefixes (other facts in the
corpus' chain format), as ROME uses them (see `src.edit.rome`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from src.edit.prompts.kg_context import KGContext, prefix_text
from src.edit.prompts.encoding import EncodedPrompt, encode_fact_prompt
from src.kg.graph import Fact


@dataclass(frozen=True)
class RewriteSet:
    """rewrite: bare prompt first, then the prefixed ones; weights (sum 1): the bare prompt's share is
    `bare_prompt_weight` when there are prefixes. kl: the subject's other facts. context_facts: the prefix facts."""

    rewrite: tuple[EncodedPrompt, ...]
    weights: tuple[float, ...]
    kl: tuple[EncodedPrompt, ...]
    context_facts: tuple[Fact, ...]


def prompt_weights(n_rewrite: int, bare_prompt_weight: float) -> torch.Tensor:
    """(n_rewrite,) float64: bare prompt `bare_prompt_weight`, the prefixed prompts share the rest."""
    if n_rewrite == 1:
        return torch.ones(1, dtype=torch.float64)
    rest = (1 - bare_prompt_weight) / (n_rewrite - 1)
    return torch.tensor([bare_prompt_weight] + [rest] * (n_rewrite - 1), dtype=torch.float64)


def rewrite_set(tokenizer: PreTrainedTokenizerBase, kg: KGContext | None, s: str, r: str, num_prefixes: int,
                bare_prompt_weight: float, seed: int) -> RewriteSet:
    """Prefix facts are drawn (seeded) from other subjects' facts; without a KG there is only the bare prompt."""
    bare = encode_fact_prompt(tokenizer, s, r)
    if kg is None:
        return RewriteSet((bare,), (1.0,), (), ())
    rng = np.random.default_rng([seed, 7])
    context = tuple(kg.sample_facts(num_prefixes, rng, exclude_subjects={s}))
    rewrite = (bare,) + tuple(encode_fact_prompt(tokenizer, s, r, prefix_text(f)) for f in context)
    kl = tuple(encode_fact_prompt(tokenizer, f.s, f.r) for f in kg.facts_of(s) if f.r != r)
    weights = tuple(prompt_weights(len(rewrite), bare_prompt_weight).tolist())
    return RewriteSet(rewrite, weights, kl, context)


def last_positions(prompts: Sequence[EncodedPrompt]) -> list[int]:
    return [len(p.input_ids) - 1 for p in prompts]
