"""Batch locating: trace sampled KG facts, aggregate, plot, and write a results directory.

Results directory:
  locating_summary.json      run parameters, per-sample triple / probabilities / best layer / peak, skipped
                             samples (the model gets them wrong), aggregate average effects per kind
  traces.npz                 raw score arrays, key "NNN/<kind>" (tokens x layers), so plots never need recomputing
  trace_NNN_<s>_<r>_<o>.png  heatmap per sample (one panel per kind, red line at the best layer)
  average_indirect_effect.png, best_layers.png
  attention_knockout.png     with knockout: the mean change of p(answer) with the last token's attention to the
                             subject / the relation blocked, per layer (arrays "NNN/knockout_<target>")
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from src.edit.causal_tracing import (CORRUPTIONS, FACTS_PER_FORWARD, KINDS, CausalTracer, KnockoutResult, TraceRequest,
                                     TraceResult, default_window, normalize_kind)
from src.edit.model.block_call import attention_takes_any_mask
from src.edit.tracing.metrics import check_metric
from src.edit.tracing.results import check_method
from src.edit.prompts.encoding import check_known_words
from src.edit.tracing.stats import average_effects, average_knockout
from src.kg.graph import Fact, read_graph_jsonl
from src.lm.fact_accuracy import object_predictions
from src.lm.model import load_model, require_model_dir
from src.pipelines import defaults
from src.pipelines.distributed import process_shard
from src.pipelines.resumable import ResumableRun, input_digests
from src.utils.interrupts import note_kept
from src.utils.errors import InputError
from src.utils.io import atomic_path, atomic_write_json, require_writable_dir
from src.viz.tracing import how_traced, plot_average_effects, plot_best_layers, plot_knockout, plot_traces

SUMMARY_FILE = "locating_summary.json"
TRACES_FILE = "traces.npz"
RUN_FILE = "locating_run.json"  # while a run goes: its parameters, which a resumed run must match
PROGRESS_FILE = "locating_progress.jsonl"  # while a run goes: one line per traced fact, scores included


@dataclass(frozen=True)
class LocatingConfig:
    model_dir: str = defaults.MODEL_DIR
    kg_file: str = defaults.KG_FILE
    num_samples: int = 50
    output_dir: str = "outputs/locating_results"
    noise_level: float = 3.0
    num_noise_samples: int = 10
    seed: int = 42
    kinds: tuple[str, ...] = KINDS
    window: int | None = None
    position: str = "last"
    device: str = "auto"
    dtype: str = "float32"
    plots: bool = True
    corruption: str = "gaussian"
    metric: str = "prob"
    method: str = "exact"
    knockout: bool = False

    def validate(self) -> "LocatingConfig":
        if self.num_samples < 1:
            raise InputError(f"--num-samples must be >= 1, got {self.num_samples}")
        check_noise_and_window(self.noise_level, self.num_noise_samples, self.window)
        if self.position not in ("last", "subject_last"):
            raise InputError(f"--position must be last or subject_last, got {self.position}")
        if self.corruption not in CORRUPTIONS:
            raise InputError(f"unknown corruption '{self.corruption}'; allowed: {', '.join(CORRUPTIONS)}")
        check_metric(self.metric)
        check_method(self.method)
        kinds = tuple(normalize_kind(k) for k in self.kinds)
        if not kinds:
            raise InputError("--kinds needs at least one of hidden, mlp, attn")
        return LocatingConfig(**{**asdict(self), "kinds": kinds})


def check_noise_and_window(noise_level: float, num_noise_samples: int, window: int | None) -> None:
    """The tracing flags every script shares: one line naming the bad value."""
    if noise_level <= 0:
        raise InputError(f"--noise-level must be > 0, got {noise_level}")
    if num_noise_samples < 1:
        raise InputError(f"--num-noise-samples must be >= 1, got {num_noise_samples}")
    if window is not None and window < 1:
        raise InputError(f"--window must be >= 1, got {window}")


# choices written into the parameters only where they differ from the original's (so those runs keep their files)
ORIGINAL_CHOICES = {"corruption": "gaussian", "metric": "prob", "method": "exact", "knockout": False}


def without_original_choices(data: dict) -> dict:
    return {k: v for k, v in data.items() if not (k in ORIGINAL_CHOICES and v == ORIGINAL_CHOICES[k])}


@dataclass(frozen=True)
class SampleTrace:
    index: int
    fact: Fact
    best_layer: int
    traces: dict[str, TraceResult]
    knockout: KnockoutResult | None = None

    def to_record(self) -> dict:
        """Everything, scores included (a line of the progress file)."""
        return {"index": self.index, **self.fact.to_dict(), "best_layer": self.best_layer,
                "traces": {kind: trace.to_dict() for kind, trace in self.traces.items()},
                **({"knockout": self.knockout.to_dict()} if self.knockout is not None else {})}

    @classmethod
    def from_record(cls, data: dict) -> "SampleTrace":
        traces = {kind: TraceResult.from_dict(trace) for kind, trace in data["traces"].items()}
        knockout = KnockoutResult.from_dict(data["knockout"]) if "knockout" in data else None
        return cls(data["index"], Fact(data["s"], data["r"], data["o"]), data["best_layer"], traces, knockout)

    def to_dict(self) -> dict:
        first = next(iter(self.traces.values()))
        peaks = {}
        for kind, trace in self.traces.items():
            token, layer, effect = trace.peak()
            peaks[kind] = {"token": token, "token_str": trace.input_tokens[token], "layer": layer, "effect": effect}
        name = first.metric  # clean_prob / clean_logit_diff, ...
        return {
            "index": self.index, **self.fact.to_dict(), f"clean_{name}": first.high_score,
            f"corrupted_{name}": first.low_score, "best_layer": self.best_layer, "peak": peaks,
            "traces": {kind: trace.to_dict(include_scores=False) for kind, trace in self.traces.items()},
            **({"knockout": self.knockout.to_dict()} if self.knockout is not None else {}),
        }


@dataclass(frozen=True)
class LocatingSummary:
    config: LocatingConfig
    samples: tuple[SampleTrace, ...]
    skipped: tuple[dict, ...]
    averages: dict
    num_layers: int
    seconds: float

    def parameters(self) -> dict:
        """The run's parameters; corruption, metric, method and knockout only where they are not the original's."""
        return without_original_choices({**asdict(self.config), "kinds": list(self.config.kinds)})

    @property
    def knockout_averages(self) -> dict:
        """{target: GroupEffect} of the samples' knockouts; empty without them."""
        knocked = [s.knockout for s in self.samples if s.knockout is not None]
        return average_knockout(knocked) if knocked else {}

    @property
    def best_layer_rule(self) -> str:
        window = self.config.window or default_window(self.num_layers)
        return (f"argmax over layers of the MLP indirect effect (window {window}) at the "
                f"{self.config.position.replace('_', ' ')} token")

    def to_dict(self) -> dict:
        first_traces = [next(iter(s.traces.values())) for s in self.samples]
        clean = [t.high_score for t in first_traces]
        corrupted = [t.low_score for t in first_traces]
        best = [s.best_layer for s in self.samples]
        name = self.config.metric
        return {
            "parameters": self.parameters(),
            "num_layers": self.num_layers,
            "best_layer_rule": self.best_layer_rule,
            "num_traced": len(self.samples),
            "num_skipped": len(self.skipped),
            "skipped": list(self.skipped),
            "mean_best_layer": float(np.mean(best)) if best else None,
            f"mean_clean_{name}": float(np.mean(clean)) if clean else None,
            f"mean_corrupted_{name}": float(np.mean(corrupted)) if corrupted else None,
            "seconds": self.seconds,
            "average_effects": {kind: avg.to_dict() for kind, avg in self.averages.items()},
            **({"average_knockout": {target: avg.to_dict() for target, avg in self.knockout_averages.items()}}
               if self.config.knockout else {}),
            "samples": [s.to_dict() for s in self.samples],
        }


def sample_facts(facts: Sequence[Fact], num_samples: int, seed: int) -> list[Fact]:
    """`num_samples` distinct facts (all of them if fewer), in a seeded random order."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(facts), size=min(num_samples, len(facts)), replace=False)
    return [facts[i] for i in picked.tolist()]


def trace_file_name(index: int, fact: Fact) -> str:
    return f"trace_{index:03d}_{fact.s}_{fact.r}_{fact.o}.png"


def run_identity(config: LocatingConfig) -> dict:
    """What a resumed run must share with the run it continues: every parameter but where results go and whether
    they are plotted, and the bytes of the KG and the model's files."""
    data = without_original_choices({k: v for k, v in asdict(config).items() if k not in ("output_dir", "plots")})
    return {**data, "kinds": list(config.kinds), **input_digests(config.kg_file, config.model_dir)}


def run_locating(config: LocatingConfig, progress: bool = True, resume: bool = False) -> LocatingSummary | None:
    """Trace `num_samples` random facts that the model gets right; write the results directory.

    Traced facts are appended to locating_progress.jsonl as each block of them is finished; resume: continue the
    interrupted run in `config.output_dir` (same parameters) from them, to the same results. The progress files are
    removed once the results are written.

    Under `torchrun --nproc-per-node N`, block i of FACTS_PER_FORWARD traced samples goes to rank i % N (each
    trace is seeded by its sample index, not by the rank); rank 0 gathers, writes the directory and returns the
    summary; the other ranks return None."""
    config = config.validate()
    require_writable_dir(config.output_dir)
    with process_shard() as shard:
        started = time.perf_counter()
        graph = read_graph_jsonl(config.kg_file)
        require_model_dir(config.model_dir)
        identity, run = run_identity(config), ResumableRun(config.output_dir, RUN_FILE, PROGRESS_FILE)
        if resume:
            run.check_resumable(identity)
        device = shard.device(config.device)
        model, tokenizer = load_model(config.model_dir, device=device, dtype=config.dtype)
        facts = sample_facts(graph.facts, config.num_samples, config.seed)
        for fact in facts:
            check_known_words(tokenizer, entity=fact.s, relation=fact.r, object=fact.o)
        predicted_ids, object_ids = object_predictions(model, tokenizer, facts)
        tracer = CausalTracer(model, tokenizer, device=device, subjects=graph.entities)
        if config.knockout and not attention_takes_any_mask(model):  # refused before the run begins
            raise InputError("--knockout needs eager or sdpa attention; the model uses "
                             f"'{getattr(model.config, '_attn_implementation', None)}'")

        requests, skipped = [], []
        for index, fact in enumerate(facts):
            if predicted_ids[index] != object_ids[index]:
                skipped.append({"index": index, **fact.to_dict(), "predicted": tokenizer.decode(predicted_ids[index]).strip()})
            else:
                requests.append((index, TraceRequest(fact.s, fact.r, fact.o, seed=config.seed + index)))
        # facts are traced FACTS_PER_FORWARD at a time; the same blocks whatever the number of processes, so the
        # numbers do not depend on it
        blocks = [requests[i : i + FACTS_PER_FORWARD] for i in range(0, len(requests), FACTS_PER_FORWARD)]
        mine = shard.take(blocks)
        kinds = config.kinds if "mlp" in config.kinds else (*config.kinds, "mlp")  # the best layer needs the MLP trace
        if shard.is_main:
            run.start(identity, resume, stale=[SUMMARY_FILE, TRACES_FILE])
        shard.barrier()
        kept = {record["index"]: record for record in run.read()} if resume else {}
        finished = {index: SampleTrace.from_record(kept[index]) for block in blocks
                    if all(i in kept for i, _ in block) for index, _ in block}  # whole blocks: a torn one is redone
        samples = [finished[index] for block in mine for index, _ in block if index in finished]
        with tqdm(total=sum(map(len, mine)), initial=len(samples), desc="tracing", unit="fact",
                  disable=not (progress and shard.is_main)) as bar:
            try:
                for block in mine:
                    if all(index in finished for index, _ in block):
                        continue
                    traced = tracer.trace_many([request for _, request in block], config.noise_level,
                                               config.num_noise_samples, kinds, config.window,
                                               corruption=config.corruption, metric=config.metric,
                                               method=config.method, knockout=config.knockout)
                    done = [SampleTrace(index, facts[index], traces["mlp"].best_layer(config.position),
                                        {k: traces[k] for k in config.kinds}, traces.get("knockout"))
                            for (index, _), traces in zip(block, traced)]
                    run.append([sample.to_record() for sample in done])
                    samples += done
                    bar.update(len(block))
            except KeyboardInterrupt as exc:
                raise note_kept(exc, f"{run.count()} traced facts in {run.records_path}",
                                "to go on, run the same command with --resume") from None
        skipped = skipped if shard.is_main else []  # every process found the same ones
        gathered = shard.gather((samples, skipped))
        if not shard.is_main:
            return None
    samples = sorted((s for part, _ in gathered for s in part), key=lambda s: s.index)
    skipped = sorted((s for _, part in gathered for s in part), key=lambda s: s["index"])
    averages = {kind: average_effects([s.traces[kind] for s in samples]) for kind in config.kinds} if samples else {}
    summary = LocatingSummary(config, tuple(samples), tuple(skipped), averages, tracer.num_layers,
                              time.perf_counter() - started)
    write_results(summary, Path(config.output_dir), plots=config.plots, progress=progress)
    run.finish()
    return summary


def write_results(summary: LocatingSummary, output_dir: Path, plots: bool = True, progress: bool = False) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s.index:03d}/{kind}": t.scores for s in summary.samples for kind, t in s.traces.items()}
    arrays.update({f"{s.index:03d}/knockout_{target}": scores for s in summary.samples if s.knockout is not None
                   for target, scores in s.knockout.scores.items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_path(output_dir / TRACES_FILE) as tmp:
        tmp.write_bytes(buffer.getvalue())
    if plots:
        plot_results(summary.samples, summary.averages, summary.num_layers, output_dir, progress)
    atomic_write_json(output_dir / SUMMARY_FILE, summary.to_dict())


def plot_results(samples: Sequence[SampleTrace], averages: dict, num_layers: int, output_dir: Path,
                 progress: bool = False) -> None:
    jobs = [(sample.traces, output_dir / trace_file_name(sample.index, sample.fact), sample.best_layer)
            for sample in samples]
    plot_traces(jobs, progress=progress)
    if averages:
        first = next(iter(samples[0].traces.values())) if samples else None
        plot_average_effects(averages, output_dir / "average_indirect_effect.png",
                             None if first is None else how_traced(first, per_fact=False))
        plot_best_layers([s.best_layer for s in samples], num_layers, output_dir / "best_layers.png")
    knocked = [s.knockout for s in samples if s.knockout is not None]
    if knocked:
        plot_knockout(average_knockout(knocked), knocked[0].window, output_dir / "attention_knockout.png")


def load_results(output_dir: str | Path) -> tuple[dict, list[SampleTrace], dict]:
    """Read a results directory back: (summary dict, samples with their traces, averages recomputed from traces)."""
    output_dir = Path(output_dir)
    summary_path, traces_path = output_dir / SUMMARY_FILE, output_dir / TRACES_FILE
    if not summary_path.is_file() or not traces_path.is_file():
        raise InputError(f"{output_dir} is not a locating results directory (needs {SUMMARY_FILE} and {TRACES_FILE}; "
                         f"create one with ./run_locating.sh --output-dir {output_dir})")
    summary = json.loads(summary_path.read_text())
    arrays = np.load(traces_path)
    samples = []
    for record in summary["samples"]:
        traces = {kind: TraceResult.from_dict(data, arrays[f"{record['index']:03d}/{kind}"])
                  for kind, data in record["traces"].items()}
        fact = Fact(record["s"], record["r"], record["o"])
        knockout = KnockoutResult.from_dict(record["knockout"]) if "knockout" in record else None
        samples.append(SampleTrace(record["index"], fact, record["best_layer"], traces, knockout))
    kinds = summary["parameters"]["kinds"]
    averages = {kind: average_effects([s.traces[kind] for s in samples]) for kind in kinds} if samples else {}
    return summary, samples, averages
