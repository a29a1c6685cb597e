"""python -m src.cli.cache list|clear [--older-than DAYS] [--cache-dir DIR]

The key-statistics cache ($KG_ROME_CACHE/mom2, default ~/.cache/kg_rome/mom2; at most $KG_ROME_CACHE_LIMIT, default
8G, least recently used entries evicted first): `list` shows each entry (size, last use, model, layer, corpus,
source), `clear` removes all of them, or those last used more than DAYS ago.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from src.cli.common import run_cli
from src.edit.rank_one.key_statistics import statistics_cache


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List or clear the key-statistics cache.")
    parser.add_argument("action", choices=["list", "clear"])
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $KG_ROME_CACHE or ~/.cache/kg_rome)")
    parser.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                        help="clear: only entries last used more than DAYS ago")
    args = parser.parse_args(argv)
    cache = statistics_cache(args.cache_dir)
    if args.action == "clear":
        removed = cache.clear(args.older_than)
        freed = sum(e.size_bytes for e in removed)
        print(f"removed {len(removed)} entries ({_size(freed)}) from {cache.root}")
        return 0
    entries = cache.entries()
    total = sum(e.size_bytes for e in entries)
    limit = _size(cache.limit_bytes) if cache.limit_bytes else "none"
    print(f"{cache.root}: {len(entries)} entries, {_size(total)} (limit {limit})")
    now = time.time()
    for entry in reversed(entries):  # most recently used first
        d = entry.description
        what = (f"damaged: {entry.damaged}" if entry.damaged else
                f"model {d.get('model') or '?'} (weights {d.get('weights_sha256', '?')}) layer {d.get('layer')} "
                f"source {d.get('source')} corpus {Path(str(d.get('corpus', '?'))).name} keys {d.get('num_keys')}")
        print(f"  {entry.key}  {_size(entry.size_bytes):>10}  used {(now - entry.last_used) / 86400:5.1f} days ago  "
              f"{what}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
