"""v* (ROME step 3): delta, optimised so that the edited model predicts the target; v* = out(k*) + delta.

The loss: the NLL of the target on the rewrite prompts (every piece of a multi-token target, teacher-forced), a KL
term that keeps the subject's other facts, a weight decay |delta|^2 / |out(k_bare)|^2 and a norm clamp at
clamp_norm_factor * |out(k_bare)|. v_objective "rank_one" optimises through the final update itself (the edited
model at every position); "lookup" adds delta at the edit positions only, as the original. v_optimizer "adam" takes
Adam steps of learning rate v_lr, as the original; "normalized_gd" steps of length v_lr along the negative gradient.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.speedups import FAST, SpeedPaths
from src.edit.model.hooks import Trace
from src.edit.model.layout import ModelLayout
from src.edit.prompts.batch import PromptBatch
from src.edit.prompts.rewrite import RewriteSet
from src.edit.rank_one.keys import edit_positions, pieces_read
from src.edit.model.resumed_forward import ResumedForward
from src.edit.rank_one.hparams import ROMEHyperParams


def compute_delta(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, hp: ROMEHyperParams,
                  prompts: RewriteSet, weights: torch.Tensor, layer: int, target_ids: tuple[int, ...],
                  u: torch.Tensor, denominator: float, speed: SpeedPaths = FAST) -> tuple[torch.Tensor, int]:
    """(delta (d_model,) float32 such that the edited model predicts the target, steps taken); see the module
    docstring. prompts.rewrite carry `weights` (n_rewrite,) in the NLL, prompts.kl the KL term; u and denominator:
    the update's direction (delta enters at `layer`'s MLP output as (k . u / denominator) delta). A target of m
    tokens (subword pieces) is read teacher-forced: the rewrite prompts run on prompt + target[:-1], and the NLL is
    the mean over the m tokens, as the original's; the stop test uses the joint probability."""
    device = next(model.parameters()).device
    fact_token = hp.fact_token
    rewrite, kl_prompts = list(prompts.rewrite), list(prompts.kl)
    all_prompts = rewrite + kl_prompts
    n_rewrite, m = len(rewrite), len(target_ids)
    inputs = [list(p.input_ids) + list(target_ids[:-1]) for p in rewrite] + [list(p.input_ids) for p in kl_prompts]
    batch = PromptBatch.for_tokenizer(inputs, tokenizer, device)
    positions = batch.columns(edit_positions(all_prompts, fact_token))
    module = ModelLayout.of(model).mlp_out(layer)
    rows = torch.arange(len(all_prompts), device=device)
    # read-out rows and columns: m per rewrite prompt (its last prompt token onwards), then one per KL prompt
    prompt_last = batch.columns([len(p.input_ids) - 1 for p in all_prompts])[:n_rewrite]
    read_rows = torch.cat([rows[:n_rewrite].repeat_interleave(m), rows[n_rewrite:]])
    read_columns = torch.cat([(prompt_last[:, None] + torch.arange(m, device=device)).reshape(-1),
                                  batch.last[n_rewrite:]])
    targets = torch.tensor(target_ids, device=device).repeat(n_rewrite)  # (n_rewrite * m,)
    n_read = n_rewrite * m

    # read-out logits (n_rewrite * m + n_kl, vocab) from block `layer` on: the blocks below do not depend on delta
    with speed.fused(model), Trace(module, retain_input=True) as trace:
        readout = ResumedForward(model, layer, batch, read_rows, read_columns, resume=speed.resume_forward,
                                  pack=speed.pack_prompts)
    out_bare = trace.output[0, positions[0]].float()
    kl_init = torch.log_softmax(readout.initial_logits[n_read:], dim=-1) if kl_prompts else None
    max_norm = hp.clamp_norm_factor * float(out_bare.norm())

    delta = torch.zeros_like(out_bare, requires_grad=True)
    dtype = trace.output.dtype
    if hp.v_objective == "rank_one":  # the update itself: out(k) += (k . u / u . k*) delta, at every token
        coefficients = (trace.input.float() @ (u / denominator).float().to(device))[..., None].to(dtype)

        def added(vector: torch.Tensor) -> torch.Tensor:
            return coefficients * vector.to(dtype)
    else:  # lookup: delta at the edit positions only (for a multi-token target, at each piece's read position)
        pieces = pieces_read(fact_token, target_ids)
        lookup_rows = torch.cat([rows[:n_rewrite].repeat_interleave(pieces), rows[n_rewrite:]])
        lookup_columns = torch.cat([(positions[:n_rewrite, None] + torch.arange(pieces, device=device)).reshape(-1),
                                        positions[n_rewrite:]])

        def added(vector: torch.Tensor) -> torch.Tensor:
            return readout.placed(lookup_rows, lookup_columns, vector.expand(len(lookup_rows), -1))

    weights = weights.to(device)  # (n_rewrite,) the rewrite prompts' shares of the NLL, the bare prompt's first
    if hp.v_optimizer == "adam":
        take_step = torch.optim.Adam([delta], lr=hp.v_lr).step
    else:
        def take_step() -> None:
            normalized_step(delta, hp.v_lr)
    steps = 0
    previous = None  # delta before the last step: with v_stop_refine, where the search along that step starts

    def read(vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, log-probabilities (n_read + n_kl, vocab), log p(target) (n_rewrite,)) with `vector` as delta."""
        logits = readout(added(vector))
        log_probs = torch.log_softmax(logits, dim=-1)
        return logits, log_probs, log_probs[torch.arange(n_read, device=device), targets].view(n_rewrite, m).sum(1)

    def target_met(logits: torch.Tensor, target_log_probs: torch.Tensor) -> bool:
        """The target_prob stop rule: every rewrite prompt's target top-1 and their mean p >= v_stop_prob."""
        return bool((logits[:n_read].argmax(-1) == targets).all()) and \
            float(target_log_probs.detach().exp().mean()) >= hp.v_stop_prob

    def meets(vector: torch.Tensor) -> bool:
        logits, _, target_log_probs = read(vector)
        return target_met(logits, target_log_probs)

    with speed.frozen(model), speed.fused(model):
        for steps in range(1, hp.v_num_grad_steps + 1):
            logits, log_probs, target_log_probs = read(delta)
            if hp.v_stop == "target_prob" and target_met(logits, target_log_probs):
                steps -= 1
                if previous is not None:  # kept under v_stop_refine only: take back the step's overshoot
                    with torch.no_grad():
                        return shortest_meeting(previous, delta.detach(), hp.v_stop_refine, meets), steps
                break
            loss = delta_objective(hp, target_log_probs, weights, m, log_probs[n_read:], kl_init, delta, out_bare)
            if hp.v_stop == "loss" and (float(loss.detach()) < hp.v_stop_loss or steps == hp.v_num_grad_steps):
                steps -= 1  # the original: the loss is computed, no step is taken
                break
            delta.grad = None
            loss.backward()
            previous = delta.detach().clone() if hp.v_stop_refine else None
            take_step()
            with torch.no_grad():
                norm = delta.norm()
                if norm > max_norm:
                    delta.mul_(max_norm / norm)
    return delta.detach(), steps


@torch.no_grad()
def normalized_step(vector: torch.Tensor, length: float) -> None:
    """vector -= length * grad / |grad|, in place: a step of `length` (in vector's units) along the negative gradient
    in `vector.grad`, none where the gradient is 0 (v_optimizer "normalized_gd")."""
    norm = vector.grad.norm()
    if norm > 0:
        vector.sub_(vector.grad, alpha=length / float(norm))


def shortest_meeting(start: torch.Tensor, end: torch.Tensor, halvings: int,
                     meets: Callable[[torch.Tensor], bool]) -> torch.Tensor:
    """The point of the segment start -> end, (d,) each, closest to `start` that `meets` accepts, found by bisection
    on t in [0, 1] with `halvings` tests; `end` is taken to meet the rule and `start` not (the last optimisation
    step crossed into the stop rule). A step larger than the rule needs overshoots it; this takes back the overshoot."""
    low, high = 0.0, 1.0  # start fails the rule, start + high * (end - start) meets it
    for _ in range(halvings):
        middle = (low + high) / 2
        if meets(start + middle * (end - start)):
            high = middle
        else:
            low = middle
    return start + high * (end - start) if high < 1.0 else end


def delta_objective(hp: ROMEHyperParams, target_log_probs: torch.Tensor, weights: torch.Tensor, m: int,
                    kl_log_probs: torch.Tensor, kl_init: torch.Tensor | None, delta: torch.Tensor,
                    out_bare: torch.Tensor) -> torch.Tensor:
    """The loss delta minimises (a scalar): NLL + kl_factor * KL + weight decay.

    target_log_probs (n_rewrite,): log p(target | rewrite prompt), summed over the m target tokens; weights
    (n_rewrite,) sum to 1; kl_log_probs, kl_init (n_kl, vocab): next-token log-probabilities of the KL prompts now and
    before the edit; out_bare (d,): the MLP output at the bare prompt's edit position.
    - NLL = -sum_i w_i log p_i / m: per target token (with uniform weights, the original's mean).
    - KL, batch mean: kl_direction "forward" KL(before || now); "reverse" KL(now || before), the original code's
      `kl_div(kl_distr_init, kl_log_probs, log_target=True)`.
    - weight decay: v_weight_decay_form "squared" v_weight_decay |delta|^2 / |out_bare|^2; "norm"
      v_weight_decay |delta| / |out_bare|^2, the original code's.
    """
    nll = -(weights * target_log_probs).sum() / m
    if kl_init is None:
        kl = torch.zeros((), device=delta.device)
    elif hp.kl_direction == "forward":
        kl = F.kl_div(kl_log_probs, kl_init, log_target=True, reduction="batchmean")
    else:
        kl = F.kl_div(kl_init, kl_log_probs, log_target=True, reduction="batchmean")
    size = delta.norm() ** 2 if hp.v_weight_decay_form == "squared" else delta.norm()
    return nll + hp.kl_factor * kl + hp.v_weight_decay * size / out_bare.norm() ** 2
