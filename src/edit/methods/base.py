"""The interface every editing method implements, and what it reports per request."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.evaluation.requests import EditRequest
from src.edit.model.speedups import FAST, SpeedPaths
from src.edit.prompts.kg_context import KGContext
from src.edit.model.layout import ModelLayout
from src.edit.prompts.encoding import check_known_words, single_token_id
from src.edit.prompts.rewrite import RewriteSet, rewrite_set
from src.kg.split import FactSplit


@dataclass(frozen=True)
class EditEnvironment:
    """What a method may use besides the model: the KG corpus (key statistics, context prefixes, KL facts), the
    facts of it it may use (`split`: the allowed side; None: all), the device, the statistics cache directory
    (None: $KG_ROME_CACHE or ~/.cache/kg_rome), whether to show bars, and the speed paths to take
    (`src.edit.model.speedups.SpeedPaths`)."""

    corpus_path: Path | None
    device: torch.device
    stats_dir: Path | None = None
    progress: bool = False
    speed: SpeedPaths = FAST
    split: FactSplit | None = None


@dataclass(frozen=True)
class RequestInfo:
    """What a method did for one request. layers: the MLP layers it wrote; context_facts: KG facts (sentences) it used
    as context prefixes, kept out of the context-robustness prompts; kl_facts: KG facts whose prompts its KL term held
    in place (the evaluation reports how many of the facts it scores are among them); steps: optimisation steps (0 if
    none)."""

    layers: tuple[int, ...]
    context_facts: tuple[str, ...] = ()
    kl_facts: tuple[str, ...] = ()
    steps: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "context_facts": list(self.context_facts),
                "kl_facts": list(self.kl_facts), "steps": self.steps, "note": self.note}


@dataclass(frozen=True)
class MethodOutput:
    """infos: one per request, in order; changed: names of the parameters the method wrote (in place)."""

    infos: tuple[RequestInfo, ...]
    changed: tuple[str, ...]


class Editor(Protocol):
    """An editing method bound to one model. `edit` changes `model` in place; an editor may remember earlier edits
    (to protect them in later ones) until `forget`.

    batched: whether `edit` accepts several requests at once and edits them jointly (mode "batch")."""

    name: str
    batched: bool

    def edit(self, requests: Sequence[EditRequest]) -> MethodOutput: ...

    def forget(self) -> None:
        """Drop what earlier `edit` calls left behind (e.g. their keys), after the caller restored the weights."""


class EditorFactory(Protocol):
    def __call__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 hparams: Mapping[str, Any] | str | Path | None, env: EditEnvironment) -> Editor: ...


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: `factory(model, tokenizer, hparams, env)` builds the editor; `load_hparams(source)` reads and
    checks hyperparameters (dict, YAML path or None) into the method's dataclass."""

    name: str
    factory: EditorFactory = field(repr=False)
    load_hparams: Callable[[Any], Any] = field(repr=False)
    batched: bool
    description: str


class PromptEditor:
    """Set-up shared by the editors that optimise on each request's rewrite prompts (ft, memit): the model in eval
    mode on the environment's device, its layout, and the KG read from the corpus (the facts the environment's
    split allows; None without a corpus).
    `hparams` must have num_context_prefixes, bare_prompt_weight and seed."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, hparams: Any,
                 env: EditEnvironment) -> None:
        self.model = model.to(env.device).eval()
        self.tokenizer = tokenizer
        self.hparams = hparams
        self.env = env
        self.layout = ModelLayout.of(model)
        self.kg = KGContext.from_corpus(env.corpus_path, env.split) if env.corpus_path is not None else None

    def prepare(self, requests: Sequence[EditRequest]) -> tuple[list[RewriteSet], list[int]]:
        """(rewrite sets, target token ids) of `requests`; unknown words are errors before any work. No request's
        prompts use a fact another request of the call rewrites."""
        hp = self.hparams
        for q in requests:
            check_known_words(self.tokenizer, subject=q.s, relation=q.r, target=q.target)
        edited = {(q.s, q.r) for q in requests}
        sets = [rewrite_set(self.tokenizer, self.kg, q.s, q.r, hp.num_context_prefixes, hp.bare_prompt_weight, hp.seed,
                            exclude_pairs=edited - {(q.s, q.r)}) for q in requests]
        return sets, [single_token_id(self.tokenizer, q.target) for q in requests]
