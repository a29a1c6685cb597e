"""Facts and knowledge graphs; reading and writing `graph.jsonl` (one `{"s", "r", "o"}` object per line)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from src.utils.errors import InputError
from src.utils.io import atomic_write_text


PROMPT_TEMPLATE = "{s} {r}"  # the query whose next word is the object, as the corpus writes facts


def query_text(s: str, r: str) -> str:
    """The query of subject `s` and relation `r` (an alias works as `r` too): `"{s} {r}"`."""
    return PROMPT_TEMPLATE.format(s=s, r=r)


@dataclass(frozen=True, order=True)
class Fact:
    """One triple (subject, relation, object)."""

    s: str
    r: str
    o: str

    def prompt(self) -> str:
        """The query the model completes with the object: `"{s} {r}"`."""
        return query_text(self.s, self.r)

    def sentence(self) -> str:
        return f"{self.s} {self.r} {self.o}"

    def to_dict(self) -> dict[str, str]:
        return {"s": self.s, "r": self.r, "o": self.o}


@dataclass(frozen=True)
class KnowledgeGraph:
    """A set of functional facts: each (s, r) has exactly one object."""

    facts: tuple[Fact, ...]
    entities: tuple[str, ...]
    relations: tuple[str, ...]
    _objects: dict[tuple[str, str], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        objects: dict[tuple[str, str], str] = {}
        for fact in self.facts:
            previous = objects.setdefault((fact.s, fact.r), fact.o)
            if previous != fact.o:
                raise InputError(f"({fact.s}, {fact.r}) has two objects, {previous} and {fact.o}; relations must be functional")
        object.__setattr__(self, "_objects", objects)

    @classmethod
    def from_facts(cls, facts: Iterable[Fact]) -> "KnowledgeGraph":
        facts = tuple(facts)
        entities = sorted({f.s for f in facts} | {f.o for f in facts})
        relations = sorted({f.r for f in facts})
        return cls(facts=facts, entities=tuple(entities), relations=tuple(relations))

    def object_of(self, s: str, r: str) -> str | None:
        return self._objects.get((s, r))

    def facts_of_subject(self) -> dict[str, list[Fact]]:
        grouped: dict[str, list[Fact]] = defaultdict(list)
        for fact in self.facts:
            grouped[fact.s].append(fact)
        return dict(grouped)

    def __len__(self) -> int:
        return len(self.facts)


def write_graph_jsonl(graph: KnowledgeGraph, path: str | Path) -> None:
    lines = [json.dumps(fact.to_dict()) for fact in graph.facts]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_graph_jsonl(path: str | Path) -> KnowledgeGraph:
    """Read and validate a graph file; any bad line raises InputError naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"KG file not found: {path}", missing="kg")
    facts: list[Fact] = []
    seen: dict[tuple[str, str], tuple[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_number}: malformed JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record.get(k) for k in "sro"):
                raise InputError(f'{path}:{line_number}: expected an object with string fields "s", "r", "o", got {line.strip()[:80]}')
            fact = Fact(record["s"], record["r"], record["o"])
            if any(len(part.split()) != 1 for part in (fact.s, fact.r, fact.o)):
                raise InputError(f"{path}:{line_number}: names must be single words without spaces, got {fact.sentence()!r}")
            previous = seen.get((fact.s, fact.r))
            if previous is not None and previous[0] != fact.o:
                raise InputError(
                    f"{path}:{line_number}: ({fact.s}, {fact.r}) has two objects, {previous[0]} (line {previous[1]}) "
                    f"and {fact.o}; relations must be functional"
                )
            if previous is None:
                seen[(fact.s, fact.r)] = (fact.o, line_number)
                facts.append(fact)
    if not facts:
        raise InputError(f"KG file {path} holds no facts")
    return KnowledgeGraph.from_facts(facts)
