"""The supported model families, in one table: how each is built from a `ModelConfig` (`build_model`) and where
its modules sit (`src.edit.model.layout.ModelLayout` reads `paths`). A family is chosen by `config.model_type`,
never by a model's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from src.lm.model import ModelConfig

Builder = Callable[["ModelConfig", dict], PreTrainedModel]


@dataclass(frozen=True)
class ModulePaths:
    """Dotted module paths; `{}` is the layer index. The token embedding and the unembedding come from the model's
    own `get_input_embeddings()` / `get_output_embeddings()`. The orientation of the MLP output projection's weight
    is decided by module type, never by comparing shapes."""

    blocks: str
    final_norm: str
    mlp: str
    attn: str
    mlp_out: str


@dataclass(frozen=True)
class Family:
    """One family: its default activation, its builder, where its modules are, and whether it has grouped-query
    attention (`n_kv_head`)."""

    activation: str
    build: Builder
    paths: ModulePaths
    grouped_query: bool = False


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict:
    return {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def _gpt2(config: "ModelConfig", common: dict) -> PreTrainedModel:
    return GPT2LMHeadModel(GPT2Config(
        n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
        n_inner=config.n_inner, activation_function=config.activation, resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.dropout, **common))


def _gptj(config: "ModelConfig", common: dict) -> PreTrainedModel:
    from transformers import GPTJConfig, GPTJForCausalLM

    return GPTJForCausalLM(GPTJConfig(
        n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
        rotary_dim=config.n_embd // config.n_head, n_inner=config.n_inner, activation_function=config.activation,
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout, **common))


def _gpt_neox(config: "ModelConfig", common: dict) -> PreTrainedModel:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(
        hidden_size=config.n_embd, num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
        intermediate_size=config.inner, hidden_act=config.activation, max_position_embeddings=config.n_positions,
        hidden_dropout=config.dropout, attention_dropout=config.dropout, **common))


def _llama_style(config_class: str, model_class: str) -> Builder:
    def build(config: "ModelConfig", common: dict) -> PreTrainedModel:
        import transformers

        hf_config = getattr(transformers, config_class)(
            hidden_size=config.n_embd, num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
            num_key_value_heads=config.n_kv_head or config.n_head, intermediate_size=config.inner,
            hidden_act=config.activation, max_position_embeddings=config.n_positions,
            attention_dropout=config.dropout, **common)
        return getattr(transformers, model_class)(hf_config)

    return build


_LLAMA_PATHS = ModulePaths("model.layers", "model.norm", "model.layers.{}.mlp", "model.layers.{}.self_attn",
                           "model.layers.{}.mlp.down_proj")
FAMILIES: dict[str, Family] = {
    "gpt2": Family("gelu_new", _gpt2, ModulePaths("transformer.h", "transformer.ln_f", "transformer.h.{}.mlp",
                                                  "transformer.h.{}.attn", "transformer.h.{}.mlp.c_proj")),
    "gptj": Family("gelu_new", _gptj, ModulePaths("transformer.h", "transformer.ln_f", "transformer.h.{}.mlp",
                                                  "transformer.h.{}.attn", "transformer.h.{}.mlp.fc_out")),
    "gpt_neox": Family("gelu", _gpt_neox, ModulePaths("gpt_neox.layers", "gpt_neox.final_layer_norm",
                                                      "gpt_neox.layers.{}.mlp", "gpt_neox.layers.{}.attention",
                                                      "gpt_neox.layers.{}.mlp.dense_4h_to_h")),
    "llama": Family("silu", _llama_style("LlamaConfig", "LlamaForCausalLM"), _LLAMA_PATHS, grouped_query=True),
    "mistral": Family("silu", _llama_style("MistralConfig", "MistralForCausalLM"), _LLAMA_PATHS, grouped_query=True),
    "qwen2": Family("silu", _llama_style("Qwen2Config", "Qwen2ForCausalLM"), _LLAMA_PATHS, grouped_query=True),
}
