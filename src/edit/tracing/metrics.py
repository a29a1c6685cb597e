"""What a trace measures at the last position of each run: p(answer) ("prob", the original) or the logit difference
between the clean answer and the corrupted run's answer ("logit_diff", as Zhang & Nanda recommend)."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from src.edit.prompts.encoding import answer_token_id
from src.utils.errors import InputError

METRICS = ("prob", "logit_diff")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise InputError(f"unknown metric '{metric}'; allowed: {', '.join(METRICS)}")
    return metric


def contrast_answers(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """(F,) long: per fact, the corrupted runs' answer that logit_diff contrasts with the clean answer: the token of
    highest mean probability over the corrupted rows, other than the clean answer (which it is whenever the
    corruption changes the answer). logits: (F, 1 + N, vocab), row 0 clean; answer_ids: (F,)."""
    probabilities = torch.softmax(logits[:, 1:].float(), dim=-1).mean(1)
    probabilities[torch.arange(len(answer_ids), device=logits.device), answer_ids] = -1.0
    return probabilities.argmax(-1)


def metric_scores(logits: torch.Tensor, answer_ids: torch.Tensor, contrast_ids: torch.Tensor | None,
                  metric: str) -> torch.Tensor:
    """The metric of every row: logits (R, vocab) at the last position; answer_ids, contrast_ids (R,) long (contrast
    only for logit_diff). prob: softmax(logits)[answer]; logit_diff: logits[answer] - logits[contrast]."""
    logits = logits.float()
    if metric == "prob":
        return torch.softmax(logits, dim=-1).gather(1, answer_ids[:, None])[:, 0]
    return logits.gather(1, answer_ids[:, None])[:, 0] - logits.gather(1, contrast_ids[:, None])[:, 0]


def run_metrics(tokenizer: PreTrainedTokenizerBase, requests: Sequence, logits: torch.Tensor, metric: str
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(answer ids (F,), contrast ids (F,) or None for prob, the metric (F, 1 + N)) of F facts' runs, from the logits
    (F, 1 + N, vocab) at their last position, row 0 clean. A fact's answer is its request's o_target, else the clean
    run's top token."""
    answer_ids = torch.tensor([int(logits[f, 0].argmax()) if q.o_target is None else
                               answer_token_id(tokenizer, q.o_target) for f, q in enumerate(requests)],
                              device=logits.device)
    contrast_ids = contrast_answers(logits, answer_ids) if metric == "logit_diff" else None
    rows = logits.shape[1]
    measured = metric_scores(logits.flatten(0, 1), answer_ids.repeat_interleave(rows),
                             None if contrast_ids is None else contrast_ids.repeat_interleave(rows), metric)
    return answer_ids, contrast_ids, measured.view(len(requests), rows)
