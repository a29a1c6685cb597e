"""Prompts for facts and where the subject sits in them, for any Hugging Face tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from src.kg.graph import query_text
from src.lm.token_ids import first_token_id, object_token_ids, starts_with_bos
from src.utils.errors import InputError


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of `"{s} {r}"` (optionally behind a context prefix) and the subject's token range [b, e)."""

    text: str
    input_ids: tuple[int, ...]
    subject_range: tuple[int, int]

    @property
    def last_subject_index(self) -> int:
        return self.subject_range[1] - 1

    def followed_by(self, token_ids: tuple[int, ...]) -> "EncodedPrompt":
        """The prompt with `token_ids` appended (a target's first pieces, teacher-forced); `text` stays the prompt's."""
        return EncodedPrompt(text=self.text, input_ids=self.input_ids + tuple(token_ids), subject_range=self.subject_range)


def check_known_words(tokenizer: PreTrainedTokenizerBase, **named_words: str | None) -> None:
    """Raise InputError when a word maps to the unknown token, e.g. `check_known_words(tok, entity="E_1234")`."""
    unk = tokenizer.unk_token_id
    for role, word in named_words.items():
        if word is None:
            continue
        if not word or not word.strip():
            raise InputError(f"empty {role}")
        if unk is not None and unk in tokenizer(word, add_special_tokens=False)["input_ids"]:
            raise InputError(f"unknown {role} '{word}': the tokenizer does not know it")


def encode_fact_prompt(tokenizer: PreTrainedTokenizerBase, s: str, r: str, prefix: str = "",
                       bos: bool | None = None) -> EncodedPrompt:
    """Encode `prefix + "{s} {r}"` and find the subject's tokens from character offsets (multi-token subjects work).
    `bos`: put BOS first (None: when the tokenizer adds one, see `starts_with_bos`); the subject range counts it."""
    check_known_words(tokenizer, subject=s, relation=r)
    text = prefix + query_text(s, r)
    start, end = len(prefix), len(prefix) + len(s)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    covered = [i for i, (a, b) in enumerate(encoding["offset_mapping"]) if a < end and b > start]
    if not covered:
        raise InputError(f"subject '{s}' does not occur in the tokenized prompt {text!r}")
    shift = int(starts_with_bos(tokenizer) if bos is None else bos)
    if shift:
        ids = [tokenizer.bos_token_id] + ids
    return EncodedPrompt(text=text, input_ids=tuple(ids), subject_range=(covered[0] + shift, covered[-1] + 1 + shift))


def answer_token_id(tokenizer: PreTrainedTokenizerBase, obj: str) -> int:
    """Token id of the object as the next token after the prompt (its first token for subword tokenizers: causal
    tracing scores the first token, as the original does)."""
    check_known_words(tokenizer, object=obj)
    return first_token_id(tokenizer, obj)


def single_token_id(tokenizer: PreTrainedTokenizerBase, word: str, role: str = "target") -> int:
    """The one token of ` word`, for FT, MEMIT and the edit evaluation, which rewrite and score one next token; a
    word of several tokens (a subword tokenizer's entity) is an InputError naming its pieces. (ROME and causal
    tracing take objects of any length.)"""
    check_known_words(tokenizer, **{role: word})
    ids = object_token_ids(tokenizer, word)
    if len(ids) != 1:
        pieces = " ".join(tokenizer.convert_ids_to_tokens(ids))
        raise InputError(f"{role} '{word}' is {len(ids)} tokens with this tokenizer ({pieces}); FT, MEMIT and the "
                         "edit evaluation need one-token objects (ROME edits multi-token targets: run_editing.sh)")
    return ids[0]
