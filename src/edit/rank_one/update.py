"""u and the update (ROME steps 2 and 4): u = C^-1 k* (or its multi-key form) and W' = W + delta u^T / (u . k)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from src.edit.rank_one.linalg import combine_keys
from src.utils.errors import InputError


@dataclass(frozen=True)
class RankOneUpdate:
    """The update dW = delta u^T / (u . key) in (d_model, d_ff) convention: out'(k) = out(k) + dW k.

    k_star: mean key over the rewrite prompts (for several keys, their combination K^T a, see
    `src.edit.rank_one.linalg.combine_keys`); key: the key of the denominator (k_star, or the bare prompt's key for key_mode
    "original"); u = C^-1 k_star. keys: (m, d_ff) the mean keys, one per position a target token is read at (m = 1:
    k_star itself). All float64 on the CPU.
    """

    k_star: torch.Tensor
    key: torch.Tensor
    u: torch.Tensor
    delta: torch.Tensor
    keys: torch.Tensor | None = None

    @property
    def denominator(self) -> float:
        return float(self.u @ self.key)

    def matrix(self) -> torch.Tensor:
        """(d_model, d_ff) float64."""
        return torch.outer(self.delta, self.u) / self.denominator


def compute_u(keys: torch.Tensor, denominator_keys: torch.Tensor,
              precondition: Callable[[torch.Tensor], torch.Tensor], layer: int) -> tuple[torch.Tensor, ...]:
    """(k_star, key, u, denominator) from the mean keys (m, d_ff) and the denominator's keys (the same, or the bare
    prompt's for key_mode "original"); precondition: x -> C^-1 x (or P x, or x). See `combine_keys`."""
    k_star, key, u = combine_keys(keys, denominator_keys, precondition)
    denominator = float(u @ key)
    if abs(denominator) < 1e-12:
        raise InputError(f"degenerate key at layer {layer}: u . k = {denominator:.3g}")
    return k_star, key, u, denominator
