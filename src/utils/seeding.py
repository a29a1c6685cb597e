"""Seeds for per-item random draws that do not depend on the order items come in."""

from __future__ import annotations

import hashlib


def stable_words(*parts: object) -> list[int]:
    """Four 32-bit words hashed from `parts` (their text), for numpy's default_rng: the same item gets the same
    draw in every process and run (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=16).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
