"""Where things are inside a causal LM, resolved from the family table (`src.lm.families.FAMILIES`, chosen by
`config.model_type`).

Causal tracing and ROME reach modules only through `ModelLayout`, never by hard-coded names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from src.lm.families import FAMILIES, ModulePaths
from src.utils.errors import InputError


@dataclass(frozen=True)
class ModelLayout:
    """Resolved modules of one model."""

    model_type: str
    paths: ModulePaths
    model: PreTrainedModel

    @classmethod
    def of(cls, model: PreTrainedModel) -> "ModelLayout":
        model_type = getattr(model.config, "model_type", None)
        if model_type not in FAMILIES:
            raise InputError(f"unsupported model_type '{model_type}'; supported: {', '.join(sorted(FAMILIES))}")
        return cls(model_type=model_type, paths=FAMILIES[model_type].paths, model=model)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether `model` is of a family in the table (`of` would not refuse it)."""
        return getattr(getattr(model, "config", None), "model_type", None) in FAMILIES

    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.module(self.paths.blocks)  # type: ignore[return-value]

    @property
    def embed(self) -> nn.Module:
        """The token embedding (noise is added to its output, before any position embedding)."""
        return self.model.get_input_embeddings()

    @property
    def final_norm(self) -> nn.Module:
        return self.module(self.paths.final_norm)

    @property
    def unembed(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.num_layers:
            raise InputError(f"layer {layer} is out of range; this model has layers 0..{self.num_layers - 1}")
        return layer

    def block(self, layer: int) -> nn.Module:
        return self.blocks[self.check_layer(layer)]

    def mlp(self, layer: int) -> nn.Module:
        return self.module(self.paths.mlp.format(self.check_layer(layer)))

    def attn(self, layer: int) -> nn.Module:
        return self.module(self.paths.attn.format(self.check_layer(layer)))

    def mlp_out(self, layer: int) -> nn.Module:
        return self.module(self.paths.mlp_out.format(self.check_layer(layer)))

    def sublayer(self, kind: str, layer: int) -> nn.Module:
        """The module whose output a trace restores: kind "hidden" (block output), "mlp" or "attn"."""
        if kind == "hidden":
            return self.block(layer)
        if kind == "mlp":
            return self.mlp(layer)
        if kind == "attn":
            return self.attn(layer)
        raise InputError(f"unknown kind '{kind}'; allowed: hidden, mlp, attn")

    def key_size(self, layer: int) -> int:
        """d_ff: the width of the keys k that `mlp_out(layer)` reads."""
        module = self.mlp_out(layer)
        return int(module.weight.shape[0 if mlp_out_weight_is_transposed(module) else 1])

    @property
    def hidden_size(self) -> int:
        return self.embed.weight.shape[1]


def mlp_out_weight_is_transposed(module: nn.Module) -> bool:
    """True if `module.weight` is stored (in_features, out_features) as GPT-2's Conv1D; False for nn.Linear."""
    if isinstance(module, nn.Linear):
        return False
    if type(module).__name__ == "Conv1D":
        return True
    raise InputError(f"unsupported MLP output projection type {type(module).__name__}; expected nn.Linear or Conv1D")


def apply_update(module: torch.nn.Module, update: torch.Tensor) -> None:
    """W += update, for update in (d_model, d_ff) convention; the storage orientation comes from the module type."""
    transposed = mlp_out_weight_is_transposed(module)
    with torch.no_grad():
        module.weight.add_((update.T if transposed else update).to(module.weight.device, module.weight.dtype))
