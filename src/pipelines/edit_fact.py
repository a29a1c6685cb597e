"""One edit end to end, for `run_editing_single.py`: locate, edit, verify, write the results directory.

Results directory:
  edit_result.json      the EditResult, run parameters, top predictions before/after, unrelated facts before/after
  locating_result.png   the fact's causal trace (three kinds) with the edited layer marked
  editing_result.png    before vs after: top predictions for `s r`, and unrelated facts keeping their answers
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from src.edit.causal_tracing import KINDS, TraceResult
from src.edit.prompts.decoding import decode_ids, greedy_decode, sequence_probs
from src.edit.prompts.kg_context import KGContext
from src.edit.prompts.batch import PromptBatch
from src.edit.prompts.encoding import check_known_words, encode_fact_prompt
from src.edit.rome import ROME, EditResult
from src.kg.corpus import require_corpus_file
from src.kg.graph import Fact
from src.lm.token_ids import object_token_ids
from src.lm.model import load_model
from src.utils.errors import InputError
from src.edit.rank_one.key_statistics import statistics_cache_limit
from src.utils.io import atomic_directory, atomic_write_json, require_writable_dir
from src.viz.editing import plot_edit
from src.viz.tracing import plot_trace

RESULT_FILE = "edit_result.json"


@dataclass(frozen=True)
class SingleEditConfig:
    model_dir: str
    subject: str
    relation: str
    target: str
    kg_corpus: str | None = None
    original: str | None = None
    layer: int | None = None
    output_dir: str = "outputs/editing_results"
    device: str = "auto"
    dtype: str = "float32"
    hparams: str | None = None
    save_model: str | None = None
    top_k: int = 5
    num_unrelated: int = 6


@dataclass(frozen=True)
class Prediction:
    prompt: str
    top: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "top": [{"token": t, "prob": p} for t, p in self.top]}


@dataclass(frozen=True)
class SingleEditReport:
    result: EditResult
    before: Prediction
    after: Prediction
    unrelated: tuple[dict, ...]
    traces: dict[str, TraceResult] = field(repr=False)
    output_dir: Path | None = None

    def to_dict(self, config: SingleEditConfig) -> dict:
        return {
            "parameters": {k: v for k, v in config.__dict__.items()},
            "result": self.result.to_dict(),
            "prediction_before": self.before.to_dict(),
            "prediction_after": self.after.to_dict(),
            "unrelated_facts": list(self.unrelated),
        }


def top_predictions(model, tokenizer, prompt_ids: list[int], k: int, device) -> tuple[tuple[str, float], ...]:
    with torch.no_grad():
        probs = torch.softmax(PromptBatch.for_tokenizer([prompt_ids], tokenizer, device).last_logits(model)[0], -1)
    values, ids = probs.topk(k)
    return tuple((tokenizer.convert_ids_to_tokens(int(i)), float(v)) for v, i in zip(values, ids))


def validate_output_paths(config: SingleEditConfig) -> None:
    require_writable_dir(config.output_dir)
    statistics_cache_limit()  # a bad $KG_ROME_CACHE_LIMIT fails here, not after the statistics are computed
    if config.save_model is not None:
        require_writable_dir(Path(config.save_model).parent, "--save-model's parent directory")
    if config.save_model is not None and Path(config.save_model).resolve() == Path(config.model_dir).resolve():
        raise InputError(f"--save-model {config.save_model} is the input model directory; choose another directory "
                         "(the input model is never modified)")
    if config.kg_corpus is not None:
        require_corpus_file(config.kg_corpus)


def run_single_edit(config: SingleEditConfig) -> SingleEditReport:
    """Everything is validated before anything is written; outputs are written atomically."""
    validate_output_paths(config)
    model, tokenizer = load_model(config.model_dir, device=config.device, dtype=config.dtype)
    check_known_words(tokenizer, subject=config.subject, relation=config.relation, target=config.target,
                      original=config.original)
    rome = ROME(model, tokenizer, device=config.device, kg_corpus_path=config.kg_corpus, hparams=config.hparams)
    if config.layer is not None:
        rome.layout.check_layer(config.layer)
    bare = encode_fact_prompt(tokenizer, config.subject, config.relation)
    before = Prediction(bare.text, top_predictions(model, tokenizer, list(bare.input_ids), config.top_k, rome.device))
    edited, result = rome.apply_edit(config.subject, config.relation, config.target, copy_model=True,
                                     layer=config.layer, original=config.original)
    after = Prediction(bare.text, top_predictions(edited, tokenizer, list(bare.input_ids), config.top_k, rome.device))
    if result.status == "unchanged":
        return SingleEditReport(result, before, after, (), {}, None)

    unrelated = unrelated_facts(rome.kg, config.subject, config.relation, config.num_unrelated)
    # the whole object (every piece for a subword tokenizer), greedy, before and after
    prompts = [encode_fact_prompt(tokenizer, fact.s, fact.r) for fact in unrelated]
    lengths = [len(object_token_ids(tokenizer, fact.o)) for fact in unrelated]
    before_ids, after_ids = (greedy_decode(m, prompts, lengths) for m in (model, edited))
    rows = []
    for fact, prompt, was, now in zip(unrelated, prompts, before_ids, after_ids):
        (was_prob,), (now_prob,) = (sequence_probs(model, tokenizer, prompt, [was]),
                                    sequence_probs(edited, tokenizer, prompt, [now]))
        rows.append({**fact.to_dict(), "before": decode_ids(tokenizer, was), "before_prob": was_prob,
                     "after": decode_ids(tokenizer, now), "after_prob": now_prob, "kept": was == now})
    traces = rome.tracer.trace_kinds(config.subject, config.relation, result.original_prediction, kinds=KINDS,
                                window=rome.hparams.locate_window, seed=rome.hparams.seed)
    report = SingleEditReport(result, before, after, tuple(rows), traces, Path(config.output_dir))
    write_report(report, config, edited, tokenizer)
    return report


def unrelated_facts(kg: KGContext | None, subject: str, relation: str, n: int) -> list[Fact]:
    """Half from the subject's other facts, the rest from other subjects (seeded)."""
    if kg is None:
        return []
    own = [f for f in kg.facts_of(subject) if f.r != relation][: n // 2]
    others = kg.sample_facts(n - len(own), np.random.default_rng(0), exclude_subjects={subject})
    return own + others


def write_report(report: SingleEditReport, config: SingleEditConfig, edited, tokenizer) -> None:
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result = report.result
    title = (f"{config.subject} {config.relation} -> {result.original_prediction}: traced; "
             f"edited layer {result.layer} ({result.layer_source}, {result.fact_token} token)")
    plot_trace(report.traces, output_dir / "locating_result.png", best_layer=result.layer, title=title)
    plot_edit(report.before.top, report.after.top, result, report.unrelated, output_dir / "editing_result.png")
    atomic_write_json(output_dir / RESULT_FILE, report.to_dict(config))
    if config.save_model:
        with atomic_directory(config.save_model) as tmp:
            edited.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "edit_result.json", report.to_dict(config))
