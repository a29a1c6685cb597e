"""Edit evaluation runs: methods x one mode over seeded counterfactual requests, records, summary, run directory.

Modes:
  independent  every edit starts from the original weights (the changed tensors are restored after each edit)
  batch        all requests in one call of a batched method (ft, memit)
  sequential   edits applied one after another in place; every `every` edits a checkpoint measures KG retention and
               the past edits' efficacy and context robustness

The KG is split (`src.kg.split.FactSplit`, seeded by the run's seed): the methods may use the allowed facts, and
every specificity and retention figure is measured on the held-out ones (`src.edit.evaluation.metrics`).

Run directory: eval_summary.json (parameters, the split, per-method estimates with 95% intervals, and paired
differences for every pair of methods), eval_records.jsonl (one line per edit, per checkpoint, and per batch
retention pass, appended as each is finished; `summarize` rebuilds the summary from it), eval_run.json (what a
`resume` must match), metrics_by_method.png, and sequential.png in sequential mode.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.evaluation import estimates
from src.edit.evaluation.metrics import CheckpointRecord, EditRecord, EvalCase, KGEvaluator, RetentionRecord
from src.edit.evaluation.requests import EditRequest, draw_requests
from src.edit.rank_one.key_statistics import statistics_cache_limit
from src.edit.prompts.kg_context import KGContext
from src.edit.methods import METHODS, EditEnvironment, build_editor, method_spec
from src.edit.evaluation.prompt_probe import PromptProbe
from src.edit.prompts.encoding import single_token_id
from src.kg.corpus import require_corpus_file
from src.kg.graph import KnowledgeGraph, query_text, read_graph_jsonl
from src.kg.split import FactSplit
from src.lm.model import load_model, require_model_dir
from src.pipelines import defaults
from src.utils.device import resolve_device
from src.pipelines.distributed import process_shard
from src.utils.errors import InputError
from src.pipelines.resumable import ResumableRun, input_digests
from src.utils.interrupts import note_kept
from src.utils.io import atomic_path, atomic_write_json, require_writable_dir, sha256_file

MODES = ("independent", "batch", "sequential")
SUMMARY_FILE = "eval_summary.json"
RECORDS_FILE = "eval_records.jsonl"
RUN_FILE = "eval_run.json"  # the parameters a resumed run must match, written when the run starts
# Metrics summarised per method, in report order; the first ones are one yes/no per edit (Wilson intervals).
PROPORTIONS = ("efficacy",)
SUMMARY_METRICS = ("efficacy", "efficacy_margin", "paraphrase", "paraphrase_margin", "context_robustness",
                   "context_margin", "paraphrase_in_context", "specificity_neighbourhood", "neighbourhood_margin",
                   "specificity_relation", "specificity_subject", "specificity_random", "retention_drop_points",
                   "specificity_seen", "num_scored_seen", "update_norm", "seconds")
# Metrics compared between methods (paired over the requests both edited).
COMPARED_METRICS = ("efficacy", "efficacy_margin", "paraphrase", "context_robustness", "specificity_neighbourhood",
                    "specificity_relation", "specificity_subject", "specificity_random", "retention_drop_points")


@dataclass(frozen=True)
class EvalConfig:
    """hparams: method -> YAML path (methods not named use their registry default file when it exists)."""

    model_dir: str
    kg_file: str
    kg_corpus: str | None = None
    methods: tuple[str, ...] = ("rome",)
    num_edits: int = 100
    mode: str = "independent"
    seed: int = 0
    output_dir: str = "outputs/editing_eval"
    device: str = "auto"
    dtype: str = "float32"
    hparams: dict[str, str] = field(default_factory=dict)
    every: int = 50
    num_prefixes: int = 5
    num_neighbors: int = 20
    num_random: int = 20
    allowed_fraction: float = 0.5
    progress: bool = True

    @property
    def split(self) -> FactSplit:
        """The facts the methods may use (the rest are scored), seeded by the run's seed."""
        return FactSplit(self.seed, self.allowed_fraction)

    def validate(self) -> None:
        for method in self.methods:
            method_spec(method)
        if not self.methods:
            raise InputError("no methods given; allowed: " + ", ".join(METHODS))
        if self.mode not in MODES:
            raise InputError(f"unknown mode '{self.mode}'; allowed: {', '.join(MODES)}")
        if self.num_edits < 1:
            raise InputError(f"--num-edits must be >= 1, got {self.num_edits}")
        if self.every < 1:
            raise InputError(f"--every must be >= 1, got {self.every}")
        self.split  # constructing the FactSplit checks the allowed fraction (one line, exit 2)
        unknown = sorted(set(self.hparams) - set(self.methods))
        if unknown:
            raise InputError(f"hparams given for '{unknown[0]}', which is not among the methods ({', '.join(self.methods)})")
        if self.mode == "batch":
            single = [m for m in self.methods if not METHODS[m].batched]
            if single:
                raise InputError(f"method '{single[0]}' edits one fact at a time and has no batch mode; batched methods: "
                                 + ", ".join(n for n, s in METHODS.items() if s.batched))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["methods"] = list(self.methods)
        return data


@dataclass(frozen=True)
class MethodRun:
    method: str
    records: tuple[EditRecord, ...]
    checkpoints: tuple[CheckpointRecord, ...] = ()
    retention: RetentionRecord | None = None  # batch mode: per held-out fact, before and after


# ------------------------------------------------------------------ running one method


def _update_norm(model: PreTrainedModel, snapshot: dict[str, torch.Tensor], changed: Sequence[str]) -> float:
    params = dict(model.named_parameters())
    squares = (float((params[n].detach().double().cpu() - snapshot[n].double()).pow(2).sum()) for n in changed)
    return math.sqrt(sum(squares))


def _restore(model: PreTrainedModel, snapshot: dict[str, torch.Tensor], changed: Sequence[str]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in changed:
            params[name].copy_(snapshot[name])


def _snapshot_changed(model: PreTrainedModel, snapshot: dict[str, torch.Tensor], changed: Sequence[str]) -> None:
    params = dict(model.named_parameters())
    for name in changed:
        snapshot[name] = params[name].detach().clone().cpu()


def _bare_probabilities(evaluator: KGEvaluator, model: PreTrainedModel, requests: Sequence[EditRequest]) -> torch.Tensor:
    return PromptProbe(evaluator.tokenizer, [query_text(q.s, q.r) for q in requests],
                       speed=evaluator.speed).probabilities(model)


def _record(index: int, method: str, mode: str, request: EditRequest, metrics: dict, info, norm: float,
            seconds: float) -> EditRecord:
    return EditRecord(index=index, method=method, mode=mode, request=request, update_norm=norm, seconds=seconds,
                      layers=tuple(info.layers), steps=info.steps, used_context=tuple(info.context_facts),
                      used_kl=tuple(info.kl_facts), **metrics)


def run_method(method: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
               mode: str, evaluator: KGEvaluator, env: EditEnvironment, hparams: Any = None, every: int = 50,
               progress: bool = True, indices: Sequence[int] | None = None, finished: MethodRun | None = None,
               on_records: Callable[[list], None] | None = None) -> MethodRun:
    """Evaluate one method; `model` itself is never changed (the method edits a private copy). indices: the
    requests' positions in the whole run, for the records (default 0, 1, ...).

    finished: what an interrupted run of this method kept (`read_records`), which is not computed again: independent
    mode skips the edited requests; sequential mode replays the finished edits (unmeasured) to reach their edited
    state, then goes on; batch mode keeps a complete batch and redoes an incomplete one. on_records: called with the
    records, checkpoints and retention passes as they are finished (to stream them to disk): one edit's record, one
    checkpoint, or a whole batch's records and its retention pass at once."""
    indices = list(range(len(requests))) if indices is None else list(indices)
    if mode not in MODES:
        raise InputError(f"unknown mode '{mode}'; allowed: {', '.join(MODES)}")
    finished = finished or MethodRun(method, ())
    emit = on_records or (lambda items: None)
    if finished_in_full(finished, mode, indices):
        return finished
    work = copy.deepcopy(model)
    editor = build_editor(method, work, tokenizer, hparams, env)
    if mode == "batch" and not editor.batched:
        raise InputError(f"method '{method}' edits one fact at a time and has no batch mode")
    snapshot = {name: p.detach().clone().cpu() for name, p in work.named_parameters()}
    cases = [evaluator.case(q) for q in requests]
    done = {r.index: r for r in finished.records} if mode != "batch" else {}

    if mode == "batch":
        before = _bare_probabilities(evaluator, work, requests)
        started = time.perf_counter()
        output = editor.edit(requests)
        seconds = (time.perf_counter() - started) / len(requests)
        norm = _update_norm(work, snapshot, output.changed)
        after, edited = evaluator.kg_probe.top1(work), {(q.s, q.r) for q in requests}
        metrics = evaluator.measure(before, work, cases, [i.context_facts for i in output.infos], after, edited,
                                    [i.kl_facts for i in output.infos])
        records = [_record(indices[i], method, mode, q, m, info, norm, seconds)
                   for i, (q, m, info) in enumerate(zip(requests, metrics, output.infos))]
        retention = evaluator.retention_record(method, after, edited)
        emit([*records, retention])
        return MethodRun(method, tuple(records), retention=retention)

    records, used = [done[i] for i in indices if i in done], []
    checkpoints = {c.num_edits: c for c in finished.checkpoints} if mode == "sequential" else {}
    if mode == "sequential":
        replayed = len(records)
        if [r.index for r in records] != indices[:replayed]:
            raise InputError(f"the finished sequential records of {method} are not the first edits of the run; "
                             "a sequential run resumes after its last edit in order")
        if 0 not in checkpoints:
            checkpoints[0] = CheckpointRecord(method, 0, evaluator.retention(evaluator.predictions_before, set()),
                                              None, None)
            emit([checkpoints[0]])
        for q, record in zip(requests, tqdm(records, desc=f"{method} (replaying finished edits)", unit="edit",
                                              disable=not progress or not records)):
            output = editor.edit([q])  # the same edit as before, to reach the same weights; measured already
            _snapshot_changed(work, snapshot, output.changed)
            used.append(record.used_context)
        due = replayed if replayed and (replayed % every == 0 or replayed == len(requests)) else None
        if due is not None and due not in checkpoints:  # interrupted between an edit and its checkpoint
            checkpoints[due] = checkpoint(evaluator, work, method, cases[:due], used)
            emit([checkpoints[due]])
    bar = tqdm(desc=f"{method} ({mode})", unit="edit", disable=not progress, initial=len(done), total=len(requests))
    for i, (q, case) in enumerate(zip(requests, cases)):
        if indices[i] in done:
            continue
        bar.update(1)
        before = _bare_probabilities(evaluator, work, [q])
        started = time.perf_counter()
        output = editor.edit([q])
        seconds = time.perf_counter() - started
        info = output.infos[0]
        used.append(info.context_facts)
        if mode == "independent":
            norm = _update_norm(work, snapshot, output.changed)
            metrics = evaluator.measure(before, work, [case], [info.context_facts], evaluator.kg_probe.top1(work),
                                        {(q.s, q.r)}, [info.kl_facts])[0]
            _restore(work, snapshot, output.changed)
            editor.forget()
        else:  # sequential: the snapshot follows the weights, so the norm is this edit's own change
            norm = _update_norm(work, snapshot, output.changed)
            _snapshot_changed(work, snapshot, output.changed)
            metrics = evaluator.measure(before, work, [case], [info.context_facts], None, {(q.s, q.r)},
                                        [info.kl_facts])[0]
        records.append(_record(indices[i], method, mode, q, metrics, info, norm, seconds))
        emit([records[-1]])
        if mode == "sequential" and ((i + 1) % every == 0 or i + 1 == len(requests)):
            checkpoints[i + 1] = checkpoint(evaluator, work, method, cases[: i + 1], used)
            emit([checkpoints[i + 1]])
    bar.close()
    records.sort(key=lambda r: r.index)
    return MethodRun(method, tuple(records), tuple(checkpoints[n] for n in sorted(checkpoints)))


def finished_in_full(finished: MethodRun, mode: str, indices: Sequence[int]) -> bool:
    """Whether an interrupted run kept everything of this method: every edit's record, and batch mode's retention
    pass or sequential mode's last checkpoint."""
    if sorted(r.index for r in finished.records) != sorted(indices):
        return False
    if mode == "batch":
        return finished.retention is not None
    if mode == "sequential":
        return any(c.num_edits == len(indices) for c in finished.checkpoints)
    return True


def checkpoint(evaluator: KGEvaluator, model: PreTrainedModel, method: str, cases: Sequence[EvalCase],
               used: Sequence[Sequence[str]]) -> CheckpointRecord:
    """Retention over the unedited held-out facts, and past edits' efficacy / context robustness."""
    requests = [c.request for c in cases]
    edited = {(q.s, q.r) for q in requests}
    targets = torch.tensor([single_token_id(evaluator.tokenizer, q.target) for q in requests])
    bare = PromptProbe(evaluator.tokenizer, [query_text(q.s, q.r) for q in requests], speed=evaluator.speed)
    efficacy = float((bare.top1(model) == targets).float().mean())
    prompts, owners = [], []
    for index, (case, context) in enumerate(zip(cases, used)):
        prefixed, _ = evaluator.context_prompts(case, context, edited)
        prompts += prefixed
        owners += [index] * len(prefixed)
    robustness = None
    if prompts:
        hits = PromptProbe(evaluator.tokenizer, prompts, speed=evaluator.speed).top1(model) == targets[torch.tensor(owners)]
        robustness = float(hits.float().mean())
    return CheckpointRecord(method, len(requests), evaluator.retention(evaluator.kg_probe.top1(model), edited),
                            efficacy, robustness)


# ------------------------------------------------------------------ summary


def metric_estimate(name: str, values: Sequence, seed: int = 0) -> estimates.Estimate:
    """The summary's estimate of one metric over edits: Wilson's for a proportion, else a bootstrap of the mean."""
    return estimates.proportion(values) if name in PROPORTIONS else estimates.mean(values, seed)


def _values(records: Sequence[EditRecord], name: str) -> list:
    return [getattr(r, name) for r in records]


def summarize(records: Sequence[EditRecord], checkpoints: Sequence[CheckpointRecord] = (),
              retention: Sequence[RetentionRecord] = (), seed: int = 0) -> dict[str, dict]:
    """Per method: every metric's estimate over its edits (`src.edit.evaluation.estimates`; batch mode: the
    retention drop over the held-out facts, one edit call being one measurement), its sequential checkpoints (no
    intervals), and under "compared", for every other method run on the same requests, paired differences
    (this method minus the other) over the requests both edited, paired by request index. seed: the bootstrap's
    (a run uses 0, so that `summarize(*read_records(path))` gives its summary back)."""
    summary: dict[str, dict] = {}
    by_method = {m: [r for r in records if r.method == m] for m in dict.fromkeys(r.method for r in records)}
    passes = {p.method: p for p in retention}
    for method, mine in by_method.items():
        metrics = {name: metric_estimate(name, _values(mine, name), seed).to_dict() for name in SUMMARY_METRICS}
        if method in passes:
            over_facts = estimates.mean(passes[method].drops_points(), seed)
            metrics["retention_drop_points"] = replace(over_facts, interval="bootstrap over facts").to_dict()
        summary[method] = {"mode": mine[0].mode, "num_edits": len(mine), "metrics": metrics,
                           "checkpoints": [c.to_dict() for c in checkpoints if c.method == method]}
    for method, mine in by_method.items():
        compared = {}
        for other, theirs in by_method.items():
            if other == method:
                continue
            theirs_by_index = {r.index: r for r in theirs}
            pairs = [(r, theirs_by_index[r.index]) for r in mine if r.index in theirs_by_index]
            for a, b in pairs:
                if a.request != b.request:
                    raise InputError(f"records {a.index} of {method} and {other} edit different requests "
                                     f"({a.request.s} {a.request.r} and {b.request.s} {b.request.r}); paired "
                                     "differences need the same requests (the same seed and KG)")
            if not pairs:
                continue
            compared[other] = {
                name: estimates.paired_difference([getattr(a, name) for a, _ in pairs],
                                                  [getattr(b, name) for _, b in pairs], seed).to_dict()
                for name in COMPARED_METRICS
                if not (name == "retention_drop_points" and (method in passes or other in passes))
            }
        summary[method]["compared"] = compared
    return summary


RECORD_KINDS = {"edit": EditRecord, "checkpoint": CheckpointRecord, "retention": RetentionRecord}


def read_records(path: str | Path) -> tuple[list[EditRecord], list[CheckpointRecord], list[RetentionRecord]]:
    """Inverse of the records file: (edits, checkpoints, batch retention passes); a malformed line is an error
    naming its line number."""
    read: dict[str, list] = {kind: [] for kind in RECORD_KINDS}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            kind = data.get("kind", "edit")
            read[kind].append(RECORD_KINDS[kind].from_dict(data))
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError, InputError) as exc:
            raise InputError(f"{path}:{number}: not an evaluation record ({exc!r})") from None
    return read["edit"], read["checkpoint"], read["retention"]


# ------------------------------------------------------------------ whole run


@dataclass(frozen=True)
class EvalReport:
    config: EvalConfig
    runs: tuple[MethodRun, ...]
    summary: dict[str, dict]
    output_dir: Path


def default_corpus(kg_file: str | Path) -> Path:
    return Path(kg_file).resolve().parent / "corpus.train.txt"


# The hyperparameter file each method runs with when none is given, relative to the repository.
DEFAULT_HPARAMS_FILES = {
    "rome": defaults.ROME_HPARAMS,
    "rome-original": "configs/rome_original_gpt_small.yaml",
    "ft": "configs/ft_gpt_small.yaml",
    "memit": "configs/memit_gpt_small.yaml",
}


def method_hparams(config: EvalConfig, method: str, repo_root: Path) -> str | None:
    """The YAML given for `method`, else its default file (under `repo_root`) when present, else None."""
    if method in config.hparams:
        return config.hparams[method]
    default = repo_root / DEFAULT_HPARAMS_FILES[method]
    return str(default) if default.is_file() else None


@dataclass(frozen=True)
class CheckedInputs:
    """What `check_inputs` read: hyperparameter files and values per method, the corpus path and the KG."""

    files: dict[str, str | None]
    hparams: dict[str, Any]
    corpus: Path
    graph: KnowledgeGraph


def check_inputs(config: EvalConfig, repo_root: Path, world_size: int = 1) -> CheckedInputs:
    """Validate everything that can be checked without loading the model, so that bad input fails before any edit
    (and before `world_size` processes start)."""
    config.validate()
    if world_size > 1 and config.mode != "independent":
        raise InputError(f"mode {config.mode} edits one model step after step and cannot be split across "
                         f"{world_size} processes; run it in one (independent mode can be split)")
    files = {m: method_hparams(config, m, repo_root) for m in config.methods}
    hparams = {m: METHODS[m].load_hparams(files[m]) for m in config.methods}
    corpus = require_corpus_file(config.kg_corpus or default_corpus(config.kg_file))
    graph = read_graph_jsonl(config.kg_file)
    require_model_dir(config.model_dir)
    require_writable_dir(config.output_dir)
    statistics_cache_limit()  # a bad $KG_ROME_CACHE_LIMIT fails here, not at the first edit
    return CheckedInputs(files, hparams, corpus, graph)


def run_identity(config: EvalConfig, inputs: CheckedInputs) -> dict:
    """What a resumed run must share with the run it continues: every parameter but where it is written and whether
    bars show, the hyperparameters' values (not their file names), and the bytes of the KG, its corpus and the
    model's files."""
    data = {k: v for k, v in config.to_dict().items() if k not in ("output_dir", "progress", "hparams")}
    data["hparams"] = {m: h.to_dict() for m, h in inputs.hparams.items()}
    return {**data, "corpus_sha256": sha256_file(inputs.corpus), **input_digests(config.kg_file, config.model_dir)}


def finished_runs(path: Path) -> dict[str, MethodRun]:
    """Per method, what the records file of an interrupted run holds."""
    edits, checkpoints, retention = read_records(path) if path.is_file() else ([], [], [])
    edits = list({(r.method, r.index): r for r in edits}.values())  # a redone batch's records replace the first ones
    checkpoints = list({(c.method, c.num_edits): c for c in checkpoints}.values())
    methods = dict.fromkeys([r.method for r in edits] + [c.method for c in checkpoints] + [p.method for p in retention])
    passes = {p.method: p for p in retention}
    return {m: MethodRun(m, tuple(r for r in edits if r.method == m), tuple(c for c in checkpoints if c.method == m),
                         passes.get(m)) for m in methods}


def run_evaluation(config: EvalConfig, repo_root: Path, resume: bool = False) -> EvalReport | None:
    """Everything is validated before any edit. Each record is appended to eval_records.jsonl as it is finished
    (synced line by line); at the end the records file is rewritten in order and the summary written, atomically.
    resume: continue the interrupted run in `config.output_dir` (its parameters must match) from its records, to
    the same records and summary, timings aside.

    Under `torchrun --nproc-per-node N` (independent mode only), request i is edited by rank i % N; rank 0 gathers the
    records, writes the directory and returns the report; the other ranks return None."""
    output_dir = Path(config.output_dir)
    with process_shard() as shard:
        inputs = check_inputs(config, repo_root, shard.world_size)
        files, hparams, corpus, graph = inputs.files, inputs.hparams, inputs.corpus, inputs.graph
        identity, run = run_identity(config, inputs), ResumableRun(output_dir, RUN_FILE, RECORDS_FILE)
        if resume:
            run.check_resumable(identity)
        device = shard.device(config.device)
        model, tokenizer = load_model(config.model_dir, device=device, dtype=config.dtype)
        env = EditEnvironment(corpus_path=corpus, device=resolve_device(device),
                              progress=config.progress and shard.is_main, split=config.split)
        aliases = KGContext.from_corpus(corpus).aliases
        evaluator = KGEvaluator(model, tokenizer, graph.facts, aliases, config.num_prefixes, config.num_neighbors,
                                config.num_random, config.seed, split=config.split)
        requests = draw_requests(graph, config.num_edits, config.seed)
        if shard.is_main:  # every input is checked: the run begins
            run.start(identity, resume, stale=[SUMMARY_FILE, "metrics_by_method.png", "sequential.png"])
        shard.barrier()
        finished = finished_runs(run.records_path) if resume else {}
        indices = shard.take(range(len(requests)))
        mine = set(indices)
        try:
            runs = []
            for m in config.methods:
                kept = finished.get(m, MethodRun(m, ()))
                kept = replace(kept, records=tuple(r for r in kept.records if r.index in mine))
                runs.append(run_method(m, model, tokenizer, [requests[i] for i in indices], config.mode, evaluator,
                                       env, hparams[m], config.every, env.progress, indices, kept,
                                       on_records=lambda items: run.append([item.to_dict() for item in items])))
        except KeyboardInterrupt as exc:
            raise note_kept(exc, f"{run.count()} finished records in {run.records_path}",
                            "to go on, run the same command with --resume") from None
        gathered = shard.gather(runs)
        if not shard.is_main:
            return None
    runs = tuple(MethodRun(run.method, tuple(sorted((r for part in gathered for r in part[k].records),
                                                    key=lambda r: r.index)), run.checkpoints, run.retention)
                 for k, run in enumerate(gathered[0]))
    records = [r for run in runs for r in run.records]
    checkpoints = [c for run in runs for c in run.checkpoints]
    retention = [run.retention for run in runs if run.retention is not None]
    summary = summarize(records, checkpoints, retention)
    write_run(output_dir, config, files, {m: h.to_dict() for m, h in hparams.items()}, summary, records, checkpoints,
              retention, graph)
    return EvalReport(config, runs, summary, output_dir)


def write_run(output_dir: Path, config: EvalConfig, hparams_files: dict, hparams: dict, summary: dict,
              records: Sequence[EditRecord], checkpoints: Sequence[CheckpointRecord],
              retention: Sequence[RetentionRecord], graph: KnowledgeGraph) -> None:
    from src.viz.evaluation import plot_method_metrics, plot_sequential

    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / RECORDS_FILE) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for item in [*records, *checkpoints, *retention]:
                handle.write(json.dumps(item.to_dict()) + "\n")
    statistics = {m: h.get("mom2_source") for m, h in hparams.items()}  # None: no key statistics (ft)
    split = config.split
    parameters = {**config.to_dict(), "hparams": hparams, "hparams_files": hparams_files,
                  "statistics_source": statistics,
                  "split": {**split.to_dict(), "num_allowed": len(split.allowed(graph.facts)),
                            "num_held_out": len(split.held_out(graph.facts)),
                            "methods_use": "allowed facts: context prefixes, KL prompts, fact_prompts statistics "
                                           "(corpus statistics: every training sentence)",
                            "scored": "held-out facts: every specificity and retention figure but specificity_seen"}}
    atomic_write_json(output_dir / SUMMARY_FILE, {"parameters": parameters, "methods": summary})
    # the figures last: whatever they meet, the records and the summary are written
    plot_method_metrics(summary, output_dir / "metrics_by_method.png", title=f"{config.num_edits} edits, {config.mode}")
    if config.mode == "sequential":
        plot_sequential(summary, output_dir / "sequential.png")
