"""Training compute, counted from the model's own weight shapes (the usual 6 x weights x tokens accounting).

A forward multiplies every token by every block weight matrix once (2 FLOPs per weight per token), attends over the
sequence (2 x 2 x T x d per token per layer: scores and the weighted sum, counted dense) and, where a loss is taken,
multiplies by the output embedding (2 x d x vocab per selected position); a backward costs twice its forward.
Embedding lookups, norms, activations and the optimiser are left out (each well under 1% here).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

from src.utils.errors import InputError


@dataclass(frozen=True)
class FlopCounter:
    """FLOPs of one training step. block_weights: weight-matrix entries summed over every block; num_layers, hidden
    (d), vocab: the model's."""

    block_weights: int
    num_layers: int
    hidden: int
    vocab: int

    @classmethod
    def of(cls, model: PreTrainedModel) -> "FlopCounter":
        """From a model: its block matrices are its 2-d parameters but the embeddings (token, position, output)."""
        embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        output = model.get_output_embeddings().weight
        embeddings.add(id(output))
        weights = sum(p.numel() for p in model.parameters() if p.ndim == 2 and id(p) not in embeddings)
        return cls(block_weights=weights, num_layers=int(model.config.num_hidden_layers), hidden=output.shape[1],
                   vocab=output.shape[0])

    def forward(self, lines: int, length: int, selected: int) -> float:
        """Forward FLOPs of `lines` sequences of `length` tokens with the output layer at `selected` positions."""
        if min(lines, length, selected) < 0:
            raise InputError(f"lines, length and selected must be >= 0, got {lines}, {length}, {selected}")
        tokens = lines * length
        blocks = 2 * self.block_weights * tokens
        attention = 4 * self.num_layers * self.hidden * length * tokens
        return float(blocks + attention + 2 * self.hidden * self.vocab * selected)

    def step(self, lines: int, length: int, selected: int) -> float:
        """Forward and backward FLOPs of one training step (backward = 2 x forward)."""
        return 3 * self.forward(lines, length, selected)
