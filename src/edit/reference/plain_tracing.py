"""A deliberately plain causal tracer: the original ROME algorithm, one forward per restored (token, layer).

Each forward has 1 + N rows: row 0 runs clean, rows 1..N are corrupted (`plain_trace`: `noise` on the subject's token
embeddings; `plain_replacement_trace`: one row that reads another subject's token ids), and the restored states of
rows 1..N are overwritten with row 0's. The score is p(answer) (metric "prob") or logits[answer] - logits[contrast]
(metric "logit_diff", the contrast token given). It exists to check `CausalTracer` (tests) and to measure its speed-up
(benchmarks/bench_tracing.py); do not use it for real work.
"""

from __future__ import annotations

import numpy as np
import torch

from src.edit.model.layout import ModelLayout


def _set_first(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def plain_trace(
    model,
    input_ids: list[int],
    subject_range: tuple[int, int],
    answer_id: int,
    noise: torch.Tensor,
    kind: str = "hidden",
    window: int = 1,
    metric: str = "prob",
    contrast_id: int | None = None,
) -> tuple[np.ndarray, float, float]:
    """(scores (T, L), low_score, high_score) for one prompt; noise is (N, e - b, hidden size), added as is."""
    b, e = subject_range
    batch = torch.tensor([input_ids] * (noise.shape[0] + 1), device=next(model.parameters()).device)

    def add_noise(_m, _i, output):
        output = output.clone()
        output[1:, b:e] += noise.to(output.device, output.dtype)
        return output

    return _restorations(model, batch, answer_id, kind, window, add_noise, metric, contrast_id)


@torch.no_grad()
def plain_replacement_trace(
    model,
    input_ids: list[int],
    replaced_ids: list[int],
    answer_id: int,
    kind: str = "hidden",
    window: int = 1,
    metric: str = "prob",
    contrast_id: int | None = None,
) -> tuple[np.ndarray, float, float]:
    """(scores (T, L), low_score, high_score): the clean run reads `input_ids`, the corrupted run `replaced_ids` (the
    prompt with another subject of as many tokens)."""
    if len(replaced_ids) != len(input_ids):
        raise ValueError("the replaced prompt must have as many tokens as the prompt")
    batch = torch.tensor([input_ids, replaced_ids], device=next(model.parameters()).device)
    return _restorations(model, batch, answer_id, kind, window, None, metric, contrast_id)


def _restorations(model, batch: torch.Tensor, answer_id: int, kind: str, window: int, embed_hook, metric: str,
                  contrast_id: int | None) -> tuple[np.ndarray, float, float]:
    """Row 0 of `batch` clean, rows 1.. corrupted (by `embed_hook` on the token embeddings, or by their own ids);
    every (token, layer) restored from row 0 in one forward each."""
    layout = ModelLayout.of(model)
    num_layers, num_tokens = layout.num_layers, batch.shape[1]

    def run(patches: list[tuple[torch.nn.Module, int]]) -> torch.Tensor:
        handles = [layout.embed.register_forward_hook(embed_hook)] if embed_hook is not None else []
        for module, token in patches:
            def patch(_m, _i, output, token=token):
                h = _first(output).clone()
                h[1:, token] = h[0, token]
                return _set_first(output, h)

            handles.append(module.register_forward_hook(patch))
        try:
            logits = model(input_ids=batch, use_cache=False).logits[:, -1].float()
        finally:
            for handle in handles:
                handle.remove()
        if metric == "logit_diff":
            return logits[:, answer_id] - logits[:, contrast_id]
        return torch.softmax(logits, dim=-1)[:, answer_id]

    unpatched = run([])
    high_score, low_score = float(unpatched[0]), float(unpatched[1:].mean())
    scores = np.zeros((num_tokens, num_layers), dtype=np.float32)
    for token in range(num_tokens):
        for layer in range(num_layers):
            if kind == "hidden":
                layers = [layer]
            else:
                layers = range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2)))
            patches = [(layout.sublayer(kind, l), token) for l in layers]
            scores[token, layer] = float(run(patches)[1:].mean())
    return scores, low_score, high_score
