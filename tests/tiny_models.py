"""Tiny random-weight models built in tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from src.lm.tokenizer import build_word_tokenizer

WORDS = ["a", "b", "c", "d", "r", "q", "x", "y", "z", ";"]


def tiny_tokenizer(bos: bool = False):
    return build_word_tokenizer(WORDS, bos=bos)


def tiny_gpt2(tokenizer, n_layer: int = 5, n_embd: int = 32, n_inner: int | None = None,
              attn_implementation: str = "sdpa", seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=n_embd, n_layer=n_layer, n_head=4,
                        n_inner=n_inner, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        attn_implementation=attn_implementation)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger weights than the init so that restorations change p(answer) visibly
        model.transformer.wte.weight.mul_(8)
        for block in model.transformer.h:
            block.mlp.c_proj.weight.mul_(20)
            block.attn.c_proj.weight.mul_(10)
    return model


def tiny_family_model(tokenizer, family: str, intermediate_size: int = 64, seed: int = 0):
    """A tiny random model of any family in `src.lm.families.FAMILIES` (4 layers, 32 wide, 4 heads; Llama-style
    families with 2 key/value heads), weights scaled up so that outputs are peaked."""
    from src.lm.model import ModelConfig, build_model

    torch.manual_seed(seed)
    grouped = family in ("llama", "mistral", "qwen2")
    config = ModelConfig(model_type=family, n_layer=4, n_embd=32, n_head=4, n_inner=intermediate_size,
                         n_kv_head=2 if grouped else None, n_positions=32, tie_word_embeddings=False)
    model = build_model(config, tokenizer)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(12)
    return model.eval()
