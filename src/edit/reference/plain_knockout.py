"""A deliberately plain attention knockout: one forward of the model per (layer, target), the blocked attention
edges put into the blocks' masks by forward pre-hooks. It exists to check `src.edit.tracing.knockout` (tests); do
not use it for real work."""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch

from src.edit.model.layout import ModelLayout


@torch.no_grad()
def plain_knockout(model, input_ids: list[int], answer_id: int, keys: Sequence[int], window: int
                   ) -> tuple[np.ndarray, float]:
    """(p(answer) per layer (L,) with the last token's attention to `keys` blocked in the window around the layer,
    p(answer) with nothing blocked). The masks are built from scratch: causal, minus the blocked edges."""
    layout = ModelLayout.of(model)
    num_layers, T = layout.num_layers, len(input_ids)
    batch = torch.tensor([input_ids], device=next(model.parameters()).device)
    dtype = next(model.parameters()).dtype
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    allowed[T - 1, list(keys)] = False
    low = torch.finfo(dtype).min
    mask = torch.zeros(T, T, dtype=dtype).masked_fill(~allowed, low)[None, None].to(batch.device)

    def with_mask(block):
        signature = inspect.signature(block.forward)

        def hook(_module, args, kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.arguments["attention_mask"] = mask
            return bound.args, bound.kwargs
        return hook

    def probability() -> float:
        logits = model(input_ids=batch, use_cache=False).logits[0, -1].float()
        return float(torch.softmax(logits, dim=-1)[answer_id])

    clean = probability()
    scores = np.zeros(num_layers, dtype=np.float32)
    for layer in range(num_layers):
        layers = range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2)))
        handles = [layout.block(l).register_forward_pre_hook(with_mask(layout.block(l)), with_kwargs=True)
                   for l in layers]
        try:
            scores[layer] = probability()
        finally:
            for handle in handles:
                handle.remove()
    return scores, clean
