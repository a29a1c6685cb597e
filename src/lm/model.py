"""GPT-2 built from a YAML section, and loading a trained model directory with a clear error when it is missing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

from src.utils.device import resolve_device
from src.utils.errors import InputError

TRAIN_HINT = "python -m src.cli.train_lm --config configs/train_gpt_small.yaml"


@dataclass(frozen=True)
class ModelConfig:
    """GPT-2 shape. `n_inner` None means 4 * n_embd. No dropout by default: the model is meant to memorise facts."""

    n_layer: int = 8
    n_embd: int = 128
    n_head: int = 4
    n_inner: int | None = None
    n_positions: int = 32
    dropout: float = 0.0
    activation_function: str = "gelu_new"
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def build_gpt2(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> GPT2LMHeadModel:
    hf_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.n_inner,
        activation_function=config.activation_function,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(hf_config)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float32 anywhere, bfloat16 anywhere, float16 on CUDA only (CPU float16 kernels are missing or slow)."""
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; allowed: {', '.join(DTYPES)}")
    if dtype == "float16" and device.type != "cuda":
        raise InputError(f"dtype float16 needs a CUDA device (got {device}); use float32 or bfloat16 on the CPU")
    return DTYPES[dtype]


def load_model(model_dir: str | Path, device: str | torch.device = "auto",
               dtype: str = "float32") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model directory written by `train_lm` (or any causal LM directory) in eval mode, in `dtype` (the
    weights are cast after loading; statistics and solves of the editing methods stay float32/float64)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"Model not found: {model_dir} has no config.json; train one with: {TRAIN_HINT}")
    resolved = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(resolved, torch_dtype)
    model.eval()
    return model, tokenizer
