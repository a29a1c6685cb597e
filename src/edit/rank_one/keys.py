"""MLP keys, the input of a layer's MLP output projection (`mlp_keys`, for ROME and MEMIT), and k* (ROME step 1):
the keys at the edit position(s) of each rewrite prompt and their weighted means.

`fact_token` "last" reads the prompt's last token; for a target of m tokens also each teacher-forced piece but the
last (where the next piece is read): m positions per prompt. "subject_last" reads the subject's last token only.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.hooks import Trace
from src.edit.model.layout import ModelLayout
from src.edit.prompts.batch import PromptBatch
from src.edit.prompts.encoding import EncodedPrompt
from src.edit.model.speedups import FAST, SpeedPaths


def edit_positions(prompts: list[EncodedPrompt], fact_token: str) -> list[int]:
    """Per prompt, the token whose MLP key is edited: the last one, or the subject's last."""
    if fact_token == "last":
        return [len(p.input_ids) - 1 for p in prompts]
    return [p.last_subject_index for p in prompts]


def pieces_read(fact_token: str, target_ids: tuple[int, ...]) -> int:
    """Positions per rewrite prompt that get delta: one per target token at the last token, else one."""
    return len(target_ids) if fact_token == "last" else 1


def compute_keys(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rewrite: Sequence[EncodedPrompt],
                 layer: int, fact_token: str, target_ids: tuple[int, ...], speed: SpeedPaths = FAST) -> torch.Tensor:
    """(m, n_rewrite, d_ff) float64: the keys at the positions that get delta (`pieces_read`), on the rewrite
    prompts followed by target[:-1] (position j reads target token j; causal, so later pieces change nothing)."""
    m = pieces_read(fact_token, target_ids)
    forced = [p.followed_by(target_ids[: m - 1]) for p in rewrite]
    keys = mlp_keys(model, tokenizer, forced, edit_positions(rewrite, fact_token), layer, offsets=range(m), speed=speed)
    return keys.double().cpu().view(m, len(rewrite), -1)


def compute_k_star(keys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(m, d_ff) float64: k*_j, the `weights`-weighted mean over the rewrite prompts of keys (m, n_rewrite, d_ff)."""
    weights = weights.double()
    return torch.stack([weights @ piece for piece in keys])


@torch.no_grad()
def mlp_keys(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[EncodedPrompt],
             positions: Sequence[int], layer: int, offsets: Sequence[int] = (0,), speed: SpeedPaths = FAST) -> torch.Tensor:
    """(len(offsets) * len(prompts), d_ff) float32, offset-major: the input of `layer`'s MLP output projection at
    each prompt's position + each offset, read from one forward per prompt (each forward stops at that module;
    forwards sized by `speed`)."""
    device = next(model.parameters()).device
    module = ModelLayout.of(model).mlp_out(layer)
    width = max(len(p.input_ids) for p in prompts)
    step = speed.rows(model, width)
    keys = [[] for _ in offsets]
    with speed.fused(model):
        for start in range(0, len(prompts), step):
            chunk = prompts[start : start + step]
            batch = PromptBatch.for_tokenizer([p.input_ids for p in chunk], tokenizer, device)
            with Trace(module, retain_input=True, retain_output=False, stop=True) as trace:
                batch.forward(model)
            columns = batch.columns(list(positions[start : start + step]))
            rows = torch.arange(len(chunk), device=device)
            for read, offset in zip(keys, offsets):
                read.append(trace.input[rows, columns + offset].float())
    return torch.cat([key for read in keys for key in read])
