"""Edit evaluation: counterfactual edit requests drawn from a KG, and means with 95% intervals over many edits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from src.kg.graph import Fact, KnowledgeGraph
from src.utils.intervals import mean_and_ci95


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


@dataclass(frozen=True)
class MeanInterval:
    """Mean and 95% half-interval (`src.utils.intervals.mean_and_ci95`) over n values."""

    mean: float
    ci95: float
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": self.ci95, "n": self.n}

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.ci95:.3f}"


def mean_interval(values: Iterable[float | bool | None]) -> MeanInterval:
    """None values (nothing measured) are left out."""
    data = np.array([float(v) for v in values if v is not None], dtype=np.float64)
    if len(data) == 0:
        return MeanInterval(float("nan"), float("nan"), 0)
    mean, ci95 = mean_and_ci95(data)
    return MeanInterval(float(mean), float(ci95), len(data))
