"""Tiny random-weight models built in tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from src.lm.tokenizer import build_word_tokenizer

WORDS = ["a", "b", "c", "d", "r", "q", "x", "y", "z", ";"]


def tiny_tokenizer():
    return build_word_tokenizer(WORDS)


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


def tiny_llama_like(tokenizer, family: str, intermediate_size: int = 64, seed: int = 0):
    """A tiny random Llama or GPT-NeoX (rotary position embeddings, nn.Linear MLP) with peaked outputs."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=intermediate_size, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        model = LlamaForCausalLM(config)
    else:
        config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=intermediate_size, num_hidden_layers=4,
                               num_attention_heads=4, max_position_embeddings=32)
        model = GPTNeoXForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(12)
    return model.eval()
