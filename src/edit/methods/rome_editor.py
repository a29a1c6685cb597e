"""ROME behind the method interface: `rome` (this library's objective and keys) and `rome-original` (the original
code's v* objective, key mixture and hyperparameters).

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

# The original ROME code (kmeng01/rome, rome/compute_v.py and hparams/ROME/gpt2-xl.json), term by term: the update's
# denominator from the bare prompt's key while k* and delta come from every prompt, delta added at the subject's last
# token only ("lookup"), weight decay |delta| / |v|^2, KL(edited || initial), the norm clamp at 4 |v|, 20 steps of
# Adam at 0.5 stopping once the loss < 0.05, a plain mean over the prompts, one layer, no retry.
ORIGINAL_CODE = {"fact_token": "subject_last", "key_mode": "original", "v_objective": "lookup", "clamp_norm_factor": 4.0,
                 "v_weight_decay": 0.5, "v_weight_decay_form": "norm", "kl_direction": "reverse", "kl_factor": 0.0625,
                 "v_lr": 0.5, "v_num_grad_steps": 20, "v_stop": "loss", "v_stop_loss": 0.05, "bare_prompt_weight": None,
                 "layer_retries": 0}


class ROMEEditor:
    batched = False

    def __init__(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 hparams: ROMEHyperParams, env: EditEnvironment) -> None:
        self.name = name
        self.rome = ROME(model, tokenizer, device=env.device, kg_corpus_path=env.corpus_path, hparams=hparams,
                         stats_dir=env.stats_dir, progress=env.progress, statistics_from="initial", speed=env.speed,
                         fact_split=env.split)

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
    """The original code's objective and hyperparameters (ORIGINAL_CODE); anything else as `rome` unless `source`
    says otherwise."""
    return load_dataclass(ROMEHyperParams, source, base=ORIGINAL_CODE)


def make_rome(model, tokenizer, hparams, env: EditEnvironment) -> ROMEEditor:
    return ROMEEditor("rome", model, tokenizer, load_hparams(hparams), env)


def make_rome_original(model, tokenizer, hparams, env: EditEnvironment) -> ROMEEditor:
    return ROMEEditor("rome-original", model, tokenizer, load_rome_original_hparams(hparams), env)
