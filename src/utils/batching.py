"""Grouping sequences by length, so that a batch needs no padding."""

from __future__ import annotations

from typing import Hashable, Sequence


def batches_by_key(keys: Sequence[Hashable], batch_size: int | None = None) -> list[list[int]]:
    """Indices of `keys` grouped by equal key (groups in order of first appearance, indices in order), each group cut
    into runs of at most `batch_size` (None: whole groups). With keys = token lengths, every batch is one length."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    if batch_size is None:
        return list(groups.values())
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]
