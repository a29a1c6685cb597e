"""A word-level tokenizer: one token per entity, relation and alias, plus <pad>, <unk>, <bos>, <eos>; optionally
(`bos=True`) with a template that starts every text with <bos>, as Llama's tokenizers do.

It is a Hugging Face fast tokenizer, saved beside the model, so `AutoTokenizer.from_pretrained(model_dir)` loads it.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}


def build_word_tokenizer(words: Iterable[str], bos: bool = False) -> PreTrainedTokenizerFast:
    """Vocabulary = the special tokens, then the sorted distinct words (ids are deterministic). `bos`: encoding with
    special tokens puts <bos> first (training, prompts and statistics then all start with it)."""
    vocab: dict[str, int] = {}
    for token in list(SPECIAL_TOKENS.values()) + sorted(set(words)):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    if bos:
        token = SPECIAL_TOKENS["bos_token"]
        backend.post_processor = processors.TemplateProcessing(single=f"{token} $A", pair=f"{token} $A $B",
                                                               special_tokens=[(token, vocab[token])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def corpus_words(lines: Iterable[str]) -> set[str]:
    return {word for line in lines for word in line.split()}
