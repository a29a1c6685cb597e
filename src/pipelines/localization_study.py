"""Does localization inform editing? (Hase et al. 2023, arXiv 2301.04213) on a KG model.

For N seeded counterfactual requests (drawn as the evaluation draws them), ROME edits each fact at every layer,
independently, scored on held-out facts under the evaluation protocol (`src.pipelines.evaluate_methods.run_method`:
efficacy and its margin, paraphrase, specificity); the true fact is traced with gaussian noise and with token
replacement, exactly and by attribution, and each trace's indirect effect is read at the layer edited and the edit
position (ROME's `fact_token`). The question: how much of edit success does the traced effect explain beyond the
layer itself? For each trace variant and kind, the efficacy margin is regressed on the layer (one indicator per layer)
and on the layer plus the effect; the gain in R^2 is the answer (Hase et al. found it near zero on GPT-J); the same for
the paraphrase and neighbourhood margins and the update norm. Also the per-fact rank correlation across layers of
effect and outcome.

Results directory:
  study_records.jsonl          one line per (request, layer): the edit's metrics and the effects at that layer
  study_summary.json           parameters, per-layer means, R^2 of layer alone and with each effect, correlations
  localization_vs_editing.png  per layer: edit metrics and mean effects; margin against effect, coloured by layer
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from src.edit.causal_tracing import KINDS, CausalTracer, TraceRequest
from src.edit.evaluation.metrics import KGEvaluator
from src.edit.evaluation.requests import draw_requests
from src.edit.methods.base import EditEnvironment
from src.edit.prompts.kg_context import KGContext
from src.edit.tracing.metrics import check_metric
from src.edit.tracing.stats import rank_correlation
from src.lm.model import load_model
from src.pipelines import defaults
from src.pipelines.evaluate_methods import EvalConfig, check_inputs, run_method
from src.pipelines.locate_sample import check_noise_and_window
from src.utils.device import resolve_device
from src.utils.errors import InputError
from src.utils.io import atomic_path, atomic_write_json
from src.viz.localization import plot_localization_vs_editing

RECORDS_FILE, SUMMARY_FILE, PLOT_FILE = "study_records.jsonl", "study_summary.json", "localization_vs_editing.png"
EDIT_METRICS = ("efficacy", "efficacy_margin", "paraphrase", "paraphrase_margin", "specificity_neighbourhood",
                "neighbourhood_margin", "specificity_random", "update_norm")
TRACE_VARIANTS = (("gaussian", "exact"), ("replace", "exact"), ("gaussian", "attribution"), ("replace", "attribution"))
# what the regressions explain: p(o*) - p(o) after the edit (the main one), the same on the paraphrase, on the
# neighbourhood p(o) - p(o*) (specificity), and the Frobenius norm of the weight change (the edit's cost)
OUTCOMES = ("efficacy_margin", "paraphrase_margin", "neighbourhood_margin", "update_norm")
OUTCOME = OUTCOMES[0]


def variant_name(corruption: str, method: str, kind: str) -> str:
    return f"{corruption}/{method}/{kind}"


@dataclass(frozen=True)
class StudyConfig:
    model_dir: str = defaults.MODEL_DIR
    kg_file: str = defaults.KG_FILE
    kg_corpus: str | None = None
    hparams: str | None = None  # ROME's YAML (default: configs/rome_gpt_small.yaml)
    num_facts: int = 20
    seed: int = 0
    output_dir: str = "outputs/localization_study"
    device: str = "auto"
    allowed_fraction: float = 0.5
    noise_level: float = 3.0
    num_noise_samples: int = 10
    window: int | None = None
    metric: str = "prob"  # what the traces measure (src.edit.tracing.metrics)

    def eval_config(self) -> EvalConfig:
        """The evaluation this study runs once per layer: ROME, independent edits, the same split and requests."""
        return EvalConfig(model_dir=self.model_dir, kg_file=self.kg_file, kg_corpus=self.kg_corpus, methods=("rome",),
                          num_edits=self.num_facts, seed=self.seed, output_dir=self.output_dir, device=self.device,
                          hparams={"rome": self.hparams} if self.hparams else {},
                          allowed_fraction=self.allowed_fraction, progress=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.num_facts < 2:
            raise InputError(f"--num-facts must be >= 2 (correlations need two facts), got {self.num_facts}")
        check_noise_and_window(self.noise_level, self.num_noise_samples, self.window)
        check_metric(self.metric)


@dataclass(frozen=True)
class StudyRecord:
    """One request edited at one layer: its held-out edit metrics and the traced effects {variant/kind: effect} of
    its true fact at that layer and the edit position."""

    index: int
    s: str
    r: str
    o: str
    target: str
    layer: int
    metrics: dict
    effects: dict

    def to_dict(self) -> dict:
        return asdict(self)


def r_squared(design: np.ndarray, outcome: np.ndarray) -> float:
    """R^2 of the least-squares fit of `outcome` (n,) on the columns of `design` (n, k) (which hold a constant)."""
    coefficients, *_ = np.linalg.lstsq(design, outcome, rcond=None)
    residual = outcome - design @ coefficients
    total = ((outcome - outcome.mean()) ** 2).sum()
    return float(1 - (residual ** 2).sum() / total) if total > 0 else float("nan")


def explained_beyond_layer(records: list[StudyRecord], num_layers: int, outcome: str = OUTCOME) -> dict:
    """Per effect: R^2 of `outcome` on layer indicators, on layer indicators + the effect, their difference, and on
    the effect alone; the mean over requests of the rank correlation across layers of effect and outcome. Records
    where the outcome was not measured (None) are left out."""
    records = [r for r in records if r.metrics[outcome] is not None]
    if not records:
        return {}
    measured = np.array([r.metrics[outcome] for r in records], dtype=np.float64)
    layers = np.eye(num_layers)[[r.layer for r in records]]  # one indicator per layer: constant included
    layer_only = r_squared(layers, measured)
    by_request: dict[int, list[StudyRecord]] = {}
    for record in records:
        by_request.setdefault(record.index, []).append(record)
    table = {}
    for name in records[0].effects:
        effect = np.array([r.effects[name] for r in records], dtype=np.float64)
        with_effect = r_squared(np.column_stack([layers, effect]), measured)
        correlations = [rank_correlation(np.array([r.effects[name] for r in rows]),
                                         np.array([r.metrics[outcome] for r in rows])) for rows in by_request.values()]
        correlations = [c for c in correlations if not np.isnan(c)]
        table[name] = {"r2_layer": layer_only, "r2_layer_and_effect": with_effect,
                       "r2_gain": with_effect - layer_only,
                       "r2_effect_alone": r_squared(np.column_stack([np.ones(len(effect)), effect]), measured),
                       "mean_rank_correlation_across_layers": float(np.mean(correlations)) if correlations else None}
    return table


def per_layer_means(records: list[StudyRecord], num_layers: int) -> dict:
    means = {}
    for layer in range(num_layers):
        rows = [r for r in records if r.layer == layer]
        values = {name: [r.metrics[name] for r in rows if r.metrics[name] is not None] for name in EDIT_METRICS}
        values.update({name: [r.effects[name] for r in rows] for name in rows[0].effects} if rows else {})
        means[layer] = {name: float(np.mean(v)) if v else None for name, v in values.items()}
    return means


def run_study(config: StudyConfig, repo_root: Path, progress: bool = True) -> dict:
    """Run the study and write its results directory; returns the summary."""
    config.validate()
    started = time.perf_counter()
    evaluation = config.eval_config()
    inputs = check_inputs(evaluation, repo_root)
    model, tokenizer = load_model(config.model_dir, device=config.device)
    device = resolve_device(config.device)
    env = EditEnvironment(corpus_path=inputs.corpus, device=device, progress=False, split=evaluation.split)
    evaluator = KGEvaluator(model, tokenizer, inputs.graph.facts, KGContext.from_corpus(inputs.corpus).aliases,
                            evaluation.num_prefixes, evaluation.num_neighbors, evaluation.num_random, config.seed,
                            split=evaluation.split)
    requests = draw_requests(inputs.graph, config.num_facts, config.seed)
    hparams = inputs.hparams["rome"]
    tracer = CausalTracer(model, tokenizer, device=device, subjects=inputs.graph.entities)
    num_layers = tracer.num_layers
    position = hparams.fact_token

    # traces of the true facts: per variant, per request {kind: TraceResult}
    effects: list[dict] = [{} for _ in requests]
    trace_requests = [TraceRequest(q.s, q.r, q.o, seed=config.seed + i) for i, q in enumerate(requests)]
    for corruption, method in TRACE_VARIANTS:
        traced = tracer.trace_many(trace_requests, config.noise_level, config.num_noise_samples, KINDS, config.window,
                                   corruption=corruption, metric=config.metric, method=method)
        for i, traces in enumerate(traced):
            for kind, trace in traces.items():
                effect = trace.indirect_effect[trace.token_index(position)]
                effects[i][variant_name(corruption, method, kind)] = [float(e) for e in effect]

    records: list[StudyRecord] = []
    for layer in tqdm(range(num_layers), desc="editing at each layer", unit="layer", disable=not progress):
        layer_hparams = replace(hparams, layer=layer, layer_retries=0)
        edited = run_method("rome", model, tokenizer, requests, "independent", evaluator, env, layer_hparams,
                            progress=False)
        for record in edited.records:
            q = record.request
            records.append(StudyRecord(
                index=record.index, s=q.s, r=q.r, o=q.o, target=q.target, layer=layer,
                metrics={name: getattr(record, name) for name in EDIT_METRICS},
                effects={name: values[layer] for name, values in effects[record.index].items()}))
    summary = {
        "parameters": {**config.to_dict(), "hparams": config.hparams or str(inputs.files["rome"]),
                       "edit_position": position},
        "num_requests": len(requests), "num_layers": num_layers, "outcomes": list(OUTCOMES),
        "num_failed_edits": sum(not r.metrics["efficacy"] for r in records),
        "per_layer": per_layer_means(records, num_layers),
        "explained_beyond_layer": {outcome: explained_beyond_layer(records, num_layers, outcome)
                                   for outcome in OUTCOMES},
        "seconds": time.perf_counter() - started,
    }
    write_study(Path(config.output_dir), records, summary, num_layers)
    return summary


def write_study(output_dir: Path, records: list[StudyRecord], summary: dict, num_layers: int) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / RECORDS_FILE) as tmp:
        tmp.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    plot_localization_vs_editing(summary["per_layer"], [r.to_dict() for r in records], num_layers, OUTCOME,
                                 output_dir / PLOT_FILE)
    atomic_write_json(output_dir / SUMMARY_FILE, summary)
