"""Per-edit metrics in the KG setting (the KG counterpart of CounterFact's efficacy / paraphrase / neighborhood):

efficacy        the target is top-1 after `"s r"`; margin = p(target) - p(old object) after the edit
generalization  the target is top-1 behind KG context prefixes the method did not use (`prefix`) and with the
                relation's alias (`alias`, where the corpus has one)
specificity     facts whose top-1 prediction stays as before the edit: same relation, other subjects (`relation`);
                the subject's other facts (`subject`); random facts of other subjects (`random`)
retention       whole-KG fact accuracy (edited (s, r) pairs left out) before and after
seen            `specificity_subject_seen`: the share of the subject's facts scored that the method's KL term held in
                place (its `kl_facts`): specificity on them is partly what the method optimised, not held out
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.evaluation.requests import EditRequest
from src.edit.prompts.kg_context import prefix_text
from src.edit.evaluation.prompt_probe import PromptProbe
from src.edit.model.speedups import FAST, SpeedPaths
from src.edit.prompts.encoding import single_token_id
from src.kg.graph import Fact, query_text
from src.utils.errors import InputError


@dataclass(frozen=True)
class EvalCase:
    """What is measured for one request, fixed before any edit. Indices point into the evaluator's fact list.

    prefix_candidates: context facts in order; the first `num_prefixes` the method did not use are measured."""

    request: EditRequest
    prefix_candidates: tuple[Fact, ...]
    alias: str | None
    relation_neighbors: tuple[int, ...]
    subject_facts: tuple[int, ...]
    random_facts: tuple[int, ...]


@dataclass(frozen=True)
class EditRecord:
    """Metrics of one edit (fractions in [0, 1]; None: nothing to measure). retention_* are KG fact accuracies with
    the edited pairs left out; update_norm: Frobenius norm of the weight change of the method call that made the edit
    (shared by all requests of a batch); seconds: the method's time per request; specificity_subject_seen: the share
    of the subject's facts scored that the method saw (its KL prompts)."""

    index: int
    method: str
    mode: str
    request: EditRequest
    efficacy: bool
    margin: float
    target_prob_before: float
    target_prob_after: float
    old_prob_before: float
    old_prob_after: float
    generalization_prefix: float | None
    generalization_alias: float | None
    specificity_relation: float | None
    specificity_subject: float | None
    specificity_random: float | None
    retention_before: float | None
    retention_after: float | None
    update_norm: float
    seconds: float
    layers: tuple[int, ...]
    steps: int
    specificity_subject_seen: float | None = None
    kind: str = field(default="edit", init=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["request"] = self.request.to_dict()
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "EditRecord":
        fields = {k: v for k, v in data.items() if k != "kind"}
        fields["request"] = EditRequest(**fields["request"])
        fields["layers"] = tuple(fields["layers"])
        return cls(**fields)

    @property
    def retention_drop_points(self) -> float | None:
        """(before - after) in percentage points."""
        if self.retention_before is None or self.retention_after is None:
            return None
        return 100.0 * (self.retention_before - self.retention_after)


@dataclass(frozen=True)
class CheckpointRecord:
    """Sequential mode, after `num_edits` in-place edits: KG retention (edited pairs left out), the share of past
    edits still top-1, and of past edits' held-out prefix prompts with the target top-1."""

    method: str
    num_edits: int
    retention: float
    past_efficacy: float | None
    past_generalization: float | None
    kind: str = field(default="checkpoint", init=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CheckpointRecord":
        return cls(**{k: v for k, v in data.items() if k != "kind"})


def share(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None


class KGEvaluator:
    """Measures edits against one KG: `facts` (whole-KG retention and specificity) and relation `aliases`.

    Build once per run: the whole-KG prompts are tokenized once and the unedited model's predictions computed once.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact],
                 aliases: dict[str, str] | None = None, num_prefixes: int = 5, num_neighbors: int = 20,
                 num_random: int = 20, seed: int = 0, speed: SpeedPaths = FAST) -> None:
        self.tokenizer, self.speed = tokenizer, speed
        self.facts = list(facts)
        self.index = {(f.s, f.r): i for i, f in enumerate(self.facts)}
        self._by_subject: dict[str, list[int]] = {}
        self._by_relation: dict[str, list[int]] = {}
        for i, f in enumerate(self.facts):
            self._by_subject.setdefault(f.s, []).append(i)
            self._by_relation.setdefault(f.r, []).append(i)
        self.aliases = dict(aliases or {})
        self.num_prefixes, self.num_neighbors, self.num_random, self.seed = num_prefixes, num_neighbors, num_random, seed
        self.kg_probe = PromptProbe(tokenizer, [f.prompt() for f in self.facts], speed=speed)
        object_ids = {o: single_token_id(tokenizer, o, "object") for o in sorted({f.o for f in self.facts})}
        self.answers = torch.tensor([object_ids[f.o] for f in self.facts])
        self.predictions_before = self.kg_probe.top1(model)
        unk = tokenizer.unk_token_id
        self._known = lambda word: unk is None or unk not in tokenizer(word, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ cases

    def case(self, request: EditRequest) -> EvalCase:
        """Seeded per (seed, subject, relation): the same request gets the same prompts in every method and mode."""
        if (request.s, request.r) not in self.index:
            raise InputError(f"request '{request.s} {request.r}' is not a fact of the KG")
        rng = np.random.default_rng([self.seed, 13, *[ord(c) for c in f"{request.s}|{request.r}"]])
        own = set(self._by_subject[request.s])
        others = [i for i in range(len(self.facts)) if i not in own]
        same_relation = [i for i in self._by_relation[request.r] if i not in own]

        def sample(pool: list[int], n: int) -> tuple[int, ...]:
            return tuple(sorted(pool[j] for j in rng.choice(len(pool), size=min(n, len(pool)), replace=False))) if pool else ()

        size = min(self.num_prefixes + 20, len(others))
        candidates = [self.facts[others[j]] for j in rng.choice(len(others), size=size, replace=False)] if others else []
        alias = self.aliases.get(request.r)
        return EvalCase(
            request=request, prefix_candidates=tuple(candidates),
            alias=alias if alias is not None and self._known(alias) else None,
            relation_neighbors=sample(same_relation, self.num_neighbors),
            subject_facts=tuple(i for i in self._by_subject[request.s] if self.facts[i].r != request.r),
            random_facts=sample(others, self.num_random),
        )

    def probe_prompts(self, case: EvalCase, used_context: Sequence[str]) -> tuple[list[str], list[str]]:
        """(held-out prefixed prompts, alias prompts) for a case, leaving out the method's context facts."""
        used = set(used_context)
        held_out = [f for f in case.prefix_candidates if f.sentence() not in used][: self.num_prefixes]
        q = case.request
        prefixed = [prefix_text(f) + query_text(q.s, q.r) for f in held_out]
        return prefixed, ([f"{q.s} {case.alias}"] if case.alias else [])

    # ------------------------------------------------------------------ measuring

    def retention(self, predictions: torch.Tensor, edited: set[tuple[str, str]]) -> float:
        keep = torch.ones(len(self.facts), dtype=torch.bool)
        keep[[self.index[pair] for pair in edited if pair in self.index]] = False
        return float((predictions[keep] == self.answers[keep]).float().mean())

    def measure(self, model_before_probs: torch.Tensor, model: PreTrainedModel, cases: Sequence[EvalCase],
                used_contexts: Sequence[Sequence[str]], predictions_after: torch.Tensor | None,
                edited: set[tuple[str, str]], predictions_before: torch.Tensor | None = None,
                used_kl: Sequence[Sequence[str]] | None = None) -> list[dict]:
        """Metric fields (see `EditRecord`) for `cases` edited together in `model`.

        model_before_probs: (len(cases), vocab) next-token probabilities of the bare prompts before the edit.
        predictions_after / predictions_before: whole-KG top-1 after and before (default: the unedited model's);
        predictions_after None leaves specificity and retention unmeasured (None). used_kl: per case, the facts
        (sentences) the method's KL term used (default none)."""
        before = self.predictions_before if predictions_before is None else predictions_before
        edited_rows = {self.index[pair] for pair in edited if pair in self.index}
        prompt_sets = [self.probe_prompts(c, used) for c, used in zip(cases, used_contexts)]
        bare = [f"{c.request.s} {c.request.r}" for c in cases]
        flat = bare + [p for prefixed, alias in prompt_sets for p in prefixed + alias]
        probs = PromptProbe(self.tokenizer, flat, speed=self.speed).probabilities(model)
        top = probs.argmax(-1)
        measured = predictions_after is not None
        retention_before = self.retention(before, edited) if measured else None
        retention_after = self.retention(predictions_after, edited) if measured else None
        out, start = [], len(cases)
        for i, (case, (prefixed, alias)) in enumerate(zip(cases, prompt_sets)):
            q = case.request
            target, old = single_token_id(self.tokenizer, q.target), single_token_id(self.tokenizer, q.o, "object")
            prefix_top = top[start : start + len(prefixed)].tolist()
            alias_top = top[start + len(prefixed) : start + len(prefixed) + len(alias)].tolist()
            start += len(prefixed) + len(alias)

            def kept(indices: Sequence[int]) -> float | None:
                if not measured:
                    return None
                rows = [j for j in indices if j not in edited_rows]
                return share([bool(predictions_after[j] == before[j]) for j in rows])

            seen = set(used_kl[i]) if used_kl is not None else set()
            subject_rows = [j for j in case.subject_facts if j not in edited_rows]

            out.append({
                "efficacy": bool(top[i] == target),
                "margin": float(probs[i, target] - probs[i, old]),
                "target_prob_before": float(model_before_probs[i, target]),
                "target_prob_after": float(probs[i, target]),
                "old_prob_before": float(model_before_probs[i, old]),
                "old_prob_after": float(probs[i, old]),
                "generalization_prefix": share([p == target for p in prefix_top]),
                "generalization_alias": share([p == target for p in alias_top]),
                "specificity_relation": kept(case.relation_neighbors),
                "specificity_subject": kept(case.subject_facts),
                "specificity_random": kept(case.random_facts),
                "retention_before": retention_before,
                "retention_after": retention_after,
                "specificity_subject_seen": share([self.facts[j].sentence() in seen for j in subject_rows])
                if measured else None,
            })
        return out
