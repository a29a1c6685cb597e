"""Context managers that make forwards and backwards cheaper without changing what they compute.

- `fused_activations`: transformers' `NewGELUActivation` (GPT-2's "gelu_new") computes tanh-GELU in eight elementwise
  passes, each allocating a tensor as large as the MLP's hidden layer, a third of a small block's CPU time; torch's
  fused kernel computes the same formula (float32 differences < 1e-6).
- `frozen_parameters`: while a method optimises a vector added inside the model (ROME's delta, MEMIT's z), autograd
  would also compute, and accumulate in `.grad`, the gradient of every weight: twice the backward work, for nothing.
- `rows_per_forward`: how many prompts of a given length to batch so that one activation tensor stays small (large
  tensors are fresh pages from the kernel each time: on CPU that cost more than the arithmetic).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers.activations import NewGELUActivation

from src.edit.model.hooks import swap_modules

# Activation elements per forward (rows x tokens x widest hidden layer): 2M float32 = 8 MiB per tensor.
ACTIVATION_BUDGET = 2 ** 21


class TanhGELU(nn.Module):
    """tanh-approximated GELU as one fused kernel (the formula of `NewGELUActivation`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


def fused_replacement(module: nn.Module) -> nn.Module | None:
    return TanhGELU() if isinstance(module, NewGELUActivation) else None


@contextmanager
def fused_activations(model: nn.Module) -> Iterator[int]:
    """Within the context, `model`'s gelu_new activations run as one fused kernel; yields how many were swapped.
    Do not deep-copy `model` inside the context (the copy would keep the swapped modules)."""
    with swap_modules(model, fused_replacement) as swapped:
        yield swapped


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Within the context no parameter of `model` requires grad (gradients still flow to tensors created with
    requires_grad, through the model); each parameter's flag is put back on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def widest_hidden(model: nn.Module) -> int:
    """The widest hidden size of `model` (its MLP's inner width for the families here), from its config."""
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
    inner = getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * hidden
    return max(hidden, int(inner), 1)


def rows_per_forward(model: nn.Module, num_tokens: int, budget: int = ACTIVATION_BUDGET) -> int:
    """Prompts of `num_tokens` tokens per forward such that rows x tokens x widest hidden <= budget (at least 1)."""
    return max(1, budget // (max(1, num_tokens) * widest_hidden(model)))
