"""A seeded split of a KG's facts into those an editing method may use and those only the evaluator sees.

Membership hashes (seed, s, r), so it depends on nothing but the fact and the seed: the same split for every
method, the evaluator, the statistics and any subset of the KG, in any order, on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from src.kg.graph import Fact
from src.utils.errors import InputError
from src.utils.seeding import stable_words


@dataclass(frozen=True)
class FactSplit:
    """Fact (s, r) is allowed (a method may use it: KL prompts, context prefixes, fact-prompt statistics) with
    probability `allowed_fraction`, else held out (scored by the evaluator only)."""

    seed: int = 0
    allowed_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"split seed must be an integer, got {self.seed!r}")
        if not 0.0 < self.allowed_fraction < 1.0:
            raise InputError(f"allowed fraction must be in (0, 1), got {self.allowed_fraction}")

    def allows(self, s: str, r: str) -> bool:
        words = stable_words("fact-split", self.seed, s, r)
        return (words[0] + (words[1] << 32)) / 2.0**64 < self.allowed_fraction

    def allowed(self, facts: Iterable[Fact]) -> tuple[Fact, ...]:
        return tuple(f for f in facts if self.allows(f.s, f.r))

    def held_out(self, facts: Iterable[Fact]) -> tuple[Fact, ...]:
        return tuple(f for f in facts if not self.allows(f.s, f.r))

    def key(self) -> str:
        """Names the split in cache keys."""
        return f"split={self.seed}:{self.allowed_fraction!r}"

    def to_dict(self) -> dict:
        return {"seed": self.seed, "allowed_fraction": self.allowed_fraction}
