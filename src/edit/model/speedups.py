"""Context managers that make forwards and backwards cheaper without changing what they compute.

- `fused_activations`: transformers' `NewGELUActivation` (GPT-2's "gelu_new") computes tanh-GELU in eight elementwise
  passes, each allocating a tensor as large as the MLP's hidden layer, a third of a small block's CPU time; torch's
  fused kernel computes the same formula (float32 differences < 1e-6).
- `frozen_parameters`: while a method optimises a vector added inside the model (ROME's delta, MEMIT's z), autograd
  would also compute, and accumulate in `.grad`, the gradient of every weight: twice the backward work, for nothing.
- `rows_per_forward`: how many prompts of a given length to batch so that one activation tensor stays small (large
  tensors are fresh pages from the kernel each time: on CPU that cost more than the arithmetic).

`SpeedPaths` says which of them (and `ResumedForward`'s resuming) a computation uses: an explicit argument of every
function and class that has a speed path, all on by default; `SpeedPaths.plain()` is the paths they replace, which the
benchmarks time against and the tests compare with.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from transformers.activations import NewGELUActivation

from src.edit.model.hooks import swap_modules

# Activation elements per forward (rows x tokens x widest hidden layer): 2M float32 = 8 MiB per tensor.
ACTIVATION_BUDGET = 2 ** 21
UNSIZED_ROWS = 1 << 30  # rows per forward without sizing: every prompt of a batch in one forward


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


@dataclass(frozen=True)
class SpeedPaths:
    """Which speed paths a computation takes; each computes the same numbers (up to float rounding) as its plain path.

    fuse_gelu: `fused_activations`. freeze_weights: `frozen_parameters` while a vector is optimised.
    activation_budget: `rows_per_forward`'s budget; None runs every prompt of a batch in one forward.
    resume_forward: `ResumedForward` runs only the blocks above the edited one per step (False: the whole model, with
    the vector added by a hook).
    pack_prompts: `ResumedForward` runs its blocks on the prompts packed into fewer rows, without pads
    (`src.edit.model.packing`; False: the padded batch).
    share_stems: `PromptProbe` runs prompts that share all but their last token over the shared part once (False:
    every prompt whole).
    share_prefixes: key statistics take each distinct token prefix's key once, weighted by its count, and skip lines
    that are prefixes of others (`src.edit.rank_one.key_statistics.KeyPlan`; False: every key of every line).
    reuse_statistics: `KeyCovariance` keeps the C it last read for each layer, factorised, and uses it again while
    the cache key (the weights, tokenizer, corpus and settings) is the same (False: every edit reads C from the
    cache and factorises it).
    symmetric_product: key statistics compute C's blocks on and above its diagonal and mirror them (False: the whole
    product keys^T keys).
    """

    fuse_gelu: bool = True
    freeze_weights: bool = True
    activation_budget: int | None = ACTIVATION_BUDGET
    resume_forward: bool = True
    pack_prompts: bool = True
    share_stems: bool = True
    share_prefixes: bool = True
    reuse_statistics: bool = True
    symmetric_product: bool = True

    @classmethod
    def plain(cls) -> "SpeedPaths":
        return cls(fuse_gelu=False, freeze_weights=False, activation_budget=None, resume_forward=False,
                   pack_prompts=False, share_stems=False, share_prefixes=False, reuse_statistics=False,
                   symmetric_product=False)

    def fused(self, model: nn.Module) -> AbstractContextManager:
        return fused_activations(model) if self.fuse_gelu else nullcontext(0)

    def frozen(self, model: nn.Module) -> AbstractContextManager:
        return frozen_parameters(model) if self.freeze_weights else nullcontext()

    def rows(self, model: nn.Module, num_tokens: int) -> int:
        """Prompts of `num_tokens` tokens per forward."""
        if self.activation_budget is None:
            return UNSIZED_ROWS
        return rows_per_forward(model, num_tokens, self.activation_budget)


FAST = SpeedPaths()  # every speed path on: the default everywhere
