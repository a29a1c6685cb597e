"""Average indirect effect over many traces, per layer, for the six token groups of the ROME paper (Fig. 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from src.edit.tracing.results import TraceResult
from src.utils.intervals import mean_and_ci95

TOKEN_GROUPS = ("first_subject", "middle_subject", "last_subject", "first_subsequent", "further", "last")


def token_group_effects(trace: TraceResult) -> dict[str, np.ndarray]:
    """Indirect effect (layers,) of each token group present in this prompt (middle / further: mean over tokens).

    With a one-token subject, first and last subject token are the same token; "first_subsequent" is the token
    right after the subject even when it is also the last token, as in the original analysis.
    """
    effect = trace.indirect_effect
    b, e = trace.subject_range
    T = effect.shape[0]
    groups = {"first_subject": effect[b], "last_subject": effect[e - 1], "last": effect[T - 1]}
    if e - b > 2:
        groups["middle_subject"] = effect[b + 1 : e - 1].mean(axis=0)
    if e < T:
        groups["first_subsequent"] = effect[e]
    if T - e > 2:
        groups["further"] = effect[e + 1 : T - 1].mean(axis=0)
    return groups


@dataclass(frozen=True)
class GroupEffect:
    """mean and 95% half-interval (`src.utils.intervals.mean_and_ci95`) per layer over `count` traces."""

    mean: np.ndarray = field(repr=False)
    ci95: np.ndarray = field(repr=False)
    count: int

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "ci95": self.ci95.tolist(), "count": self.count}


@dataclass(frozen=True)
class AverageEffects:
    kind: str
    window: int
    num_traces: int
    groups: dict[str, GroupEffect]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "window": self.window, "num_traces": self.num_traces,
                "groups": {name: g.to_dict() for name, g in self.groups.items()}}


def average_effects(traces: Sequence[TraceResult]) -> AverageEffects:
    """Aggregate traces of one kind (and window). Groups absent from every prompt are left out."""
    if not traces:
        raise ValueError("average_effects needs at least one trace")
    kinds = {(t.kind, t.window) for t in traces}
    if len(kinds) != 1:
        raise ValueError(f"traces mix kinds/windows {sorted(kinds)}; aggregate one kind at a time")
    collected: dict[str, list[np.ndarray]] = {name: [] for name in TOKEN_GROUPS}
    for trace in traces:
        for name, values in token_group_effects(trace).items():
            collected[name].append(values)
    groups = {}
    for name in TOKEN_GROUPS:
        if not collected[name]:
            continue
        stacked = np.stack(collected[name]).astype(np.float64)
        mean, ci95 = mean_and_ci95(stacked)
        groups[name] = GroupEffect(mean=mean, ci95=ci95, count=len(stacked))
    kind, window = kinds.pop()
    return AverageEffects(kind=kind, window=window, num_traces=len(traces), groups=groups)
