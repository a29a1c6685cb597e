"""A directory of tensor files that check themselves: damaged entries heal, the directory stays within a size limit.

Each entry `<root>/<key>.pt` holds its key, its tensors, their shapes and dtypes, a sha256 of their bytes and a
description (what the entry is for, shown by `entries()`). A load that fails, or finds another key, other shapes or
dtypes, or bytes that do not match the checksum, warns in one line, removes the entry and returns None, so that the
caller recomputes and stores it again. Stores are atomic (a temporary file renamed onto the entry), so two processes
storing one entry at once leave one good file. The file's modification time is its last use (a load touches it);
after each store, the least recently used entries are removed until the directory fits `limit_bytes`.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import torch

from src.utils.errors import InputError
from src.utils.io import atomic_path

FORMAT = 1
DEFAULT_LIMIT = "8G"
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class CacheWarning(UserWarning):
    """A cache entry could not be used and is recomputed."""


def parse_size(text: str) -> int:
    """Bytes of a size such as "500M", "8G", "1.5T" or "1048576" (binary units); "0" or "none": no limit (0)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:([KMGT])(?:i?B)?|B)?\s*", str(text), flags=re.IGNORECASE)
    if str(text).strip().lower() == "none":
        return 0
    if match is None:
        raise InputError(f"cache size limit '{text}' is not a size; allowed: a number of bytes with an optional unit "
                         "K, M, G or T (e.g. 500M, 8G), or none")
    return int(float(match.group(1)) * UNITS[(match.group(2) or "").upper()])


def checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        data = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One entry as listed: key, file, size in bytes, last use and creation (Unix seconds), description; `damaged`
    names why it could not be read (None when it reads)."""

    key: str
    path: str
    size_bytes: int
    last_used: float
    created: float | None
    description: dict
    damaged: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class TensorCache:
    """Checked tensor files under `root`. limit_bytes: the most the directory holds after a store (0: no limit)."""

    def __init__(self, root: str | os.PathLike, limit_bytes: int = 0) -> None:
        self.root, self.limit_bytes = Path(root), int(limit_bytes)

    def path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9A-Za-z_.-]+", key) or key.startswith("."):
            raise InputError(f"cache key '{key}' is not a plain file name; allowed: letters, digits, _ . -")
        return self.root / f"{key}.pt"

    def load(self, key: str, expected: Mapping[str, tuple[tuple[int, ...] | None, torch.dtype]] | None = None
             ) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when there is none or it is damaged (then it is removed, with a warning).
        expected: name -> (shape or None for any, dtype) that the entry must hold."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = self._read(path, key, expected)
        except Exception as exc:  # a damaged file can fail in any of torch.load's ways
            warnings.warn(f"cache entry {path} cannot be used ({_reason(exc)}); it is recomputed", CacheWarning,
                          stacklevel=2)
            _remove(path)
            return None
        _touch(path)
        return tensors

    def store(self, key: str, tensors: Mapping[str, torch.Tensor], description: Mapping | None = None) -> Path:
        """Write the entry atomically (replacing any), then evict least recently used entries over the limit."""
        path = self.path(key)
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        payload = {"format": FORMAT, "key": key, "tensors": tensors, "checksum": checksum(tensors),
                   "meta": {name: [list(t.shape), str(t.dtype)] for name, t in tensors.items()},
                   "description": dict(description or {}), "created": time.time()}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        self.evict(keep=path)
        return path

    def _files(self) -> list[tuple[Path, os.stat_result]]:
        """(path, stat) of every entry file, least recently used first."""
        found = []
        for path in self.root.glob("*.pt") if self.root.is_dir() else ():
            try:
                found.append((path, path.stat()))
            except FileNotFoundError:  # removed by another process meanwhile
                continue
        return sorted(found, key=lambda item: (item[1].st_mtime, item[0].name))

    def entries(self) -> list[CacheEntry]:
        """Every entry, least recently used first; unreadable ones are listed with `damaged` set."""
        listed = []
        for path, stat in self._files():
            created, description, damaged = None, {}, None
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                created, description = payload.get("created"), payload.get("description", {})
                if payload.get("format") != FORMAT or payload.get("key") != path.stem:
                    damaged = "not an entry of this cache format"
            except Exception as exc:
                damaged = _reason(exc)
            listed.append(CacheEntry(path.stem, str(path), stat.st_size, stat.st_mtime, created, description, damaged))
        return listed

    def clear(self, older_than_days: float | None = None) -> list[CacheEntry]:
        """Remove every entry, or those last used more than `older_than_days` ago, and the temporary files of
        stores that were killed (older than an hour); returns the entries removed."""
        if older_than_days is not None and older_than_days < 0:
            raise InputError(f"--older-than must be >= 0 days, got {older_than_days}")
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        removed = [e for e in self.entries() if cutoff is None or e.last_used < cutoff]
        for entry in removed:
            _remove(Path(entry.path))
        for stale in self.root.glob(".*.pt.*.tmp") if self.root.is_dir() else ():
            try:
                if stale.stat().st_mtime < time.time() - 3600:  # younger ones may be a store going on
                    _remove(stale)
            except FileNotFoundError:
                pass
        return removed

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries (never `keep`) until the directory fits the limit; returns their
        paths."""
        if self.limit_bytes <= 0:
            return []
        files = self._files()
        total = sum(stat.st_size for _, stat in files)
        removed = []
        for path, stat in files:
            if total <= self.limit_bytes:
                break
            if path != keep:
                _remove(path)
                total -= stat.st_size
                removed.append(path)
        return removed

    @staticmethod
    def _read(path: Path, key: str, expected) -> dict[str, torch.Tensor]:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError("not an entry of this cache format")
        if payload.get("key") != key:
            raise ValueError(f"it holds key {payload.get('key')}")
        tensors = payload["tensors"]
        for name, (shape, dtype) in (expected or {}).items():
            found = tensors.get(name)
            if found is None or (shape is not None and tuple(found.shape) != tuple(shape)) or found.dtype != dtype:
                what = "missing" if found is None else f"{tuple(found.shape)} {found.dtype}"
                raise ValueError(f"{name} is {what}, expected {'any shape' if shape is None else tuple(shape)} {dtype}")
        if checksum(tensors) != payload.get("checksum"):
            raise ValueError("its bytes do not match its checksum")
        return tensors


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # a read-only cache still serves loads
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # a read-only cache: the entry stays, and is recomputed each time it is needed
        warnings.warn(f"cache entry {path} cannot be removed ({exc.strerror or exc})", CacheWarning, stacklevel=3)
