"""Load YAML into typed dataclasses; an unknown key is an error that names it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from src.utils.errors import InputError

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"config {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


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
