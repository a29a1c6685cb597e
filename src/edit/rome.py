"""ROME (ROME section 3): rewrite one fact with a rank-one update of one MLP output projection.

For an edit s r -> o* at layer l, with W the MLP output projection (out(k) = W k + b):
  1. k* = mean key (W's input) at the edit position over the bare prompt and the prompt behind context prefixes
     (other KG facts in the corpus' chain format, "E_417 R_02 E_077 ; E_000 R_04").
  2. u = C^-1 k*, C = E[k k^T] over the KG corpus (float64 solve; C = I without a corpus); with
     null_space_threshold > 0, u = P k* (P: projector on C's small-eigenvalue directions).
  3. delta is optimised (Adam) so that the edited model predicts o* on those prompts (every piece of o* for a
     subword tokenizer, teacher-forced on prompt + o*[:-1]), with a KL term that keeps
     the subject's other facts, a weight decay and a norm clamp at clamp_norm_factor * |out(k_bare)|.
     v_objective "rank_one" (default) optimises through the final update itself, W + delta u^T / (u . k*), so what
     is optimised is the edited model at every position; "lookup" adds delta at the edit positions, as the original.
  4. W' = W + delta u^T / (u . k), so out'(k*) = out(k*) + delta = v*: rank one.
     key_mode "consistent" uses k = k* (the same key in residual and denominator); "original" uses the bare
     prompt's key in the denominator, reproducing the original code's mixture.

A target of m > 1 tokens (subword pieces) edited at the last token is read at m positions: the prompt's last
token and each teacher-forced piece but the last, each predicting the next piece. The update then gives delta in
full at the m mean keys k*_1..k*_m, still rank one: u = C^-1 K^T a with K's rows k*_1 .. k*_m and a chosen so that
u . k*_j is the same for every j (`src.edit.rank_one.linalg.combine_keys`); with key_mode "consistent" and C^-1 (no null-space
projector) it is the least-change (under C) update with W' k*_j = W k*_j + delta for all j. key_mode "original"
gives delta in full at the bare prompt's piece keys instead. With m = 1 this is steps 2 and 4 as above. (The original edits multi-token targets at the
subject's last token only; `fact_token: subject_last` does that here.)
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.causal_tracing import CausalTracer, LocateResult
from src.edit.evaluation.edit_checks import EditMetrics, edit_metrics, edit_predictions
from src.edit.model.layout import ModelLayout, apply_update
from src.edit.model.speedups import FAST, SpeedPaths
from src.edit.prompts.decoding import decode_ids, greedy_decode, sequence_probs
from src.edit.prompts.encoding import check_known_words, encode_fact_prompt
from src.edit.prompts.kg_context import KGContext
from src.edit.prompts.rewrite import RewriteSet, rewrite_set
from src.edit.rank_one.covariance import KeyCovariance
from src.edit.rank_one.delta import compute_delta
from src.edit.rank_one.hparams import ROMEHyperParams, load_hparams
from src.edit.rank_one.keys import compute_k_star, compute_keys
from src.edit.rank_one.update import RankOneUpdate, compute_u
from src.kg.split import FactSplit
from src.lm.token_ids import object_token_ids
from src.utils.device import resolve_device
from src.utils.errors import InputError


@dataclass(frozen=True)
class EditResult:
    """Outcome of one `ROME.apply_edit`. Probabilities are of the next token after `"{s} {r}"`."""

    subject: str
    relation: str
    target: str
    original: str
    status: str  # "edited" | "unchanged" (the model already predicted the target)
    success: bool
    layer: int
    layer_source: str  # "argument" | "hparams" | "located" | "located (retry)"
    fact_token: str
    original_prediction: str
    new_prediction: str
    target_prob_before: float
    target_prob_after: float
    original_prob_before: float
    original_prob_after: float
    update_norm: float
    delta_norm: float
    v_steps: int
    elapsed_seconds: float
    metrics: EditMetrics | None
    hparams: dict
    note: str = ""
    locate: dict | None = None
    weight_name: str = ""
    context_facts: tuple[str, ...] = ()  # the KG facts used as context prefixes to compute the edit
    kl_facts: tuple[str, ...] = ()  # the KG facts whose prompts the KL term held in place
    _saved_weight: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _update: RankOneUpdate | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        data["metrics"] = self.metrics.to_dict() if self.metrics else None
        return data


class ROME:
    """Rank-One Model Editing.

    Args:
        model, tokenizer: a causal LM of a supported family and its tokenizer.
        device: "auto", "cpu", "cuda", "cuda:N".
        kg_corpus_path: the KG corpus: key statistics C, context prefixes, the subject's other facts (KL and
            specificity), aliases (from meta.json beside it). Without it: C = I, no prefixes, no KL (warned).
        use_mom2_adjustment: use C (else I).
        hparams: ROMEHyperParams, a dict of overrides, or a YAML path (defaults: configs/rome_gpt_small.yaml).
        stats_dir: cache directory for C (default $KG_ROME_CACHE or ~/.cache/kg_rome).
        statistics_from: "current" computes C on the weights being edited (cached per weights); "initial" on the
            weights as given here, kept in a private copy, for sequential in-place edits (one C per layer, not one
            per edit).
        speed: the speed paths to take (`src.edit.model.speedups.SpeedPaths`; all on by default).
        fact_split: the facts of the corpus ROME may use (context prefixes, KL prompts, fact-prompt statistics, the
            prompts its own metrics score): those a `src.kg.split.FactSplit` allows, so that an evaluation can
            score the rest; None: all.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: str | torch.device = "auto",
        kg_corpus_path: str | Path | None = None,
        use_mom2_adjustment: bool = True,
        hparams: ROMEHyperParams | Mapping[str, Any] | str | Path | None = None,
        stats_dir: str | Path | None = None,
        progress: bool = True,
        statistics_from: str = "current",
        speed: SpeedPaths = FAST,
        fact_split: FactSplit | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.hparams = load_hparams(hparams)
        self.layout = ModelLayout.of(model)
        self.corpus_path = Path(kg_corpus_path) if kg_corpus_path is not None else None
        self.kg = KGContext.from_corpus(self.corpus_path, fact_split) if self.corpus_path is not None else None
        self.speed = speed
        self.covariance = KeyCovariance(model, tokenizer, self.corpus_path, self.hparams, use_mom2_adjustment,
                                        stats_dir, progress, statistics_from, fact_split, speed)
        if self.kg is None:
            warnings.warn("ROME without kg_corpus_path: C = I (no key statistics), no context prefixes and no KL "
                          "term on the subject's other facts; edits will be less specific", stacklevel=2)
        if self.hparams.layer is not None:
            self.layout.check_layer(self.hparams.layer)

    # ------------------------------------------------------------------ public API

    def apply_edit(self, s: str, r: str, o_target: str, copy_model: bool = True, layer: int | None = None,
                   original: str | None = None, measure: bool = True) -> tuple[PreTrainedModel, EditResult]:
        """Rewrite `s r -> o_target`. Returns (edited model, EditResult).

        copy_model=True edits a deep copy and leaves `model` bit-identical; False edits in place, and
        `rome.restore(model, result)` undoes it. layer None: hparams.layer, else located by causal tracing.
        original: the object to compare against (default: the model's current prediction).
        measure=False skips the context-robustness, paraphrase and specificity prompts (`result.metrics` is None), for callers that
        measure the edit themselves.
        """
        started = time.perf_counter()
        hp = self.hparams
        check_known_words(self.tokenizer, subject=s, relation=r, target=o_target, original=original)
        if layer is not None:
            self.layout.check_layer(layer)
        model = self.model
        bare = encode_fact_prompt(self.tokenizer, s, r)
        target_ids = tuple(object_token_ids(self.tokenizer, o_target))  # one token, or a subword tokenizer's pieces
        prediction = greedy_decode(model, [bare], [self._answer_length(s, r, original, len(target_ids))])[0]
        original_ids = tuple(object_token_ids(self.tokenizer, original)) if original else prediction
        original_name = original or decode_ids(self.tokenizer, prediction)
        target_prob_before, original_prob_before = sequence_probs(model, self.tokenizer, bare, [target_ids, original_ids])

        def result(model_after, status, layer_used, layer_source, note="", **extra) -> EditResult:
            after = greedy_decode(model_after, [bare], [len(target_ids)])[0]
            target_prob_after, original_prob_after = sequence_probs(model_after, self.tokenizer, bare, [target_ids, original_ids])
            return EditResult(
                subject=s, relation=r, target=o_target, original=original_name, status=status,
                success=after == target_ids, layer=layer_used, layer_source=layer_source,
                fact_token=hp.fact_token, original_prediction=decode_ids(self.tokenizer, prediction), new_prediction=decode_ids(self.tokenizer, after),
                target_prob_before=target_prob_before, target_prob_after=target_prob_after,
                original_prob_before=original_prob_before, original_prob_after=original_prob_after,
                elapsed_seconds=time.perf_counter() - started, hparams=hp.to_dict(), note=note, **extra,
            )

        already = (prediction if len(prediction) == len(target_ids)
                   else greedy_decode(model, [bare], [len(target_ids)])[0]) == target_ids
        if already:
            note = f"the model already predicts {o_target} for '{s} {r}'; nothing was edited"
            return model, result(model, "unchanged", -1, "none", note, update_norm=0.0, delta_norm=0.0,
                                 v_steps=0, metrics=None)

        located = None
        if layer is not None:
            layer_used, layer_source = layer, "argument"
        elif hp.layer is not None:
            layer_used, layer_source = hp.layer, "hparams"
        else:
            located = self._locate(s, r)
            layer_used, layer_source = located.layer, "located"

        prompts = rewrite_set(self.tokenizer, self.kg, s, r, hp.num_context_prefixes, hp.bare_prompt_weight, hp.seed,
                              hp.num_eval_prefixes, hp.num_eval_random_facts)
        eval_before = edit_predictions(model, self.tokenizer, prompts, target_ids) if measure else None
        edited = copy.deepcopy(model) if copy_model else model
        weight_name, saved, update, steps = self._edit(edited, prompts, layer_used, target_ids)
        for retry in self._retry_layers(located, layer_used) if layer_source == "located" else []:
            if greedy_decode(edited, [bare], [len(target_ids)])[0] == target_ids:
                break
            with torch.no_grad():  # undo the failed edit, then try the next-best located layer
                edited.get_submodule(weight_name).weight.copy_(saved)
            layer_used, layer_source = retry, "located (retry)"
            weight_name, saved, update, steps = self._edit(edited, prompts, layer_used, target_ids)
        if not copy_model and hp.past_keys_weight > 0:
            self.covariance.remember(layer_used, update.keys)
        metrics = (edit_metrics(eval_before, edit_predictions(edited, self.tokenizer, prompts, target_ids), target_ids)
                   if measure else None)
        return edited, result(
            edited, "edited", layer_used, layer_source, update_norm=float(update.matrix().norm()),
            delta_norm=float(update.delta.norm()), v_steps=steps, metrics=metrics,
            locate=located.to_dict() if located else None, weight_name=weight_name,
            context_facts=tuple(f.sentence() for f in prompts.context_facts),
            kl_facts=tuple(f.sentence() for f in prompts.kl_facts) if hp.kl_factor > 0 else (),
            _saved_weight=None if copy_model else saved, _update=update,
        )

    @staticmethod
    def restore(model: PreTrainedModel, result: EditResult) -> None:
        """Undo an in-place edit (`copy_model=False`): put the saved weight back, bit for bit."""
        if result._saved_weight is None:
            raise InputError("this EditResult holds no saved weight (it was made with copy_model=True or changed nothing)")
        with torch.no_grad():
            model.get_submodule(result.weight_name).weight.copy_(result._saved_weight)

    # ------------------------------------------------------------------ steps

    def _answer_length(self, s: str, r: str, original: str | None, fallback: int) -> int:
        """Tokens to decode for the model's current answer: those of `original`, else of the KG's object for (s, r),
        else `fallback` (the target's; 1 for the word tokenizer in every case)."""
        known = original or (self.kg.object_of(s, r) if self.kg else None)
        return len(object_token_ids(self.tokenizer, known)) if known else fallback

    @functools.cached_property
    def tracer(self) -> CausalTracer:
        """The tracer that locates edits (built once: its noise scale comes from the entity embeddings, which ROME
        never changes)."""
        subjects = sorted({f.s for f in self.kg.facts}) if self.kg else None
        return CausalTracer(self.model, self.tokenizer, self.device, subjects=subjects, speed=self.speed)

    def _locate(self, s: str, r: str) -> LocateResult:
        """The MLP layer with the largest indirect effect at the edit position (hparams.fact_token)."""
        hp = self.hparams
        trace = self.tracer.trace_important_states(s, r, None, hp.locate_noise_level, hp.locate_num_samples, "mlp",
                                                   hp.locate_window, seed=hp.seed)
        return LocateResult.from_trace(trace, hp.fact_token)

    def _retry_layers(self, located: LocateResult | None, tried: int) -> list[int]:
        """The next-best located layers (by MLP indirect effect) to try when the edit at `tried` fails."""
        if located is None:
            return []
        order = sorted(range(len(located.effects)), key=lambda l: (-located.effects[l], l))
        return [l for l in order if l != tried][: self.hparams.layer_retries]

    def forget_past_edits(self) -> None:
        """Drop the remembered keys of earlier in-place edits (e.g. after restoring the weights they changed)."""
        self.covariance.forget()

    def _edit(self, model: PreTrainedModel, prompts: RewriteSet, layer: int,
              target_ids: tuple[int, ...]) -> tuple[str, torch.Tensor, RankOneUpdate, int]:
        """Compute and apply the update to `model`; returns (weight name, saved weight, update, steps)."""
        hp = self.hparams
        layout = ModelLayout.of(model)  # `model` may be a copy: its own modules, not self.model's
        module = layout.mlp_out(layer)
        weight_name = layout.paths.mlp_out.format(layer)
        keys = compute_keys(model, self.tokenizer, prompts.rewrite, layer, hp.fact_token, target_ids, self.speed)  # (m, n, d_ff)
        weights = torch.tensor(prompts.weights, dtype=torch.float64).float()  # (n_rewrite,): k* and the NLL
        piece_keys = compute_k_star(keys, weights)  # (m, d_ff)
        precondition = self.covariance.preconditioner(model, layer, piece_keys.shape[1])  # x -> C^-1 x (or P x, x)
        denominator_keys = piece_keys if hp.key_mode == "consistent" else keys[:, 0]
        k_star, k_denominator, u, denominator = compute_u(piece_keys, denominator_keys, precondition, layer)
        delta, steps = compute_delta(model, self.tokenizer, hp, prompts, weights, layer, target_ids, u, denominator,
                                     self.speed)
        update = RankOneUpdate(k_star=k_star, key=k_denominator, u=u, delta=delta.double().cpu(), keys=piece_keys)
        weight = module.weight
        saved = weight.detach().clone()
        apply_update(module, update.matrix())
        return weight_name, saved, update, steps
