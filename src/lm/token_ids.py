"""How prompts and objects become token ids, following the tokenizer: BOS where its template adds one, an object as
it follows a prompt (` word`), never a trailing special token."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def starts_with_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer's own template starts every text with BOS (Llama's do; GPT-2's and, unless built
    with `bos=True`, the KG word tokenizer do not). Prompts follow the tokenizer, as the model saw text in training."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, bos: bool | None = None) -> list[int]:
    """Token ids of `prompt`, behind BOS when `bos` (None: when the tokenizer adds one). Never an EOS or other
    trailing special token: the next token after the prompt is what the model is asked for."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if starts_with_bos(tokenizer) if bos is None else bos:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def object_token_ids(tokenizer: PreTrainedTokenizerBase, word: str) -> list[int]:
    """Ids of ` word` as it follows a prompt: one token for the word tokenizer, its pieces for a subword one."""
    return tokenizer(f" {word}", add_special_tokens=False)["input_ids"]


def first_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """Id of the first token of ` word` as it follows a prompt (the whole word for the KG tokenizer; causal tracing
    scores this token, as the original does)."""
    return object_token_ids(tokenizer, word)[0]
