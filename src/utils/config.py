"""Load YAML into typed dataclasses; an unknown key is an error that names it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from src.utils.errors import InputError

T = TypeVar("T")


def read_yaml(path: str | Path, path_keys: Sequence[str] = (), _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping. `base: FILE` (relative to this file) names a file whose keys this one overlays: mappings are
    merged key by key, anything else (null included) replaces the base's value. Top-level `path_keys` holding
    relative paths are resolved from the file that sets them."""
    path = Path(path)
    if path.resolve() in _chain:
        raise InputError(f"config {path} is its own base: {' -> '.join(str(p) for p in _chain + (path.resolve(),))}")
    if not path.is_file():
        overlay = f" (the base of {_chain[-1]})" if _chain else ""
        raise InputError(f"config file not found: {path}{overlay}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"config {path} must be a mapping of keys to values, got {type(data).__name__}")
    for key in path_keys:
        if isinstance(data.get(key), str):
            data[key] = str(resolve_relative_to(path, data[key]))
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise InputError(f"base in {path} must be a file name, got {base!r}")
    return merge_overlay(read_yaml(resolve_relative_to(path, base), path_keys, _chain + (path.resolve(),)), data)


def merge_overlay(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overlay`'s keys on top; mappings are merged recursively."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def dataclass_from_mapping(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build dataclass `cls` from `data`; unknown keys raise InputError naming the key and the allowed ones."""
    allowed = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(f"unknown config key '{unknown[0]}' in {where}; allowed keys: {', '.join(sorted(allowed))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise InputError(f"bad config in {where}: {exc}") from None


def resolve_relative_to(base_file: str | Path, value: str | Path) -> Path:
    """Paths inside a config file are relative to that file's directory, never to the working directory."""
    value = Path(value)
    return value if value.is_absolute() else (Path(base_file).resolve().parent / value).resolve()


def load_dataclass(cls: type[T], source: Any, base: Mapping[str, Any] | None = None) -> T:
    """`cls` from an instance (returned as is), a dict, a YAML path, or None (the defaults); the keys of `base` are
    defaults that `source` may override. Unknown keys raise InputError naming the key and where it came from."""
    if isinstance(source, cls):
        return source
    if source is not None and not isinstance(source, (Mapping, str, Path)):
        raise InputError(f"hparams must be a path to YAML, a dict or {cls.__name__}, got {type(source).__name__}")
    given = read_yaml(source) if isinstance(source, (str, Path)) else dict(source or {})
    where = str(source) if isinstance(source, (str, Path)) else "hparams"
    return dataclass_from_mapping(cls, {**(base or {}), **given}, where)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`["v_stop_prob=0.99", "layers=[0, 1]"]` -> {"v_stop_prob": 0.99, "layers": [0, 1]}: each value read as YAML."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected KEY=VALUE, got '{item}'")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
