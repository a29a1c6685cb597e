"""k* (ROME step 1): the keys of the edit, the input of the edited layer's MLP output projection at the edit
position(s) of each rewrite prompt, and their weighted means.

`fact_token` "last" reads the prompt's last token; for a target of m tokens also each teacher-forced piece but the
last (where the next piece is read): m positions per prompt. "subject_last" reads the subject's last token only.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.prompts import EncodedPrompt
from src.edit.rewrite import mlp_keys


def edit_positions(prompts: list[EncodedPrompt], fact_token: str) -> list[int]:
    """Per prompt, the token whose MLP key is edited: the last one, or the subject's last."""
    if fact_token == "last":
        return [len(p.input_ids) - 1 for p in prompts]
    return [p.last_subject_index for p in prompts]


def pieces_read(fact_token: str, target_ids: tuple[int, ...]) -> int:
    """Positions per rewrite prompt that get delta: one per target token at the last token, else one."""
    return len(target_ids) if fact_token == "last" else 1


def compute_keys(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rewrite: list[EncodedPrompt],
                 layer: int, fact_token: str, target_ids: tuple[int, ...]) -> torch.Tensor:
    """(m, n_rewrite, d_ff) float64: the keys at the positions that get delta (`pieces_read`), on the rewrite
    prompts followed by target[:-1] (position j reads target token j; causal, so later pieces change nothing)."""
    m = pieces_read(fact_token, target_ids)
    forced = [p.followed_by(target_ids[: m - 1]) for p in rewrite]
    positions = [q + j for j in range(m) for q in edit_positions(rewrite, fact_token)]
    keys = mlp_keys(model, tokenizer, forced * m, positions, layer).double().cpu()
    return keys.view(m, len(rewrite), -1)


def compute_k_star(keys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(m, d_ff) float64: k*_j, the `weights`-weighted mean over the rewrite prompts of keys (m, n_rewrite, d_ff)."""
    weights = weights.double()
    return torch.stack([weights @ piece for piece in keys])
