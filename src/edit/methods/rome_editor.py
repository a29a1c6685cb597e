"""ROME behind the method interface: `rome` (consistent keys) and `rome-original` (the original code's key mixture).

One request per call (ROME is a single-fact method); sequences are applied one `edit` call at a time. Key
statistics C come from the weights the editor was built on (`statistics_from="initial"`), so a sequence of in-place
edits reuses one C per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.evaluation.requests import EditRequest
from src.edit.methods.base import EditEnvironment, MethodOutput, RequestInfo
from src.edit.rome import ROME
from src.edit.rank_one.hparams import ROMEHyperParams, load_hparams
from src.utils.config import load_dataclass
from src.utils.errors import InputError

# The original ROME code computes the update's denominator from the bare prompt's key while k* and delta come from
# the prefixed prompts, with delta added at the edit positions only ("lookup").
ORIGINAL_KEYS = {"key_mode": "original", "v_objective": "lookup"}


class ROMEEditor:
    batched = False

    def __init__(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 hparams: ROMEHyperParams, env: EditEnvironment) -> None:
        self.name = name
        self.rome = ROME(model, tokenizer, device=env.device, kg_corpus_path=env.corpus_path, hparams=hparams,
                         stats_dir=env.stats_dir, progress=env.progress, statistics_from="initial", speed=env.speed)

    @property
    def hparams(self) -> ROMEHyperParams:
        return self.rome.hparams

    def forget(self) -> None:
        self.rome.forget_past_edits()

    def edit(self, requests: Sequence[EditRequest]) -> MethodOutput:
        if len(requests) != 1:
            raise InputError(f"{self.name} edits one fact at a time, got {len(requests)} requests; "
                             "use mode independent or sequential (or the memit method for batches)")
        request = requests[0]
        _, result = self.rome.apply_edit(request.s, request.r, request.target, copy_model=False, original=request.o,
                                         measure=False)
        layers = () if result.status == "unchanged" else (result.layer,)
        info = RequestInfo(layers=layers, context_facts=result.context_facts, kl_facts=result.kl_facts,
                           steps=result.v_steps, note=result.note)
        return MethodOutput(infos=(info,), changed=(f"{result.weight_name}.weight",) if result.weight_name else ())


def load_rome_original_hparams(source: Mapping[str, Any] | str | Path | ROMEHyperParams | None) -> ROMEHyperParams:
    """The original's key mixture and lookup objective; anything else as `rome` unless `source` says otherwise."""
    return load_dataclass(ROMEHyperParams, source, base=ORIGINAL_KEYS)


def make_rome(model, tokenizer, hparams, env: EditEnvironment) -> ROMEEditor:
    return ROMEEditor("rome", model, tokenizer, load_hparams(hparams), env)


def make_rome_original(model, tokenizer, hparams, env: EditEnvironment) -> ROMEEditor:
    return ROMEEditor("rome-original", model, tokenizer, load_rome_original_hparams(hparams), env)
