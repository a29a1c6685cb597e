"""The training corpus: one sentence per line.

Line kinds (all deterministic from the seed):
- every fact once, bare: `E_000 R_04 E_001`;
- for a fraction of facts, the same fact with the relation's alias: `E_000 R_04_alt E_001` (a paraphrase);
- chain lines of several random facts: `E_000 R_04 E_001 ; E_417 R_02 E_077`, so a fact behind a context prefix
  is in distribution (the context prefixes of ROME's k*/v* and of generalization tests).
A sentence is a `;`-separated list of `s r o` triples; `parse_sentence` recovers them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.kg.generate import CorpusConfig
from src.kg.graph import Fact, KnowledgeGraph
from src.utils.errors import InputError
from src.utils.io import atomic_write_text


def relation_aliases(relations: tuple[str, ...] | list[str], config: CorpusConfig) -> dict[str, str]:
    """Relation -> its alias token (`R_04` -> `R_04_alt`); empty when the corpus uses no aliases."""
    if config.alias_fraction <= 0:
        return {}
    return {r: f"{r}{config.alias_suffix}" for r in relations}


def build_corpus(graph: KnowledgeGraph, config: CorpusConfig, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, 1])
    facts = list(graph.facts)
    aliases = relation_aliases(graph.relations, config)
    lines = [fact.sentence() for fact in facts]
    if aliases:
        n_alias = int(round(config.alias_fraction * len(facts)))
        for i in sorted(rng.choice(len(facts), size=n_alias, replace=False).tolist()):
            fact = facts[i]
            lines.append(Fact(fact.s, aliases[fact.r], fact.o).sentence())
    n_chain = int(round(config.chain_lines_per_fact * len(facts)))
    joiner = f" {config.separator} "
    for _ in range(n_chain):
        picked = rng.choice(len(facts), size=config.chain_length, replace=False)
        lines.append(joiner.join(facts[i].sentence() for i in picked.tolist()))
    order = rng.permutation(len(lines))
    return [lines[i] for i in order.tolist()]


def write_corpus(lines: list[str], path: str | Path) -> None:
    atomic_write_text(path, "\n".join(lines) + "\n")


def require_corpus_file(path: str | Path) -> Path:
    """`path` as a Path; InputError (the usage guide's "Corpus file not found") when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Corpus file not found: {path}", missing="kg")
    return path


def read_corpus(path: str | Path) -> list[str]:
    path = require_corpus_file(path)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def parse_sentence(line: str, separator: str = ";") -> list[Fact]:
    """`"a r b ; c q d"` -> [Fact(a, r, b), Fact(c, q, d)]; raises ValueError if a segment is not three words."""
    facts = []
    for segment in line.split(f" {separator} "):
        words = segment.split()
        if len(words) != 3:
            raise ValueError(f"segment {segment!r} is not 's r o'")
        facts.append(Fact(*words))
    return facts
