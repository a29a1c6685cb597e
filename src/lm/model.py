"""Causal LMs of the supported families built from a YAML section (`build_model`), and loading a trained model
directory with a clear error when it is missing (`load_model`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from src.lm.families import FAMILIES, special_token_ids
from src.utils.device import resolve_device
from src.utils.errors import InputError


@dataclass(frozen=True)
class ModelConfig:
    """Model shape, in GPT-2's names whatever the family (`model_type`: one of `src.lm.families.FAMILIES`).

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
        if self.model_type not in FAMILIES:
            raise InputError(f"unknown model_type '{self.model_type}'; allowed: {', '.join(FAMILIES)}")
        if self.n_embd % self.n_head:
            raise InputError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        grouped = [name for name, family in FAMILIES.items() if family.grouped_query]
        if self.n_kv_head is not None and self.model_type not in grouped:
            raise InputError(f"n_kv_head is for {', '.join(grouped)}; model_type '{self.model_type}' "
                             "has one key/value head per attention head")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise InputError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def activation(self) -> str:
        return self.activation_function or FAMILIES[self.model_type].activation

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A randomly initialised causal LM of `config.model_type` (seed torch first for reproducible weights)."""
    common = {**special_token_ids(tokenizer), "initializer_range": config.initializer_range,
              "tie_word_embeddings": config.tie_word_embeddings}
    return FAMILIES[config.model_type].build(config, common)


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
        raise InputError(f"Model not found: {model_dir} has no config.json", missing="model")
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
