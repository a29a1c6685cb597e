"""Editing methods behind one interface: a registry from name to `MethodSpec`.

    editor = build_editor("memit", model, tokenizer, hparams=None, env=EditEnvironment(corpus, device))
    output = editor.edit(requests)          # edits `model` in place; one RequestInfo per request

`apply_method(name, model, tokenizer, requests, hparams, env)` does both in one call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.evaluation.requests import EditRequest
from src.edit.methods.base import EditEnvironment, Editor, MethodOutput, MethodSpec, RequestInfo
from src.edit.methods.ft import load_ft_hparams, make_ft
from src.edit.methods.memit import load_memit_hparams, make_memit
from src.edit.methods.rome_editor import load_rome_original_hparams, make_rome, make_rome_original
from src.edit.rank_one.hparams import load_hparams as load_rome_hparams
from src.utils.errors import InputError

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("rome", make_rome, load_rome_hparams, False,
                   "ROME, consistent keys (this library's default)"),
        MethodSpec("rome-original", make_rome_original, load_rome_original_hparams, False,
                   "ROME as the original code runs it: its v* objective, key mixture and hyperparameters"),
        MethodSpec("ft", make_ft, load_ft_hparams, True,
                   "FT+L: fine-tune one MLP output projection within an L-infinity ball"),
        MethodSpec("memit", make_memit, load_memit_hparams, True,
                   "MEMIT: batched update spread over several MLP layers (all 8 by default)"),
    )
}


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise InputError(f"unknown method '{name}'; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def build_editor(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 hparams: Mapping[str, Any] | str | Path | None, env: EditEnvironment) -> Editor:
    """hparams: a dict of overrides of the method's defaults, a YAML path, or None (the dataclass defaults)."""
    return method_spec(name).factory(model, tokenizer, hparams, env)


def apply_method(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 requests: Sequence[EditRequest], hparams: Mapping[str, Any] | str | Path | None,
                 env: EditEnvironment) -> tuple[PreTrainedModel, tuple[RequestInfo, ...]]:
    """Edit `model` in place with method `name`; several requests need a batched method (ft, memit)."""
    editor = build_editor(name, model, tokenizer, hparams, env)
    if len(requests) > 1 and not editor.batched:
        raise InputError(f"{name} edits one fact at a time; got {len(requests)} requests (batched methods: "
                         f"{', '.join(n for n, s in METHODS.items() if s.batched)})")
    return model, editor.edit(requests).infos


__all__ = ["METHODS", "EditEnvironment", "Editor", "MethodOutput", "MethodSpec", "RequestInfo", "apply_method",
           "build_editor", "method_spec"]
