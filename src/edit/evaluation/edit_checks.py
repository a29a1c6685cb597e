"""The metrics `ROME.apply_edit` reports for one edit: greedy predictions on its evaluation prompts before and after.

(The evaluation of many edits and methods is `src.edit.evaluation.metrics`.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.evaluation.metrics import share
from src.edit.prompts.decoding import greedy_decode
from src.edit.prompts.encoding import encode_fact_prompt
from src.edit.prompts.rewrite import RewriteSet
from src.lm.token_ids import object_token_ids

Predictions = dict[str, list[tuple[int, ...]]]  # prompt group -> greedy token ids per prompt


@dataclass(frozen=True)
class EditMetrics:
    """Fractions over the edit's evaluation prompts (None when there was nothing to measure).

    context_robustness: target is top-1 behind context prefixes NOT used to compute the edit.
    paraphrase: target is top-1 with the relation's alias (`R_04_alt`), where the corpus has aliases.
    specificity_subject: the subject's other facts keep their predictions (with kl_factor > 0 these are the KL
    term's own prompts, `EditResult.kl_facts`: not held out). specificity_random: facts of other subjects, drawn
    at random, do (the evaluator's `specificity_random`).
    """

    context_robustness: float | None
    paraphrase: float | None
    specificity_subject: float | None
    specificity_random: float | None
    num_prefix_prompts: int
    num_subject_facts: int
    num_random_facts: int

    def to_dict(self) -> dict:
        return asdict(self)


def edit_predictions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: RewriteSet,
                     target_ids: tuple[int, ...]) -> Predictions:
    """Greedy predictions: as long as the target behind the edited prompts, as long as each fact's object behind
    the other facts' prompts; one batched decode."""
    facts = {"subject": prompts.kl_facts, "random": prompts.random_facts}  # kl_facts: the subject's other facts
    groups = {"prefix": prompts.eval_prefix, "alias": prompts.eval_alias,
              **{name: [encode_fact_prompt(tokenizer, f.s, f.r) for f in group] for name, group in facts.items()}}
    lengths = {"prefix": [len(target_ids)] * len(prompts.eval_prefix),
               "alias": [len(target_ids)] * len(prompts.eval_alias),
               **{name: [len(object_token_ids(tokenizer, f.o)) for f in group] for name, group in facts.items()}}
    flat = [p for group in groups.values() for p in group]
    predictions = greedy_decode(model, flat, [n for name in groups for n in lengths[name]])
    out, start = {}, 0
    for name, group in groups.items():
        out[name] = predictions[start : start + len(group)]
        start += len(group)
    return out


def edit_metrics(before: Predictions, after: Predictions, target_ids: tuple[int, ...]) -> EditMetrics:
    """From `edit_predictions` of the model before and after the edit."""
    return EditMetrics(
        context_robustness=share([p == target_ids for p in after["prefix"]]),
        paraphrase=share([p == target_ids for p in after["alias"]]),
        specificity_subject=share([a == b for a, b in zip(after["subject"], before["subject"])]),
        specificity_random=share([a == b for a, b in zip(after["random"], before["random"])]),
        num_prefix_prompts=len(after["prefix"]), num_subject_facts=len(after["subject"]),
        num_random_facts=len(after["random"]),
    )
