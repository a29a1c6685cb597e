"""Over many traces: the average indirect effect per layer for the six token groups of the ROME paper (Fig. 2), the
average change of attention knockouts, and how an estimated trace agrees with the exact one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from src.edit.tracing.results import KnockoutResult, TraceResult
from src.utils.errors import InputError
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


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of a 1-D array, tied values sharing the mean of their ranks."""
    values = np.asarray(values)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, ranks) / counts)[inverse]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long 1-D arrays (NaN if either is constant)."""
    x, y = average_ranks(a), average_ranks(b)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


@dataclass(frozen=True)
class Agreement:
    """How well an estimated trace (attribution) agrees with the exact one of the same fact and kind.

    rank_correlation: Spearman over the cells from the subject's first token on (before it both are the corrupted
    score by construction); best layers at `position` of each, and whether they are the same; max_difference: the
    largest |estimated - exact| indirect effect over those cells."""

    kind: str
    rank_correlation: float
    exact_best_layer: int
    estimated_best_layer: int
    max_difference: float
    position: str = "last"

    @property
    def same_best_layer(self) -> bool:
        return self.exact_best_layer == self.estimated_best_layer

    def to_dict(self) -> dict:
        return {"kind": self.kind, "rank_correlation": self.rank_correlation, "exact_best_layer": self.exact_best_layer,
                "estimated_best_layer": self.estimated_best_layer, "same_best_layer": self.same_best_layer,
                "max_difference": self.max_difference, "position": self.position}


def agreement(exact: TraceResult, estimated: TraceResult, position: str = "last") -> Agreement:
    """Compare two traces of one fact, kind, window and metric (e.g. method exact and attribution)."""
    for name in ("prompt", "kind", "window", "metric"):
        if getattr(exact, name) != getattr(estimated, name):
            raise InputError(f"agreement compares traces of one prompt, kind, window and metric; the {name} is "
                             f"'{getattr(exact, name)}' in one and '{getattr(estimated, name)}' in the other")
    b = exact.subject_range[0]
    cells_exact, cells_estimated = exact.indirect_effect[b:].ravel(), estimated.indirect_effect[b:].ravel()
    return Agreement(kind=exact.kind, rank_correlation=rank_correlation(cells_exact, cells_estimated),
                     exact_best_layer=exact.best_layer(position), estimated_best_layer=estimated.best_layer(position),
                     max_difference=float(np.abs(cells_exact - cells_estimated).max()), position=position)


@dataclass(frozen=True)
class MeanAgreement:
    """Agreement over many facts of one kind: mean rank correlation (facts where it is undefined left out; None if
    none), share of facts with the same best layer (None without facts)."""

    num_facts: int
    mean_rank_correlation: float | None
    same_best_layer: float | None

    def to_dict(self) -> dict:
        return {"num_facts": self.num_facts, "mean_rank_correlation": self.mean_rank_correlation,
                "same_best_layer": self.same_best_layer}


def mean_agreement(agreements: Sequence[Agreement]) -> MeanAgreement:
    correlations = [a.rank_correlation for a in agreements if not np.isnan(a.rank_correlation)]
    return MeanAgreement(len(agreements), float(np.mean(correlations)) if correlations else None,
                         float(np.mean([a.same_best_layer for a in agreements])) if agreements else None)


def average_knockout(results: Sequence[KnockoutResult]) -> dict[str, GroupEffect]:
    """{target: mean and 95% half-interval per layer of the change of p(answer)} over knockouts of one window."""
    if not results:
        raise ValueError("average_knockout needs at least one result")
    averages = {}
    for target in results[0].scores:
        mean, ci95 = mean_and_ci95(np.stack([r.change(target) for r in results]).astype(np.float64))
        averages[target] = GroupEffect(mean=mean, ci95=ci95, count=len(results))
    return averages
