"""Calling one transformer block by hand, as the model called it, on all tokens or on a suffix of them.

A block of a causal LM computes token t from tokens <= t only. To recompute tokens first..T-1 alone, the block needs
the keys and values that its attention computed for tokens 0..first-1. `BlockCall` takes what a block was called with
(recorded by `hooks.RecordCall`), and gives the arguments for a suffix: position tensors sliced, an attention mask
for the suffix queries over all keys, and a stand-in for a transformers `Cache` that prepends the given keys and
values (`PrefixKeysValues`). Families whose block arguments hold a per-token tensor it does not know are refused
(`supports_suffix` is False) rather than guessed.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from src.edit.model.hooks import RecordCall, primary

CACHE_ARGUMENTS = ("cache", "past_key_values", "layer_past")  # what the block calls its Cache, by family / version
_SEQUENCE_ARGUMENTS = {"attention_mask", "position_ids", "position_embeddings", "cache_position"}


class PrefixKeysValues:
    """Stands in for a transformers `Cache` during one block call. Attention modules call
    `update(keys, values, layer_idx, ...)` with the keys and values of the tokens they see, (rows, heads, S, head
    dim), and attend over what it returns: those, after `prefix` (rows, heads, P, head dim) when given.
    `recorded` keeps what it returned."""

    def __init__(self, prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.prefix = prefix
        self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefix is not None:
            keys = torch.cat([self.prefix[0].to(keys.dtype), keys], dim=-2)
            values = torch.cat([self.prefix[1].to(values.dtype), values], dim=-2)
        self.recorded = (keys, values)
        return keys, values


def attention_takes_any_mask(model: nn.Module) -> bool:
    """A suffix call passes an additive (or the recorded, sliced) 4-D mask: eager and sdpa attention take one; flash
    and flex attention expect other mask types, so callers run every token instead."""
    return getattr(model.config, "_attn_implementation", None) in ("eager", "sdpa")


def cache_argument(module: nn.Module) -> str | None:
    """The name under which `module.forward` takes a transformers Cache, if it takes one."""
    parameters = inspect.signature(module.forward).parameters
    return next((name for name in CACHE_ARGUMENTS if name in parameters), None)


class RecordKeysValues(AbstractContextManager):
    """Record the keys and values each attention module computes during a forward (which runs without a cache):
    `with RecordKeysValues(attentions) as kv: model(x)`; then `kv.recorded[l]` = (keys, values), each (batch, kv
    heads, T, head dim), or `kv.recorded` is None if some module takes no cache argument or never called its
    `update`."""

    def __init__(self, attentions: Sequence[nn.Module]) -> None:
        names = [cache_argument(module) for module in attentions]
        self._caches = [PrefixKeysValues() for _ in attentions]
        self._handles = []
        if None in names:
            self._caches = None
            return
        for module, name, cache in zip(attentions, names, self._caches):
            def hook(_module, args, kwargs, name=name, cache=cache):
                return args, {**kwargs, name: cache}
            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    @property
    def recorded(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if self._caches is None or any(cache.recorded is None for cache in self._caches):
            return None
        return [cache.recorded for cache in self._caches]

    def __exit__(self, exc_type, exc, tb) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass(frozen=True)
class BlockCall:
    """The named arguments (besides the hidden states) one block of a model was called with, for prompts of
    `num_tokens` tokens; tensors with a batch dimension already cut to one row, which broadcasts."""

    arguments: dict
    cache_argument: str | None
    num_tokens: int

    @classmethod
    def bind(cls, block: nn.Module, args: tuple, kwargs: dict, num_tokens: int) -> "BlockCall":
        """From a recorded call `block(hidden, *args, **kwargs)`."""
        signature = inspect.signature(block.forward)
        bound = signature.bind(None, *args, **kwargs)
        arguments = {}
        for index, (name, value) in enumerate(bound.arguments.items()):
            kind = signature.parameters[name].kind
            if index == 0:
                continue  # the hidden states
            if kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = value
        return cls(arguments, cache_argument(block), num_tokens)

    @classmethod
    def from_record(cls, block: nn.Module, record: RecordCall, num_tokens: int, batch: int) -> "BlockCall":
        """From what `RecordCall` saw in a forward of `batch` rows that all hold the same context (mask, positions,
        rotary tables): row 0 of every tensor with a batch dimension is kept, and broadcasts over any rows."""
        args, kwargs = (record.args[1:], record.kwargs) if record.args else \
            ((), {k: v for k, v in record.kwargs.items() if k != "hidden_states"})
        return cls.bind(block, _first_row(args, batch), _first_row(kwargs, batch), num_tokens)

    @property
    def supports_suffix(self) -> bool:
        """True if every per-token argument is one this class knows how to slice, and the block takes a cache."""
        unknown = [name for name, value in self.arguments.items()
                   if name not in _SEQUENCE_ARGUMENTS and name != self.cache_argument
                   and per_token(value, self.num_tokens)]
        return self.cache_argument is not None and not unknown

    def __call__(self, block: nn.Module, hidden: torch.Tensor, first: int = 0,
                 prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """block(hidden) for tokens first..T-1 (hidden: rows x (T - first) x d); `prefix`: keys and values of tokens
        0..first-1 per row, (rows, kv heads, first, head dim) each."""
        if first == 0:
            return primary(block(hidden, **self.arguments))
        cache = PrefixKeysValues(prefix)
        output = primary(block(hidden, **self._suffix_arguments(first, cache, hidden.dtype)))
        if cache.recorded is None:
            raise RuntimeError(f"{type(block).__name__} did not pass its {self.cache_argument} to its attention; "
                               "trace with CausalTracer(..., suffix_replay=False)")
        return output

    def masked(self, block: nn.Module, hidden: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """block(hidden) on all T tokens (hidden: rows x T x d) with the attention edges `blocked` (rows, T queries,
        T keys; True: that query does not see that key) removed, on top of the mask the block was called with (the
        causal one where it was called with none). A query must keep at least one key."""
        T, dtype = self.num_tokens, hidden.dtype
        low = torch.finfo(dtype).min
        mask = self.arguments.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            additive = additive_mask(mask, dtype) if mask.dtype == torch.bool else mask.to(dtype)
        else:
            future = torch.ones(T, T, dtype=torch.bool, device=hidden.device).triu(1)
            additive = torch.zeros(T, T, dtype=dtype, device=hidden.device).masked_fill(future, low)[None, None]
        additive = additive[..., -T:, -T:].expand(len(hidden), 1, T, T).masked_fill(blocked[:, None], low)
        return primary(block(hidden, **{**self.arguments, "attention_mask": additive}))

    def through(self, blocks: Sequence[nn.Module], hidden: torch.Tensor, first: int = 0,
                prefixes: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """A forward resumed at `blocks[0]`: each block in turn on `hidden` (tokens first..T-1), over the keys and
        values `prefixes[i]` of tokens 0..first-1 for block i."""
        for i, block in enumerate(blocks):
            hidden = self(block, hidden, first, None if prefixes is None else prefixes[i])
        return hidden

    def _suffix_arguments(self, first: int, cache: PrefixKeysValues, dtype: torch.dtype) -> dict:
        T = self.num_tokens
        prefix = cache.prefix
        arguments = dict(self.arguments)
        arguments[self.cache_argument] = cache
        for name in ("position_ids", "position_embeddings"):
            value = arguments.get(name)
            if isinstance(value, torch.Tensor):
                arguments[name] = value[:, first:]
            elif isinstance(value, tuple):
                arguments[name] = tuple(v[:, first:] for v in value)
        if isinstance(arguments.get("cache_position"), torch.Tensor):
            arguments["cache_position"] = arguments["cache_position"][first:]
        mask = arguments.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            arguments["attention_mask"] = mask[..., first:, :]
        elif T - first > 1:  # no mask means "causal" to the attention, which a suffix query block is not
            queries = torch.arange(first, T, device=prefix[0].device)[:, None]
            keys = torch.arange(T, device=prefix[0].device)[None]
            additive = torch.zeros(queries.shape[0], T, dtype=dtype, device=prefix[0].device)
            arguments["attention_mask"] = additive.masked_fill(keys > queries, torch.finfo(dtype).min)[None, None]
        return arguments


def per_token(value, num_tokens: int, rows: int | None = None) -> bool:
    """Whether a block argument (a tensor, or tuples and lists of them) holds anything per token: a dimension of
    `num_tokens`, or, given `rows`, a first dimension of `rows` (per row of the batch)."""
    if isinstance(value, torch.Tensor):
        return num_tokens in value.shape or (rows is not None and value.dim() >= 1 and value.shape[0] == rows)
    return isinstance(value, (tuple, list)) and any(per_token(v, num_tokens, rows) for v in value)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool attention mask (True: the query sees the key) as an additive one: 0 where allowed, else the dtype's
    minimum."""
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)


def _first_row(value, batch: int):
    """Row 0 of every tensor whose first dimension is the recorded batch, inside tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):  # 1-D tensors (cache positions) have no batch dimension
        return value[:1] if value.dim() >= 2 and value.shape[0] == batch else value
    if isinstance(value, tuple):
        return tuple(_first_row(v, batch) for v in value)
    if isinstance(value, list):
        return [_first_row(v, batch) for v in value]
    if isinstance(value, dict):
        return {k: _first_row(v, batch) for k, v in value.items()}
    return value
