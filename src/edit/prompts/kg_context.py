"""What an edit needs to know about the KG, read from its corpus: facts, relation aliases, context prefixes.

With a `FactSplit` it holds only the facts a method may use (the allowed side); the evaluator scores the rest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.kg.corpus import parse_sentence, require_corpus_file
from src.kg.graph import Fact
from src.kg.split import FactSplit
from src.utils.errors import InputError

PREFIX_SEPARATOR = " ; "


@dataclass(frozen=True)
class KGContext:
    """Bare facts of the corpus (`s r o` lines with a relation, not an alias; only the allowed ones under `split`)
    and the relation -> alias map."""

    facts: tuple[Fact, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    _by_subject: dict[str, tuple[Fact, ...]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[Fact]] = {}
        for fact in self.facts:
            grouped.setdefault(fact.s, []).append(fact)
        object.__setattr__(self, "_by_subject", {s: tuple(fs) for s, fs in grouped.items()})

    @classmethod
    def from_corpus(cls, corpus_path: str | Path, split: FactSplit | None = None) -> "KGContext":
        """Read `corpus.train.txt` (and `meta.json` beside it for the aliases, when present); with `split`, keep
        the facts it allows."""
        corpus_path = require_corpus_file(corpus_path)
        meta_path = corpus_path.parent / "meta.json"
        aliases = json.loads(meta_path.read_text()).get("relation_aliases", {}) if meta_path.is_file() else {}
        alias_tokens = set(aliases.values())
        seen: dict[tuple[str, str], Fact] = {}
        for line_number, line in enumerate(corpus_path.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            try:
                facts = parse_sentence(line)
            except ValueError:
                raise InputError(f"{corpus_path}:{line_number}: not a KG sentence ('s r o' separated by ' ; '): {line[:80]!r}") from None
            for fact in facts:
                if fact.r not in alias_tokens:
                    seen.setdefault((fact.s, fact.r), fact)
        facts = tuple(seen[k] for k in sorted(seen))
        return cls(facts=split.allowed(facts) if split else facts, aliases=dict(aliases))

    def facts_of(self, subject: str) -> tuple[Fact, ...]:
        return self._by_subject.get(subject, ())

    def object_of(self, s: str, r: str) -> str | None:
        for fact in self.facts_of(s):
            if fact.r == r:
                return fact.o
        return None

    def sample_facts(self, n: int, rng: np.random.Generator, exclude_subjects: set[str] = frozenset(),
                     exclude_pairs: set[tuple[str, str]] = frozenset()) -> list[Fact]:
        """Up to n distinct facts whose subject and (s, r) pair are not excluded."""
        pool = [i for i, f in enumerate(self.facts) if f.s not in exclude_subjects and (f.s, f.r) not in exclude_pairs]
        picked = rng.choice(len(pool), size=min(n, len(pool)), replace=False) if pool else []
        return [self.facts[pool[i]] for i in picked]


def prefix_text(fact: Fact) -> str:
    """A KG fact as a context prefix, in the corpus' chain format: `"E_417 R_02 E_077 ; "`."""
    return fact.sentence() + PREFIX_SEPARATOR
