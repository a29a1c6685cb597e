"""What an evaluation reports of a metric over edits: a mean with a 95% interval that means something.

Proportions across edits (efficacy: one yes/no per edit) get Wilson's interval; means of per-edit values (shares
of an edit's prompts, margins, retention drops) a percentile bootstrap over edits; a difference between two methods
run on the same requests a paired bootstrap over those requests (`src.utils.intervals`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from src.utils.intervals import bootstrap_interval, paired_bootstrap_interval, wilson_interval


@dataclass(frozen=True)
class Estimate:
    """mean over n values and its 95% interval [low, high]; interval names how it was made (wilson, bootstrap,
    paired bootstrap; none, with mean, low and high None, for n = 0)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    interval: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Estimate":
        return cls(**data)

    def excludes(self, value: float) -> bool:
        """Whether the interval leaves `value` out (a difference with 0 outside is detected; False for n = 0)."""
        return self.n > 0 and not self.low <= value <= self.high

    def __str__(self) -> str:
        return "n/a" if self.n == 0 else f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


NOTHING = Estimate(None, None, None, 0, "none")


def _present(values: Iterable[float | bool | None]) -> list:
    return [v for v in values if v is not None]


def proportion(values: Iterable[bool | None]) -> Estimate:
    """Share of True among the measured values (None: not measured), with Wilson's interval."""
    data = _present(values)
    if not data:
        return NOTHING
    successes = sum(bool(v) for v in data)
    low, high = wilson_interval(successes, len(data))
    return Estimate(successes / len(data), low, high, len(data), "wilson")


def mean(values: Iterable[float | bool | None], seed: int = 0) -> Estimate:
    """Mean of the measured values with a seeded percentile-bootstrap interval over them."""
    data = np.array([float(v) for v in _present(values)], dtype=np.float64)
    if len(data) == 0:
        return NOTHING
    low, high = bootstrap_interval(data, seed)
    return Estimate(float(data.mean()), low, high, len(data), "bootstrap")


def paired_difference(a: Sequence[float | bool | None], b: Sequence[float | bool | None], seed: int = 0) -> Estimate:
    """mean(a - b) over the units measured in both (a[i] and b[i] are one unit: the same request), with a paired
    bootstrap interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one per unit in both, got {len(a)} and {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return NOTHING
    x, y = np.array(pairs).T
    difference, low, high = paired_bootstrap_interval(x, y, seed)
    return Estimate(difference, low, high, len(pairs), "paired bootstrap")
