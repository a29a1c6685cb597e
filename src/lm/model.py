"""Causal LMs of the supported families built from a YAML section (`build_model`), and loading a trained model
directory with a clear error when it is missing (`load_model`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

from src.utils.device import resolve_device
from src.utils.errors import InputError

TRAIN_HINT = "python -m src.cli.train_lm --config configs/train_gpt_small.yaml"


@dataclass(frozen=True)
class ModelConfig:
    """Model shape, in GPT-2's names whatever the family (`model_type`: one of `ARCHITECTURES`).

    `n_inner` None means 4 * n_embd; `activation_function` None means the family's own (gelu_new for gpt2 and gptj,
    gelu for gpt_neox, silu for the Llama-style families); `n_kv_head` (Llama-style grouped-query attention) None
    means n_head. No dropout by default: the model is meant to memorise facts."""

    model_type: str = "gpt2"
    n_layer: int = 8
    n_embd: int = 128
    n_head: int = 4
    n_inner: int | None = None
    n_kv_head: int | None = None
    n_positions: int = 32
    dropout: float = 0.0
    activation_function: str | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.model_type not in ARCHITECTURES:
            raise InputError(f"unknown model_type '{self.model_type}'; allowed: {', '.join(ARCHITECTURES)}")
        if self.n_embd % self.n_head:
            raise InputError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.n_kv_head is not None and self.model_type not in GROUPED_QUERY_FAMILIES:
            raise InputError(f"n_kv_head is for {', '.join(GROUPED_QUERY_FAMILIES)}; model_type '{self.model_type}' "
                             "has one key/value head per attention head")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise InputError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def activation(self) -> str:
        return self.activation_function or ARCHITECTURES[self.model_type].activation

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Architecture:
    """How one family is built from a `ModelConfig`: its default activation and a builder."""

    activation: str
    build: Callable[[ModelConfig, dict], PreTrainedModel]


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict:
    return {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def _gpt2(config: ModelConfig, common: dict) -> PreTrainedModel:
    return GPT2LMHeadModel(GPT2Config(
        n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
        n_inner=config.n_inner, activation_function=config.activation, resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.dropout, **common))


def _gptj(config: ModelConfig, common: dict) -> PreTrainedModel:
    from transformers import GPTJConfig, GPTJForCausalLM

    return GPTJForCausalLM(GPTJConfig(
        n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
        rotary_dim=config.n_embd // config.n_head, n_inner=config.n_inner, activation_function=config.activation,
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout, **common))


def _gpt_neox(config: ModelConfig, common: dict) -> PreTrainedModel:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(
        hidden_size=config.n_embd, num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
        intermediate_size=config.inner, hidden_act=config.activation, max_position_embeddings=config.n_positions,
        hidden_dropout=config.dropout, attention_dropout=config.dropout, **common))


def _llama_style(config_class: str, model_class: str) -> Callable[[ModelConfig, dict], PreTrainedModel]:
    def build(config: ModelConfig, common: dict) -> PreTrainedModel:
        import transformers

        hf_config = getattr(transformers, config_class)(
            hidden_size=config.n_embd, num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
            num_key_value_heads=config.n_kv_head or config.n_head, intermediate_size=config.inner,
            hidden_act=config.activation, max_position_embeddings=config.n_positions,
            attention_dropout=config.dropout, **common)
        return getattr(transformers, model_class)(hf_config)

    return build


GROUPED_QUERY_FAMILIES = ("llama", "mistral", "qwen2")
ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("gelu_new", _gpt2),
    "gptj": Architecture("gelu_new", _gptj),
    "gpt_neox": Architecture("gelu", _gpt_neox),
    "llama": Architecture("silu", _llama_style("LlamaConfig", "LlamaForCausalLM")),
    "mistral": Architecture("silu", _llama_style("MistralConfig", "MistralForCausalLM")),
    "qwen2": Architecture("silu", _llama_style("Qwen2Config", "Qwen2ForCausalLM")),
}


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A randomly initialised causal LM of `config.model_type` (seed torch first for reproducible weights)."""
    common = {**_special_ids(tokenizer), "initializer_range": config.initializer_range,
              "tie_word_embeddings": config.tie_word_embeddings}
    return ARCHITECTURES[config.model_type].build(config, common)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float32 anywhere, bfloat16 anywhere, float16 on CUDA only (CPU float16 kernels are missing or slow)."""
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; allowed: {', '.join(DTYPES)}")
    if dtype == "float16" and device.type != "cuda":
        raise InputError(f"dtype float16 needs a CUDA device (got {device}); use float32 or bfloat16 on the CPU")
    return DTYPES[dtype]


def require_model_dir(model_dir: str | Path) -> Path:
    """`model_dir` as a Path if it holds a model's config.json, else an InputError that says how to train one."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"Model not found: {model_dir} has no config.json; train one with: {TRAIN_HINT}")
    return model_dir


def load_model(model_dir: str | Path, device: str | torch.device = "auto",
               dtype: str = "float32") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model directory written by `train_lm` (or any causal LM directory) in eval mode, in `dtype` (the
    weights are cast after loading; statistics and solves of the editing methods stay float32/float64)."""
    model_dir = require_model_dir(model_dir)
    resolved = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(resolved, torch_dtype)
    model.eval()
    return model, tokenizer
