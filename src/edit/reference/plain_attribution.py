"""A deliberately plain attribution patching: the first-order estimate of every restoration, one forward and one
backward per layer's state, with nothing shared.

Rows of the batch: 0 clean, 1..N corrupted (noise on the subject's token embeddings, or another subject's token
ids). For the state s of one module at one layer, its output in rows 1..N is swapped for a leaf tensor with the same
values, the metric summed over rows 1..N is differentiated with respect to it, and each cell is
    mean over n of (s[0, t] - s[n, t]) . grad[n, t];
a windowed kind adds the cells of the window's layers. It exists to check `src.edit.tracing.attribution` (tests);
do not use it for real work.
"""

from __future__ import annotations

import numpy as np
import torch

from src.edit.model.layout import ModelLayout


def plain_attribution(
    model,
    input_ids: list[int],
    answer_id: int,
    kind: str = "hidden",
    window: int = 1,
    metric: str = "prob",
    contrast_id: int | None = None,
    noise: torch.Tensor | None = None,
    subject_range: tuple[int, int] | None = None,
    replaced_ids: list[int] | None = None,
) -> tuple[np.ndarray, float, float]:
    """(estimated scores (T, L), low_score, high_score): rows 1..N read `input_ids` with `noise` (N, e - b, d) added
    at `subject_range`, or the one row `replaced_ids`."""
    layout = ModelLayout.of(model)
    device = next(model.parameters()).device
    num_layers = layout.num_layers
    rows = [input_ids] + ([replaced_ids] if replaced_ids is not None else [input_ids] * noise.shape[0])
    batch = torch.tensor(rows, device=device)

    def add_noise(_m, _i, output):
        if noise is None:
            return output
        b, e = subject_range
        output = output.clone()
        output[1:, b:e] += noise.to(output.device, output.dtype)
        return output

    def metric_of(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if metric == "logit_diff":
            return logits[:, answer_id] - logits[:, contrast_id]
        return torch.softmax(logits, dim=-1)[:, answer_id]

    with torch.no_grad():
        handle = layout.embed.register_forward_hook(add_noise)
        try:
            unpatched = metric_of(model(input_ids=batch, use_cache=False).logits[:, -1])
        finally:
            handle.remove()
    high_score, low_score = float(unpatched[0]), float(unpatched[1:].mean())

    cells = np.zeros((batch.shape[1], num_layers))
    for layer in range(num_layers):
        module = layout.sublayer(kind, layer)
        kept = {}

        def swap(_m, _i, output):
            state = output[0] if isinstance(output, tuple) else output
            leaf = state[1:].detach().clone().requires_grad_(True)
            kept["clean"], kept["leaf"] = state[0].detach(), leaf
            swapped = torch.cat([state[:1].detach(), leaf])
            return (swapped, *output[1:]) if isinstance(output, tuple) else swapped

        handles = [layout.embed.register_forward_hook(add_noise), module.register_forward_hook(swap)]
        try:
            with torch.enable_grad():
                measured = metric_of(model(input_ids=batch, use_cache=False).logits[:, -1])
                (gradient,) = torch.autograd.grad(measured[1:].sum(), [kept["leaf"]])
        finally:
            for handle in handles:
                handle.remove()
        difference = kept["clean"][None] - kept["leaf"].detach()
        cells[:, layer] = (difference.double() * gradient.double()).sum(-1).mean(0).cpu().numpy()

    scores = np.zeros_like(cells)
    for layer in range(num_layers):
        if kind == "hidden":
            layers = [layer]
        else:
            layers = range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2)))
        scores[:, layer] = low_score + cells[:, list(layers)].sum(1)
    return scores.astype(np.float32), low_score, high_score
