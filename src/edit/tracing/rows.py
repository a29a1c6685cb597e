"""The rows every tracing method runs and what it returns from them: F facts' clean and corrupted runs as one batch
of F x (1 + N) rows (`corrupt`), and the per-fact `TraceResult`s built from their score arrays (`trace_results`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from src.edit.prompts.encoding import EncodedPrompt
from src.edit.tracing.results import TraceRequest, TraceResult


def corrupt(embeddings: torch.Tensor, noises: Sequence[tuple[torch.Tensor, float]],
            prompts: Sequence[EncodedPrompt]) -> torch.Tensor:
    """Token embeddings (F x (1 + N), T, d) of F facts' runs with, per fact, rows 1..N's subject tokens plus its noise
    (N, subject tokens, d) (a copy; row 0 stays clean)."""
    embeddings, rows = embeddings.clone(), len(embeddings) // len(prompts)
    for f, ((added, _), prompt) in enumerate(zip(noises, prompts)):
        b, e = prompt.subject_range
        embeddings[f * rows + 1 : (f + 1) * rows, b:e] += added.to(embeddings.dtype)
    return embeddings


def trace_results(tokenizer: PreTrainedTokenizerBase, requests: Sequence[TraceRequest], prompts: Sequence[EncodedPrompt],
                  scores: list[dict[str, np.ndarray]], answer_ids: torch.Tensor, contrast_ids: torch.Tensor | None,
                  high_scores: Sequence[float], low_scores: Sequence[float], noise_stds: Sequence[float],
                  num_samples: int, window: int, metric: str, method: str) -> list[dict[str, TraceResult]]:
    """One {kind: TraceResult} per fact from its score arrays {kind: (T, L)} (made read-only here) and its runs."""
    results = []
    for fact, (request, prompt) in enumerate(zip(requests, prompts)):
        tokens = tuple(tokenizer.convert_ids_to_tokens(list(prompt.input_ids)))
        answer_id = int(answer_ids[fact])
        contrast_id = None if contrast_ids is None else int(contrast_ids[fact])
        traced = {}
        for kind, array in scores[fact].items():
            array.setflags(write=False)
            traced[kind] = TraceResult(
                subject=request.s, relation=request.r, prompt=prompt.text, scores=array,
                low_score=low_scores[fact], high_score=high_scores[fact], input_ids=prompt.input_ids,
                input_tokens=tokens, subject_range=prompt.subject_range,
                answer=tokenizer.convert_ids_to_tokens(answer_id), answer_id=answer_id, kind=kind,
                window=1 if kind == "hidden" else window, noise_std=noise_stds[fact], num_samples=num_samples,
                metric=metric, contrast_id=contrast_id,
                contrast=None if contrast_id is None else tokenizer.convert_ids_to_tokens(contrast_id), method=method,
            )
        results.append(traced)
    return results
