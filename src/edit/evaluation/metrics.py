"""Per-edit metrics in the KG setting, the KG counterpart of CounterFact's, on held-out facts.

A `FactSplit` divides the KG: the methods use the allowed facts (KL prompts, context prefixes, fact-prompt
statistics), and every figure below but `specificity_seen` is measured on held-out facts only. For edit s r: o -> o*:

efficacy                   o* is top-1 after `"s r"`; efficacy_margin = p(o*) - p(o) there
paraphrase                 o* is top-1 after `"s r'"`, r' the relation's alias (where the corpus has one); its margin
context_robustness         o* is top-1 after `"s r"` behind held-out KG facts as context prefixes; context_margin
paraphrase_in_context      the alias prompt behind the same prefixes
specificity_neighbourhood  other subjects' facts with relation r and true object o (CounterFact's neighbourhood, the
                           hardest to keep) keep their top-1; neighbourhood_margin = p(o) - p(o*) on them
specificity_relation       other subjects' facts with relation r (any object) keep their top-1
specificity_subject        the subject's other held-out facts keep their top-1
specificity_random         random held-out facts of other subjects keep their top-1
retention                  accuracy over the held-out facts (edited pairs left out), before and after
specificity_seen           the subject's facts the method's KL term held in place (its `kl_facts`) keep their top-1:
                           measured on what the method optimised, so not a held-out figure
num_scored_seen            how many of the facts scored or used as prefixes above the method declared it used as
                           context prefixes or KL prompts (0 under a split). Corpus statistics hold every training
                           sentence, so every fact: no split can hold facts out of them
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import AbstractSet as Set, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.evaluation.prompt_probe import PromptProbe
from src.edit.evaluation.requests import EditRequest
from src.edit.model.speedups import FAST, SpeedPaths
from src.edit.prompts.encoding import single_token_id
from src.edit.prompts.kg_context import prefix_text
from src.kg.graph import Fact, query_text
from src.kg.split import FactSplit
from src.utils.errors import InputError
from src.utils.seeding import stable_words


@dataclass(frozen=True)
class EvalCase:
    """What is measured for one request, fixed before any edit. Row indices point into the evaluator's scored
    (held-out) facts.

    prefix_candidates: held-out facts of other subjects in order; the first `num_prefixes` the method did not use
    are the context prefixes (without a split a method may have used some)."""

    request: EditRequest
    prefix_candidates: tuple[Fact, ...]
    alias: str | None
    neighbourhood: tuple[int, ...]
    same_relation: tuple[int, ...]
    subject_facts: tuple[int, ...]
    random_facts: tuple[int, ...]


@dataclass(frozen=True)
class EditRecord:
    """Metrics of one edit (the module docstring; fractions in [0, 1], None: nothing to measure). update_norm:
    Frobenius norm of the weight change of the method call that made the edit (shared by all requests of a batch);
    seconds: the method's time per request; used_context / used_kl: the facts (sentences) the method declared it
    used as context prefixes and KL prompts, so that a run directory shows what each edit saw."""

    index: int
    method: str
    mode: str
    request: EditRequest
    efficacy: bool
    efficacy_margin: float
    target_prob_before: float
    target_prob_after: float
    old_prob_before: float
    old_prob_after: float
    paraphrase: float | None
    paraphrase_margin: float | None
    context_robustness: float | None
    context_margin: float | None
    paraphrase_in_context: float | None
    specificity_neighbourhood: float | None
    neighbourhood_margin: float | None
    specificity_relation: float | None
    specificity_subject: float | None
    specificity_random: float | None
    specificity_seen: float | None
    retention_before: float | None
    retention_after: float | None
    num_scored_seen: int
    update_norm: float
    seconds: float
    layers: tuple[int, ...]
    steps: int
    used_context: tuple[str, ...] = ()
    used_kl: tuple[str, ...] = ()
    kind: str = field(default="edit", init=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["request"] = self.request.to_dict()
        for name in ("layers", "used_context", "used_kl"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "EditRecord":
        fields = {k: v for k, v in data.items() if k != "kind"}
        fields["request"] = EditRequest(**fields["request"])
        for name in ("layers", "used_context", "used_kl"):
            if name in fields:
                fields[name] = tuple(fields[name])
        return cls(**fields)

    @property
    def retention_drop_points(self) -> float | None:
        """(before - after) in percentage points."""
        if self.retention_before is None or self.retention_after is None:
            return None
        return 100.0 * (self.retention_before - self.retention_after)


@dataclass(frozen=True)
class CheckpointRecord:
    """Sequential mode, after `num_edits` in-place edits: retention over the held-out facts (edited pairs left
    out), the share of past edits still top-1, and of past edits' context prompts with the target top-1. One
    model state, not independent draws: reported without intervals."""

    method: str
    num_edits: int
    retention: float
    past_efficacy: float | None
    past_context_robustness: float | None
    kind: str = field(default="checkpoint", init=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CheckpointRecord":
        return cls(**{k: v for k, v in data.items() if k != "kind"})


@dataclass(frozen=True)
class RetentionRecord:
    """Batch mode: each held-out fact (edited pairs left out) right (1) or wrong (0) before and after the one
    call that made every edit, as strings of 0 and 1 in the evaluator's order, for an interval over facts."""

    method: str
    before: str
    after: str
    kind: str = field(default="retention", init=False)

    def __post_init__(self) -> None:
        if len(self.before) != len(self.after) or set(self.before + self.after) - {"0", "1"}:
            raise InputError(f"retention record of {self.method}: before and after must be strings of 0 and 1 of one "
                             f"length, got lengths {len(self.before)} and {len(self.after)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RetentionRecord":
        return cls(**{k: v for k, v in data.items() if k != "kind"})

    def drops_points(self) -> np.ndarray:
        """(n_facts,) per-fact change before - after, in percentage points (100, 0 or -100)."""
        before = np.frombuffer(self.before.encode(), dtype=np.uint8) - ord("0")
        after = np.frombuffer(self.after.encode(), dtype=np.uint8) - ord("0")
        return 100.0 * (before.astype(np.float64) - after)


def share(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


class KGEvaluator:
    """Measures edits against one KG: `facts` and relation `aliases`; `split` says which facts the methods may use
    (scored: the others; None: every fact is scored, and a method may have seen some: `num_scored_seen` counts them).

    Build once per run: the scored prompts are tokenized once and the unedited model's predictions computed once.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact],
                 aliases: dict[str, str] | None = None, num_prefixes: int = 5, num_neighbors: int = 20,
                 num_random: int = 20, seed: int = 0, speed: SpeedPaths = FAST,
                 split: FactSplit | None = None) -> None:
        self.tokenizer, self.speed = tokenizer, speed
        self.all_facts = list(facts)
        self._all_pairs = {(f.s, f.r) for f in self.all_facts}
        self.facts = list(split.held_out(facts)) if split else list(facts)  # the scored facts
        if not self.facts:
            raise InputError("the split holds out no fact of the KG; nothing to score")
        self.index = {(f.s, f.r): i for i, f in enumerate(self.facts)}
        self._by_subject: dict[str, list[int]] = {}
        self._by_relation: dict[str, list[int]] = {}
        self._by_relation_object: dict[tuple[str, str], list[int]] = {}
        for i, f in enumerate(self.facts):
            self._by_subject.setdefault(f.s, []).append(i)
            self._by_relation.setdefault(f.r, []).append(i)
            self._by_relation_object.setdefault((f.r, f.o), []).append(i)
        self.aliases = dict(aliases or {})
        self.num_prefixes, self.num_neighbors, self.num_random, self.seed = num_prefixes, num_neighbors, num_random, seed
        self.kg_probe = PromptProbe(tokenizer, [f.prompt() for f in self.facts], speed=speed)
        object_ids = {o: single_token_id(tokenizer, o, "object") for o in sorted({f.o for f in self.all_facts})}
        self.answers = torch.tensor([object_ids[f.o] for f in self.facts])
        self.predictions_before = self.kg_probe.top1(model)
        # the facts a method may have held in place, and their top-1 before any edit (without a split: the scored ones)
        seeable = split.allowed(self.all_facts) if split else self.facts
        seeable_top = (PromptProbe(tokenizer, [f.prompt() for f in seeable], speed=speed).top1(model) if split
                       else self.predictions_before)
        self._seeable = {f.sentence(): f for f in seeable}
        self._seeable_before = dict(zip(self._seeable, seeable_top.tolist()))
        unk = tokenizer.unk_token_id
        self._known = lambda word: unk is None or unk not in tokenizer(word, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ cases

    def case(self, request: EditRequest) -> EvalCase:
        """Seeded per (seed, subject, relation): the same request gets the same prompts in every method and mode."""
        if (request.s, request.r) not in self._all_pairs:
            raise InputError(f"request '{request.s} {request.r}' is not a fact of the KG")
        rng = np.random.default_rng(stable_words("eval-case", self.seed, request.s, request.r))
        own = set(self._by_subject.get(request.s, []))
        others = [i for i in range(len(self.facts)) if i not in own]
        same_relation = [i for i in self._by_relation.get(request.r, []) if i not in own]
        neighbourhood = [i for i in self._by_relation_object.get((request.r, request.o), []) if i not in own]

        def sample(pool: list[int], n: int) -> tuple[int, ...]:
            return tuple(sorted(pool[j] for j in rng.choice(len(pool), size=min(n, len(pool)), replace=False))) if pool else ()

        size = min(self.num_prefixes + 20, len(others))
        candidates = [self.facts[others[j]] for j in rng.choice(len(others), size=size, replace=False)] if others else []
        alias = self.aliases.get(request.r)
        return EvalCase(
            request=request, prefix_candidates=tuple(candidates),
            alias=alias if alias is not None and self._known(alias) else None,
            neighbourhood=sample(neighbourhood, self.num_neighbors),
            same_relation=sample(same_relation, self.num_neighbors),
            subject_facts=tuple(i for i in own if self.facts[i].r != request.r),
            random_facts=sample(others, self.num_random),
        )

    def prefixes(self, case: EvalCase, used_context: Sequence[str],
                 edited: Set[tuple[str, str]] = frozenset()) -> list[Fact]:
        """The case's context prefixes: its first `num_prefixes` candidates that the method did not use itself and
        that no edit of the same call rewrites."""
        used = set(used_context)
        return [f for f in case.prefix_candidates
                if f.sentence() not in used and (f.s, f.r) not in edited][: self.num_prefixes]

    def context_prompts(self, case: EvalCase, used_context: Sequence[str],
                        edited: Set[tuple[str, str]] = frozenset()) -> tuple[list[str], list[str]]:
        """(prompts behind the prefixes, alias prompts behind the same prefixes)."""
        q, texts = case.request, [prefix_text(f) for f in self.prefixes(case, used_context, edited)]
        return [t + query_text(q.s, q.r) for t in texts], ([t + query_text(q.s, case.alias) for t in texts]
                                                            if case.alias else [])

    def scored_facts(self, case: EvalCase, used_context: Sequence[str],
                     edited: Set[tuple[str, str]] = frozenset()) -> set[str]:
        """Sentences of every fact the case scores or puts in a prompt (prefixes), for the leakage count."""
        rows = {*case.neighbourhood, *case.same_relation, *case.subject_facts, *case.random_facts}
        return ({self.facts[i].sentence() for i in rows}
                | {f.sentence() for f in self.prefixes(case, used_context, edited)})

    # ------------------------------------------------------------------ measuring

    def kept_rows(self, edited: set[tuple[str, str]]) -> torch.Tensor:
        """(n_scored,) bool: the scored facts that no edit rewrote."""
        keep = torch.ones(len(self.facts), dtype=torch.bool)
        keep[[self.index[pair] for pair in edited if pair in self.index]] = False
        return keep

    def retention(self, predictions: torch.Tensor, edited: set[tuple[str, str]]) -> float:
        keep = self.kept_rows(edited)
        return float((predictions[keep] == self.answers[keep]).float().mean())

    def retention_record(self, method: str, predictions_after: torch.Tensor, edited: set[tuple[str, str]],
                         predictions_before: torch.Tensor | None = None) -> RetentionRecord:
        before = self.predictions_before if predictions_before is None else predictions_before
        keep = self.kept_rows(edited)
        as_text = lambda right: "".join("1" if x else "0" for x in right.tolist())  # noqa: E731
        return RetentionRecord(method, as_text(before[keep] == self.answers[keep]),
                               as_text(predictions_after[keep] == self.answers[keep]))

    def measure(self, model_before_probs: torch.Tensor, model: PreTrainedModel, cases: Sequence[EvalCase],
                used_contexts: Sequence[Sequence[str]], predictions_after: torch.Tensor | None,
                edited: set[tuple[str, str]], used_kl: Sequence[Sequence[str]],
                predictions_before: torch.Tensor | None = None) -> list[dict]:
        """Metric fields (see `EditRecord`) for `cases` edited together in `model`.

        model_before_probs: (len(cases), vocab) next-token probabilities of the bare prompts before the edit.
        used_contexts / used_kl: per case, the facts (sentences) the method used as context prefixes and held in
        place with its KL term (`RequestInfo`). predictions_after / predictions_before: top-1 on the scored facts
        after and before (default: the unedited model's); predictions_after None leaves specificity and retention
        unmeasured (None)."""
        before = self.predictions_before if predictions_before is None else predictions_before
        edited_rows = {self.index[pair] for pair in edited if pair in self.index}
        measured = predictions_after is not None
        groups = []  # per case: prompt texts by group, in one flat batch (specificity's only where it is measured)
        for case, used, kl in zip(cases, used_contexts, used_kl):
            prefixed, alias_prefixed = self.context_prompts(case, used, edited)
            q = case.request
            groups.append({
                "bare": [query_text(q.s, q.r)], "alias": [query_text(q.s, case.alias)] if case.alias else [],
                "prefixed": prefixed, "alias_prefixed": alias_prefixed,
                "neighbourhood": [self.facts[j].prompt() for j in case.neighbourhood if j not in edited_rows]
                if measured else [],
                "seen": [self._seeable[s].prompt() for s in kl if s in self._seeable] if measured else [],
            })
        flat = [p for g in groups for name in g for p in g[name]]
        probs = PromptProbe(self.tokenizer, flat, speed=self.speed).probabilities(model)
        top = probs.argmax(-1)
        retention_before = self.retention(before, edited) if measured else None
        retention_after = self.retention(predictions_after, edited) if measured else None
        out, start = [], 0
        for i, (case, g, used, kl) in enumerate(zip(cases, groups, used_contexts, used_kl)):
            q = case.request
            target, old = single_token_id(self.tokenizer, q.target), single_token_id(self.tokenizer, q.o, "object")
            rows = {}
            for name, prompts in g.items():
                rows[name] = torch.arange(start, start + len(prompts))
                start += len(prompts)

            def hits(name: str) -> float | None:
                return share((top[rows[name]] == target).tolist())

            def margin(name: str, high: int, low: int) -> float | None:
                return mean_or_none((probs[rows[name], high] - probs[rows[name], low]).tolist())

            def kept(indices: Sequence[int]) -> float | None:
                if not measured:
                    return None
                return share([bool(predictions_after[j] == before[j]) for j in indices if j not in edited_rows])

            seen_before = [self._seeable_before[s] for s in kl if s in self._seeable]
            scored = self.scored_facts(case, used, edited)
            bare = int(rows["bare"][0])
            out.append({
                "efficacy": bool(top[bare] == target),
                "efficacy_margin": float(probs[bare, target] - probs[bare, old]),
                "target_prob_before": float(model_before_probs[i, target]),
                "target_prob_after": float(probs[bare, target]),
                "old_prob_before": float(model_before_probs[i, old]),
                "old_prob_after": float(probs[bare, old]),
                "paraphrase": hits("alias"),
                "paraphrase_margin": margin("alias", target, old),
                "context_robustness": hits("prefixed"),
                "context_margin": margin("prefixed", target, old),
                "paraphrase_in_context": hits("alias_prefixed"),
                "specificity_neighbourhood": kept(case.neighbourhood),
                "neighbourhood_margin": margin("neighbourhood", old, target) if measured else None,
                "specificity_relation": kept(case.same_relation),
                "specificity_subject": kept(case.subject_facts),
                "specificity_random": kept(case.random_facts),
                "specificity_seen": share([int(top[j]) == b for j, b in zip(rows["seen"].tolist(), seen_before)])
                if measured else None,
                "retention_before": retention_before,
                "retention_after": retention_after,
                "num_scored_seen": len(scored & (set(used) | set(kl))),
            })
        return out
