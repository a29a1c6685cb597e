"""The KG tokenizers, plus <pad>, <unk>, <bos>, <eos>; optionally (`bos=True`) with a template that starts every text
with <bos>, as Llama's tokenizers do.

- `build_word_tokenizer`: one token per entity, relation and alias (the default).
- `build_bpe_tokenizer`: a small byte-pair encoding trained on the corpus, so entity names split into subword pieces
  (`E_417` -> `▁E_41 7`) and subjects have first/middle/last tokens as in the paper. Pieces never cross a space
  (Metaspace pre-tokenizer), so every word is a run of whole tokens.

Both are Hugging Face fast tokenizers, saved beside the model, so `AutoTokenizer.from_pretrained(model_dir)` loads them.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from src.utils.errors import InputError

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}
TOKENIZER_KINDS = ("word", "bpe")


def build_word_tokenizer(words: Iterable[str], bos: bool = False) -> PreTrainedTokenizerFast:
    """Vocabulary = the special tokens, then the sorted distinct words (ids are deterministic). `bos`: encoding with
    special tokens puts <bos> first (training, prompts and statistics then all start with it)."""
    vocab: dict[str, int] = {}
    for token in list(SPECIAL_TOKENS.values()) + sorted(set(words)):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return _wrap(backend, bos)


def build_bpe_tokenizer(lines: Iterable[str], vocab_size: int, bos: bool = False) -> PreTrainedTokenizerFast:
    """BPE with `vocab_size` tokens (special tokens included) trained on `lines`; deterministic for the same lines."""
    lines = list(lines)
    alphabet = sorted({char for line in lines for char in line if not char.isspace()})
    minimum = len(SPECIAL_TOKENS) + len(alphabet) + 1  # + the Metaspace marker
    if vocab_size < minimum:
        raise InputError(f"vocab_size {vocab_size} is too small for this corpus: at least {minimum} "
                         f"(special tokens and {len(alphabet)} characters)")
    backend = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator(lines, trainer)
    return _wrap(backend, bos)


def build_kg_tokenizer(kind: str, lines: list[str], words: Iterable[str], vocab_size: int = 0,
                       bos: bool = False) -> PreTrainedTokenizerFast:
    """`kind` "word" (vocabulary = `words`) or "bpe" (trained on `lines`, `vocab_size` tokens)."""
    if kind == "word":
        return build_word_tokenizer(words, bos=bos)
    if kind == "bpe":
        return build_bpe_tokenizer(lines, vocab_size, bos=bos)
    raise InputError(f"unknown tokenizer kind '{kind}'; allowed: {', '.join(TOKENIZER_KINDS)}")


def _wrap(backend: Tokenizer, bos: bool) -> PreTrainedTokenizerFast:
    if bos:
        token = SPECIAL_TOKENS["bos_token"]
        backend.post_processor = processors.TemplateProcessing(single=f"{token} $A", pair=f"{token} $A $B",
                                                               special_tokens=[(token, backend.token_to_id(token))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def corpus_words(lines: Iterable[str]) -> set[str]:
    return {word for line in lines for word in line.split()}
