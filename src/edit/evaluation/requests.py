"""Counterfactual edit requests drawn from a KG."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from src.kg.graph import Fact, KnowledgeGraph


@dataclass(frozen=True)
class EditRequest:
    """Rewrite `s r` from its true object `o` to `target` (target != o)."""

    s: str
    r: str
    o: str
    target: str

    def to_dict(self) -> dict:
        return {"s": self.s, "r": self.r, "o": self.o, "target": self.target}


def draw_requests(graph: KnowledgeGraph, n: int, seed: int, facts: Sequence[Fact] | None = None) -> list[EditRequest]:
    """n counterfactual requests over distinct facts (of `facts`, default all), targets uniform over other entities."""
    rng = np.random.default_rng([seed, 11])
    pool = list(facts if facts is not None else graph.facts)
    picked = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    requests = []
    for index in picked.tolist():
        fact = pool[index]
        target = fact.o
        while target == fact.o or target == fact.s:
            target = graph.entities[int(rng.integers(len(graph.entities)))]
        requests.append(EditRequest(fact.s, fact.r, fact.o, target))
    return requests
