"""Attribution patching (Nanda; AtP, Kramar et al. 2024): every cell of a trace estimated to first order from one
forward and one backward of the clean and corrupted runs together.

Restoring state a at (token t, layer l) moves the metric m of a corrupted run by about
    (a_clean - a_corrupted) . dm/da,
the gradient taken in the corrupted run; with gaussian noise, the mean of that over the noise samples (each sample
its own run and gradient). A windowed kind restores several layers' outputs at once; its estimate is the sum of the
layers' estimates (which ignores how restoring one changes the others'). A cell's estimated score is the corrupted
metric plus its estimate, so `TraceResult.indirect_effect` reads the same as for exact restorations. The estimate is
exact where the metric is affine in the state (a model of linear blocks and metric logit_diff) and is known to be poor
for large changes such as the residual stream's ("hidden"); `src.edit.tracing.stats.agreement` measures it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.hooks import Trace, TraceDict
from src.edit.model.layout import ModelLayout
from src.edit.prompts.encoding import EncodedPrompt
from src.edit.tracing.metrics import run_metrics
from src.edit.tracing.rows import corrupt, trace_results
from src.edit.tracing.results import TraceRequest, TraceResult, window_layers


def attribution_traces(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, layout: ModelLayout,
                       device: torch.device, requests: Sequence[TraceRequest], prompts: Sequence[EncodedPrompt],
                       noises: Sequence[tuple[torch.Tensor, float]], kinds: Sequence[str], window: int,
                       metric: str) -> list[dict[str, TraceResult]]:
    """{kind: TraceResult} per fact, method "attribution", from one forward and one backward of F x (1 + N) rows
    (per fact row 0 clean, rows 1..N with its noise (N, subject tokens, d) added to the subject's token embeddings);
    every prompt has the same length T."""
    L, F, N = layout.num_layers, len(requests), noises[0][0].shape[0]
    rows, T = 1 + N, len(prompts[0].input_ids)
    modules = {f"{kind}.{l}": layout.sublayer(kind, l) for kind in kinds for l in range(L)}

    def corrupted_leaf(embeddings: torch.Tensor) -> torch.Tensor:
        # the graph starts here, whether or not the weights require grad
        return corrupt(embeddings.detach(), noises, prompts).requires_grad_(True)

    input_ids = torch.tensor([p.input_ids for p in prompts for _ in range(rows)], device=device)
    with torch.enable_grad(), Trace(layout.embed, edit_output=corrupted_leaf, retain_output=False), \
            TraceDict(modules, detach=False) as traces:
        logits = model(input_ids=input_ids, use_cache=False).logits[:, -1].view(F, rows, -1)
        answer_ids, contrast_ids, measured = run_metrics(tokenizer, requests, logits, metric)
        states = [traces[name].output for name in modules]
        gradients = torch.autograd.grad(measured[:, 1:].sum(), states, allow_unused=True)
    # per module and fact: (T,) mean over samples of (clean - corrupted) . gradient
    cells = {}
    for name, state, gradient in zip(modules, states, gradients):
        state = state.detach().float().view(F, rows, T, -1)
        if gradient is None:  # the metric does not depend on this state
            cells[name] = torch.zeros(F, T)
            continue
        difference = state[:, :1] - state[:, 1:]
        cells[name] = (difference * gradient.float().view(F, rows, T, -1)[:, 1:]).sum(-1).mean(1).cpu()
    measured = measured.detach().cpu()
    low_scores = [float(m) for m in measured[:, 1:].mean(1)]
    scores = []
    for fact in range(F):
        per_kind = {}
        for kind in kinds:
            estimate = torch.zeros(T, L)
            for l in range(L):
                layers = range(l, l + 1) if kind == "hidden" else window_layers(l, window, L)
                estimate[:, l] = sum(cells[f"{kind}.{j}"][fact] for j in layers)
            per_kind[kind] = (low_scores[fact] + estimate.numpy()).astype(np.float32)
        scores.append(per_kind)
    return trace_results(tokenizer, requests, prompts, scores, answer_ids, contrast_ids,
                         [float(m) for m in measured[:, 0]], low_scores, [std for _, std in noises], N, window, metric,
                         "attribution")
