"""FT+L (ROME paper, section 4): fine-tune one MLP output projection on the rewrite prompts, with every weight kept
within an L-infinity ball of radius `norm_constraint` around its original value.

The layer is ROME's (located by causal tracing when `layer` is null; in a batch, the layer located most often).
Loss: the weighted NLL of the target over the rewrite prompts (bare prompt and KG context prefixes, as ROME), summed
over requests; Adam; projection onto the ball after every step; stop once every rewrite prompt has its target top-1
with mean p >= stop_prob.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.causal_tracing import CausalTracer
from src.edit.evaluation.requests import EditRequest
from src.edit.methods.base import EditEnvironment, MethodOutput, PromptEditor, RequestInfo
from src.edit.prompts.batch import PromptBatch
from src.edit.prompts.rewrite import RewriteSet
from src.utils.config import load_dataclass
from src.utils.errors import InputError


@dataclass(frozen=True)
class FTHyperParams:
    """Documented in configs/ft_gpt_small.yaml."""

    layer: int | None = None
    lr: float = 5e-3
    num_steps: int = 50
    norm_constraint: float = 0.05
    stop_prob: float = 0.95
    num_context_prefixes: int = 10
    bare_prompt_weight: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.norm_constraint <= 0:
            raise InputError(f"norm_constraint must be > 0, got {self.norm_constraint}")
        if self.num_steps < 1:
            raise InputError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.layer is not None and self.layer < 0:
            raise InputError(f"layer must be >= 0 or null, got {self.layer}")

    def to_dict(self) -> dict:
        return asdict(self)


def load_ft_hparams(source: Mapping[str, Any] | str | Path | FTHyperParams | None) -> FTHyperParams:
    return load_dataclass(FTHyperParams, source)


class FTEditor(PromptEditor):
    name = "ft"
    batched = True

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, hparams: FTHyperParams,
                 env: EditEnvironment) -> None:
        super().__init__(model, tokenizer, hparams, env)
        if hparams.layer is not None:
            self.layout.check_layer(hparams.layer)

    @functools.cached_property
    def tracer(self) -> CausalTracer:
        subjects = sorted({f.s for f in self.kg.facts}) if self.kg else None
        return CausalTracer(self.model, self.tokenizer, self.env.device, subjects=subjects, speed=self.env.speed)

    def layer_for(self, requests: Sequence[EditRequest]) -> int:
        if self.hparams.layer is not None:
            return self.hparams.layer
        located = Counter(self.tracer.locate_important_layer(q.s, q.r, q.o) for q in requests)
        return min(located, key=lambda layer: (-located[layer], layer))

    def forget(self) -> None:
        """FT keeps nothing between calls."""

    def edit(self, requests: Sequence[EditRequest]) -> MethodOutput:
        sets, target_ids = self.prepare(requests)
        layer = self.layer_for(requests)
        steps = self._fine_tune(layer, sets, target_ids)
        infos = tuple(RequestInfo(layers=(layer,), context_facts=tuple(f.sentence() for f in s.context_facts),
                                  steps=steps) for s in sets)
        return MethodOutput(infos=infos, changed=(self.layout.paths.mlp_out.format(layer) + ".weight",))

    def _fine_tune(self, layer: int, sets: list[RewriteSet], target_ids: list[int]) -> int:
        hp = self.hparams
        prompts = [p for s in sets for p in s.rewrite]
        weights = torch.tensor([w for s in sets for w in s.weights], device=self.env.device)
        targets = torch.tensor([t for s, t in zip(sets, target_ids) for _ in s.rewrite], device=self.env.device)
        batch = PromptBatch.for_tokenizer([p.input_ids for p in prompts], self.tokenizer, self.env.device)
        weight = self.layout.mlp_out(layer).weight
        # Adam runs on a float32 master copy: on float16 weights its eps (1e-8) underflows to 0 and the first step
        # divides by zero (the model's weight becomes inf/nan). The forward and backward run in the model's dtype.
        original = weight.detach().to(torch.float32, copy=True)  # never a view of the weight it constrains
        master = original.clone().requires_grad_(True)
        trainable = {name: p.requires_grad for name, p in self.model.named_parameters()}
        for p in self.model.parameters():
            p.requires_grad_(False)
        weight.requires_grad_(True)
        optimizer = torch.optim.Adam([master], lr=hp.lr)
        rows = torch.arange(len(prompts), device=self.env.device)
        steps = 0
        try:
            for steps in range(1, hp.num_steps + 1):
                log_probs = torch.log_softmax(batch.last_logits(self.model), dim=-1)
                target_log_probs = log_probs[rows, targets]
                if bool((log_probs.argmax(-1) == targets).all()) and \
                        float(target_log_probs.detach().exp().mean()) >= hp.stop_prob:
                    steps -= 1
                    break
                loss = -(weights * target_log_probs).sum() / len(sets)
                weight.grad = None
                loss.backward()
                master.grad = weight.grad.float()
                optimizer.step()
                with torch.no_grad():
                    master.copy_(original + (master - original).clamp(-hp.norm_constraint, hp.norm_constraint))
                    weight.copy_(master)
        finally:
            weight.grad = None
            for name, p in self.model.named_parameters():
                p.requires_grad_(trainable[name])
        return steps


def make_ft(model, tokenizer, hparams, env: EditEnvironment) -> FTEditor:
    return FTEditor(model, tokenizer, load_ft_hparams(hparams), env)
