"""What defines one fact edit: the rewrite prompts with their weights and the KL anchor prompts (the MLP keys at
the edit positions: `src.edit.rank_one.keys.mlp_keys`), and for ROME also the prompts its own metrics score.

The rewrite prompts are the bare prompt `"s r"` and the same prompt behind KG context prefixes (other facts in the
corpus' chain format). `rewrite_set` draws them for every method: FT and MEMIT take the rewrite and KL prompts,
ROME also the prompts `apply_edit` scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet as Set, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from src.edit.prompts.kg_context import KGContext, prefix_text
from src.edit.prompts.encoding import EncodedPrompt, encode_fact_prompt
from src.kg.graph import Fact
from src.utils.seeding import stable_words


@dataclass(frozen=True)
class RewriteSet:
    """The prompts of one edit.

    What the method computes the edit from: rewrite (bare prompt first, then prefixed) with weights (sum 1: the bare
    prompt's share is `bare_prompt_weight` when there are prefixes); kl, the prompts of kl_facts, the subject's other
    facts; context_facts, the prefix facts. What `ROME.apply_edit`'s metrics score (empty unless asked for):
    eval_prefix, the prompt behind other prefixes; eval_alias, with the relation's alias; random_facts, facts of
    other subjects (and kl_facts, for the subject's other facts).
    """

    rewrite: tuple[EncodedPrompt, ...]
    weights: tuple[float, ...]
    kl: tuple[EncodedPrompt, ...]
    context_facts: tuple[Fact, ...]
    kl_facts: tuple[Fact, ...] = ()
    eval_prefix: tuple[EncodedPrompt, ...] = ()
    eval_alias: tuple[EncodedPrompt, ...] = ()
    random_facts: tuple[Fact, ...] = ()


def prompt_weights(n_rewrite: int, bare_prompt_weight: float | None) -> torch.Tensor:
    """(n_rewrite,) float64: bare prompt `bare_prompt_weight`, the prefixed prompts share the rest; None: all alike
    (1 / n_rewrite each, the original's mean over its context templates)."""
    if n_rewrite == 1:
        return torch.ones(1, dtype=torch.float64)
    if bare_prompt_weight is None:
        return torch.full((n_rewrite,), 1 / n_rewrite, dtype=torch.float64)
    rest = (1 - bare_prompt_weight) / (n_rewrite - 1)
    return torch.tensor([bare_prompt_weight] + [rest] * (n_rewrite - 1), dtype=torch.float64)


def rewrite_set(tokenizer: PreTrainedTokenizerBase, kg: KGContext | None, s: str, r: str, num_prefixes: int,
                bare_prompt_weight: float | None, seed: int, num_eval_prefixes: int = 0,
                num_random_facts: int = 0, exclude_pairs: Set[tuple[str, str]] = frozenset()) -> RewriteSet:
    """One draw seeded by (seed, s, r), so every request gets its own prefixes (the same ones in every method and
    run): num_prefixes + num_eval_prefixes prefix facts (the first ones are the context, the rest the evaluation's),
    then num_random_facts facts, all of other subjects, and the alias prompt where the corpus has a known alias.
    kl_facts are the subject's other facts of `kg` (under a split, its allowed ones). exclude_pairs: (s, r) pairs
    used for nothing (the other requests of a batch, whose objects are being changed). Without a KG there is only
    the bare prompt."""
    bare = encode_fact_prompt(tokenizer, s, r)
    if kg is None:
        return RewriteSet((bare,), (1.0,), (), ())
    rng = np.random.default_rng(stable_words("rewrite-set", seed, s, r))
    prefix_facts = kg.sample_facts(num_prefixes + num_eval_prefixes, rng, exclude_subjects={s}, exclude_pairs=exclude_pairs)
    context, held = tuple(prefix_facts[:num_prefixes]), prefix_facts[num_prefixes:]
    randoms = (tuple(kg.sample_facts(num_random_facts, rng, exclude_subjects={s}, exclude_pairs=exclude_pairs))
               if num_random_facts else ())
    kl_facts = tuple(f for f in kg.facts_of(s) if f.r != r and (f.s, f.r) not in exclude_pairs)
    rewrite = (bare,) + tuple(encode_fact_prompt(tokenizer, s, r, prefix_text(f)) for f in context)
    alias = kg.aliases.get(r)
    known_alias = alias is not None and tokenizer.unk_token_id not in tokenizer(alias, add_special_tokens=False)["input_ids"]
    return RewriteSet(
        rewrite=rewrite,
        weights=tuple(prompt_weights(len(rewrite), bare_prompt_weight).tolist()),
        kl=tuple(encode_fact_prompt(tokenizer, f.s, f.r) for f in kl_facts),
        context_facts=context,
        kl_facts=kl_facts,
        eval_prefix=tuple(encode_fact_prompt(tokenizer, s, r, prefix_text(f)) for f in held),
        eval_alias=(encode_fact_prompt(tokenizer, s, alias),) if known_alias else (),
        random_facts=randoms,
    )


def last_positions(prompts: Sequence[EncodedPrompt]) -> list[int]:
    return [len(p.input_ids) - 1 for p in prompts]
