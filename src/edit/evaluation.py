"""Edit evaluation: counterfactual edit requests drawn from a KG, and means with 95% intervals over many edits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

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


@dataclass(frozen=True)
class MeanInterval:
    """Mean and 95% half-interval (1.96 standard errors) over n values."""

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
    sem = data.std(ddof=1) / np.sqrt(len(data)) if len(data) > 1 else 0.0
    return MeanInterval(float(data.mean()), float(1.96 * sem), len(data))


@dataclass(frozen=True)
class SequentialCheckpoint:
    """After `num_edits` in-place edits: KG fact accuracy (retention) and the share of past edits still top-1."""

    num_edits: int
    retention: float
    past_efficacy: float

    def to_dict(self) -> dict:
        return {"num_edits": self.num_edits, "retention": self.retention, "past_efficacy": self.past_efficacy}


def sequential_edits(rome, requests: Sequence[EditRequest], facts: Sequence[Fact], every: int,
                     progress: bool = True) -> list[SequentialCheckpoint]:
    """Apply `requests` one after another to `rome.model` in place; measure after every `every` edits.

    Retention is fact accuracy over `facts` minus the edited (s, r) pairs (they are meant to change).
    """
    from tqdm.auto import tqdm

    from src.lm.evaluate import fact_accuracy, predict_objects

    edited_pairs: set[tuple[str, str]] = set()
    checkpoints = [SequentialCheckpoint(0, fact_accuracy(rome.model, rome.tokenizer, list(facts)).accuracy, float("nan"))]
    for count, request in enumerate(tqdm(requests, desc="sequential edits", unit="edit", disable=not progress), start=1):
        rome.apply_edit(request.s, request.r, request.target, copy_model=False)
        edited_pairs.add((request.s, request.r))
        if count % every == 0 or count == len(requests):
            kept = [f for f in facts if (f.s, f.r) not in edited_pairs]
            past = requests[:count]
            predicted = predict_objects(rome.model, rome.tokenizer, [Fact(q.s, q.r, q.target) for q in past])
            efficacy = float(np.mean([p == q.target for p, q in zip(predicted, past)]))
            checkpoints.append(SequentialCheckpoint(count, fact_accuracy(rome.model, rome.tokenizer, kept).accuracy,
                                                    efficacy))
    return checkpoints
