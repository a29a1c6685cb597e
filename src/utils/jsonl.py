"""JSON-lines files written as work finishes: every line appended whole and synced, a torn last line cut off.

A line is appended with one `write` on a file opened for appending (processes appending to one file do not
interleave lines) and synced to disk before `append` returns, so a run killed at any point leaves complete lines
and at most one torn line at the end, which `cut_torn_tail` removes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


def append(path: str | os.PathLike, items: Iterable[dict[str, Any]]) -> int:
    """Append one JSON line per item and fsync; returns how many were written."""
    data = b"".join((json.dumps(item) + "\n").encode("utf-8") for item in items)
    if not data:
        return 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # one write in practice; a short write (a full disk, a signal) goes on from where it stopped
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return data.count(b"\n")


def cut_torn_tail(path: str | os.PathLike) -> int:
    """Truncate `path` after its last complete line (one that ends in a newline and parses as JSON); returns the
    number of bytes cut."""
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    keep = len(data)
    while keep:
        start = data.rfind(b"\n", 0, keep - 1) + 1
        line = data[start:keep]
        if line.endswith(b"\n") and _parses(line):
            break
        keep = start
    if keep < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    return len(data) - keep


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False
