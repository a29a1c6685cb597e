"""Edit evaluation: metrics on a hand-made lookup-table model with known answers, the three modes on the tiny
trained model, and a run directory whose summary is rebuilt from its records."""

import json
from types import SimpleNamespace

import pytest
import torch

import run_editing_eval
from src.cli.common import run_cli
from src.edit.evaluation.metrics import KGEvaluator
from src.pipelines.evaluate_methods import read_records, run_method, summarize
from src.edit.evaluation.requests import EditRequest, draw_requests
from src.edit.prompts.kg_context import KGContext
from src.edit.methods import EditEnvironment
from src.edit.evaluation.prompt_probe import PromptProbe
from src.kg.split import FactSplit
from src.lm.token_ids import first_token_id
from tests.conftest import REPO_ROOT


class TableLM(torch.nn.Module):
    """Next token = table[(second-last token, last token)] with probability ~1 (else token 0): a model whose
    predictions are known exactly."""

    def __init__(self, table: dict[tuple[int, int], int], vocab: int) -> None:
        super().__init__()
        self.table, self.vocab = dict(table), vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, logits_to_keep=0, use_cache=False, **_):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for row, ids in enumerate(input_ids.tolist()):
            logits[row, -1, self.table.get((ids[-2], ids[-1]), 0)] = 20.0
        return SimpleNamespace(logits=logits)


@pytest.fixture()
def table_setup(tiny_model, tiny_kg):
    _, tokenizer = tiny_model
    facts = list(tiny_kg.graph.facts)
    tid = lambda word: first_token_id(tokenizer, word)  # noqa: E731
    table = {(tid(f.s), tid(f.r)): tid(f.o) for f in facts}
    return tokenizer, facts, table, tid, len(tokenizer)


def test_metrics_on_a_model_with_known_answers(table_setup, tiny_kg):
    tokenizer, facts, table, tid, vocab = table_setup
    before = TableLM(table, vocab)
    aliases = KGContext.from_corpus(tiny_kg.corpus_path).aliases
    evaluator = KGEvaluator(before, tokenizer, facts, aliases, num_prefixes=3, num_neighbors=50, num_random=50)
    assert evaluator.retention(evaluator.predictions_before, set()) == 1.0

    fact = next(f for f in facts if f.r in aliases)
    target = next(e for e in tiny_kg.graph.entities if e not in (fact.o, fact.s))
    request = EditRequest(fact.s, fact.r, fact.o, target)
    case = evaluator.case(request)
    neighbor = facts[case.same_relation[0]]
    edited_table = dict(table)
    edited_table[(tid(fact.s), tid(fact.r))] = tid(target)  # the edit itself (prefixed prompts end the same way)
    edited_table[(tid(neighbor.s), tid(neighbor.r))] = tid(fact.o)  # one neighbour broken
    # the alias prompt is left unedited
    after = TableLM(edited_table, vocab)
    before_probs = PromptProbe(tokenizer, [f"{fact.s} {fact.r}"]).probabilities(before)
    (m,) = evaluator.measure(before_probs, after, [case], [()], evaluator.kg_probe.top1(after), {(fact.s, fact.r)},
                             [()])
    assert m["efficacy"] is True
    assert m["context_robustness"] == 1.0 and m["paraphrase"] == 0.0 and m["paraphrase_in_context"] == 0.0
    assert m["context_margin"] == pytest.approx(1.0, abs=1e-6) and m["paraphrase_margin"] == pytest.approx(0.0, abs=1e-6)
    n = len(case.same_relation)
    assert m["specificity_relation"] == pytest.approx((n - 1) / n)
    assert m["specificity_subject"] == 1.0
    broken_in_random = sum(facts[i] == neighbor for i in case.random_facts)
    assert m["specificity_random"] == pytest.approx(1 - broken_in_random / len(case.random_facts))
    assert m["retention_before"] == 1.0
    assert m["retention_after"] == pytest.approx(1 - 1 / (len(facts) - 1))
    assert m["efficacy_margin"] == pytest.approx(1.0, abs=1e-6) and m["old_prob_before"] == pytest.approx(1.0, abs=1e-6)
    assert m["specificity_seen"] is None and m["num_scored_seen"] == 0  # the method reported no KL facts

    # an unchanged model: no efficacy, everything kept
    (same,) = evaluator.measure(before_probs, before, [case], [()], evaluator.kg_probe.top1(before), {(fact.s, fact.r)},
                                [()])
    assert same["efficacy"] is False and same["specificity_relation"] == 1.0
    assert same["efficacy_margin"] == pytest.approx(-1.0, abs=1e-6)


def test_the_neighbourhood_shares_relation_and_true_object_and_its_margin_is_read(table_setup):
    """CounterFact's neighbourhood: other subjects whose fact has the edited relation AND its true object. Breaking
    one of them (it now says the edit's target) is seen by the neighbourhood figure and its margin p(o) - p(o*)."""
    tokenizer, facts, table, tid, vocab = table_setup
    before = TableLM(table, vocab)
    evaluator = KGEvaluator(before, tokenizer, facts, num_neighbors=50)
    fact, twin = next((f, g) for f in facts for g in facts if f.s != g.s and (f.r, f.o) == (g.r, g.o))
    target = next(f.o for f in facts if f.o not in (fact.o, fact.s))
    case = evaluator.case(EditRequest(fact.s, fact.r, fact.o, target))
    neighbours = [facts[i] for i in case.neighbourhood]
    assert twin in neighbours and all(g.s != fact.s and (g.r, g.o) == (fact.r, fact.o) for g in neighbours)
    assert set(case.neighbourhood) <= set(case.same_relation) or len(case.same_relation) == evaluator.num_neighbors
    edited = dict(table)
    edited[(tid(fact.s), tid(fact.r))] = tid(target)
    edited[(tid(twin.s), tid(twin.r))] = tid(target)  # the edit leaks into one neighbour
    after = TableLM(edited, vocab)
    probs = PromptProbe(tokenizer, [fact.prompt()]).probabilities(before)
    (m,) = evaluator.measure(probs, after, [case], [()], evaluator.kg_probe.top1(after), {(fact.s, fact.r)}, [()])
    k = len(neighbours)
    assert m["specificity_neighbourhood"] == pytest.approx((k - 1) / k)
    assert m["neighbourhood_margin"] == pytest.approx((k - 2) / k, abs=1e-5)  # +1 on the kept ones, -1 on the twin


def test_under_a_split_every_scored_fact_is_held_out(table_setup):
    tokenizer, facts, table, _, vocab = table_setup
    split = FactSplit(seed=4, allowed_fraction=0.5)
    evaluator = KGEvaluator(TableLM(table, vocab), tokenizer, facts, num_prefixes=3, split=split)
    assert evaluator.facts == list(split.held_out(facts)) and 0 < len(evaluator.facts) < len(facts)
    for fact in facts[:10]:
        case = evaluator.case(EditRequest(fact.s, fact.r, fact.o, fact.s))
        scored = [evaluator.facts[i] for group in (case.neighbourhood, case.same_relation, case.subject_facts,
                                                   case.random_facts) for i in group] + list(case.prefix_candidates)
        assert scored and not any(split.allows(f.s, f.r) for f in scored)


def test_prefixes_the_method_used_are_not_measured(table_setup):
    tokenizer, facts, table, _, vocab = table_setup
    evaluator = KGEvaluator(TableLM(table, vocab), tokenizer, facts, num_prefixes=3)
    request = EditRequest(facts[0].s, facts[0].r, facts[0].o, facts[1].o)
    case = evaluator.case(request)
    used = [f.sentence() for f in case.prefix_candidates[:2]]
    prefixed, _ = evaluator.context_prompts(case, used)
    assert len(prefixed) == 3 and not any(p.startswith(u) for p in prefixed for u in used)
    assert evaluator.case(request) == case  # seeded per request


@pytest.fixture()
def tiny_evaluator(tiny_model, tiny_kg):
    model, tokenizer = tiny_model
    aliases = KGContext.from_corpus(tiny_kg.corpus_path).aliases
    return model, tokenizer, KGEvaluator(model, tokenizer, tiny_kg.graph.facts, aliases, num_prefixes=2)


def test_independent_mode_leaves_the_model_and_restores_between_edits(tiny_evaluator, tiny_kg, tmp_path):
    model, tokenizer, evaluator = tiny_evaluator
    state = {k: v.clone() for k, v in model.state_dict().items()}
    env = EditEnvironment(tiny_kg.corpus_path, torch.device("cpu"), tmp_path)
    first, second = draw_requests(tiny_kg.graph, 2, seed=0)
    requests = [first, second, first]
    run = run_method("memit", model, tokenizer, requests, "independent", evaluator, env,
                     {"layers": [1, 2], "num_context_prefixes": 3, "mom2_source": "corpus", "mom2_update_weight": 100}, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [r.retention_before for r in run.records] == [1.0] * 3  # each edit starts from the original weights
    same = lambda record: {k: v for k, v in record.to_dict().items() if k not in ("index", "seconds")}  # noqa: E731
    assert same(run.records[0]) == same(run.records[2])  # the third edit started from the original weights again
    assert all(r.update_norm > 0 for r in run.records)


def test_sequential_mode_checkpoints(tiny_evaluator, tiny_kg, tmp_path):
    model, tokenizer, evaluator = tiny_evaluator
    env = EditEnvironment(tiny_kg.corpus_path, torch.device("cpu"), tmp_path)
    requests = draw_requests(tiny_kg.graph, 5, seed=1)
    run = run_method("memit", model, tokenizer, requests, "sequential", evaluator, env,
                     {"layers": [1, 2], "num_context_prefixes": 3, "mom2_source": "corpus", "mom2_update_weight": 100}, every=2, progress=False)
    assert [c.num_edits for c in run.checkpoints] == [0, 2, 4, 5]
    assert run.checkpoints[0].retention == 1.0 and run.checkpoints[0].past_efficacy is None
    assert all(0 <= c.retention <= 1 and 0 <= c.past_efficacy <= 1 for c in run.checkpoints[1:])
    assert all(r.specificity_relation is None and r.update_norm > 0 for r in run.records)
    assert len(list((tmp_path / "mom2").glob("*.pt"))) == 2  # C of the original weights, once per layer


HPARAMS = {"rome": {"layer": 1, "num_context_prefixes": 3, "num_eval_random_facts": 5},
           "memit": {"layers": [1, 2], "num_context_prefixes": 3, "mom2_source": "fact_prompts"},
           "ft": {"layer": 1, "num_context_prefixes": 3}}


def scored_sentences(evaluator: KGEvaluator, case, used_context) -> set[str]:
    """Written apart from the evaluator's own count: the facts of every group the case scores, and the prefix facts
    read back from the very prompt texts it scores ("s r o ; " before the query)."""
    rows = [*case.neighbourhood, *case.same_relation, *case.subject_facts, *case.random_facts]
    prefixed, alias_prefixed = evaluator.context_prompts(case, used_context)
    prefixes = {p.split(" ; ")[0] for p in prefixed + alias_prefixed}
    return {evaluator.facts[i].sentence() for i in rows} | prefixes


@pytest.mark.parametrize("method", ["rome", "memit", "ft"])
def test_no_scored_prompt_of_an_edit_is_one_its_method_saw(tiny_model, tiny_kg, tmp_path, method):
    """The leakage test. Under one split shared by the method and the evaluator, every fact an edit is scored on
    (or whose sentence is a context prefix of its scored prompts) is absent from what the method declared it used
    (its context prefixes and KL prompts, in the records) and from the facts its fact-prompt statistics were built
    from. Without the split the same check finds the overlap (ROME's and MEMIT's KL prompts are the subject's other
    facts), so it can fail."""
    from src.edit.rank_one.key_statistics import statistics_facts

    model, tokenizer = tiny_model
    aliases = KGContext.from_corpus(tiny_kg.corpus_path).aliases
    requests = draw_requests(tiny_kg.graph, 4, seed=2)
    for split in (FactSplit(seed=0), None):
        env = EditEnvironment(tiny_kg.corpus_path, torch.device("cpu"), tmp_path, split=split)
        evaluator = KGEvaluator(model, tokenizer, tiny_kg.graph.facts, aliases, num_prefixes=2, split=split)
        statistics = {f.sentence() for f in statistics_facts(tiny_kg.corpus_path, split)} if method == "memit" else set()
        run = run_method(method, model, tokenizer, requests, "independent", evaluator, env, HPARAMS[method],
                         progress=False)
        overlaps = [len(scored_sentences(evaluator, evaluator.case(r.request), r.used_context)
                        & (set(r.used_context) | set(r.used_kl) | statistics)) for r in run.records]
        assert all(r.used_context for r in run.records)
        assert (sum(len(r.used_kl) for r in run.records) > 0) == (method != "ft")  # the KL terms held facts in place
        counted = [r.num_scored_seen for r in run.records]
        if split is not None:
            assert overlaps == [0] * len(requests) and counted == [0] * len(requests), (method, overlaps)
            assert all(split.allows(*s.split()[:2]) for r in run.records for s in r.used_context + r.used_kl)
            assert [r.specificity_seen is None for r in run.records] == [not r.used_kl for r in run.records]
        elif method != "ft":
            assert all(n > 0 for n in overlaps) and all(n > 0 for n in counted), (method, overlaps)


def test_context_prefixes_are_drawn_per_request_and_reproducibly(tiny_model, tiny_kg, tmp_path):
    from src.edit.methods import build_editor
    model, tokenizer = tiny_model
    split = FactSplit(seed=1)
    env = EditEnvironment(tiny_kg.corpus_path, torch.device("cpu"), tmp_path, split=split)
    first, second = draw_requests(tiny_kg.graph, 2, seed=5)
    editor = build_editor("ft", model, tokenizer, {**HPARAMS["ft"], "num_context_prefixes": 6}, env)
    contexts = [s.context_facts for s in editor.prepare([first])[0] + editor.prepare([second])[0]]
    assert contexts[0] != contexts[1]  # each request its own prefixes
    assert contexts[0] == editor.prepare([first])[0][0].context_facts  # the same draw again
    assert all(split.allows(f.s, f.r) and f.s != first.s for f in contexts[0])
    # in a batch, no request's prompts use a fact another request of the batch rewrites
    together = editor.prepare([first, second])[0]
    assert all((f.s, f.r) != (second.s, second.r) for f in together[0].context_facts + together[0].kl_facts)


def eval_args(tiny_trained, tiny_kg, out, *extra):
    return ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
            "--output-dir", str(out), "--no-progress", *extra]


def test_run_directory_round_trip(tiny_trained, tiny_kg, tmp_path, capsys):
    out = tmp_path / "eval"
    fast = tmp_path / "memit.yaml"
    fast.write_text("layers: [1, 2]\nnum_context_prefixes: 3\nmom2_source: corpus\nmom2_update_weight: 100\n")
    args = eval_args(tiny_trained, tiny_kg, out, "--methods", "memit,ft", "--mode", "batch", "--num-edits", "4",
                     "--hparams", f"memit={fast}")
    assert run_cli(run_editing_eval.main, args) == 0
    assert {p.name for p in out.iterdir()} == {"eval_summary.json", "eval_records.jsonl", "eval_run.json",
                                           "metrics_by_method.png"}
    summary = json.loads((out / "eval_summary.json").read_text())
    edits, checkpoints, retention = read_records(out / "eval_records.jsonl")
    assert len(edits) == 8 and not checkpoints and [p.method for p in retention] == ["memit", "ft"]
    assert summarize(edits, checkpoints, retention) == summary["methods"]
    drop = summary["methods"]["memit"]["metrics"]["retention_drop_points"]
    edited_held_out = {(e.request.s, e.request.r) for e in edits if not FactSplit(seed=0).allows(e.request.s, e.request.r)}
    assert drop["interval"] == "bootstrap over facts" and drop["n"] == summary["parameters"]["split"]["num_held_out"] - len(edited_held_out)
    assert summary["methods"]["memit"]["metrics"]["efficacy"]["interval"] == "wilson"
    assert set(summary["methods"]["memit"]["compared"]) == {"ft"}
    assert "retention_drop_points" not in summary["methods"]["memit"]["compared"]["ft"]  # one pass each: no pairs
    assert summary["parameters"]["hparams_files"]["memit"] == str(fast)
    assert summary["parameters"]["hparams_files"]["ft"].endswith("configs/ft_gpt_small.yaml")
    assert summary["parameters"]["hparams"]["memit"]["layers"] == [1, 2]
    assert "memit" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--methods", "rome,nope"], "unknown method 'nope'"),
    (["--methods", "rome", "--mode", "batch"], "method 'rome' edits one fact at a time"),
    (["--num-edits", "0"], "--num-edits must be >= 1"),
    (["--hparams", "memit"], "--hparams expects METHOD=FILE"),
    (["--hparams", "ft=x.yaml"], "hparams given for 'ft'"),
    (["--methods", "rome,memit", "--hparams", "memit=BAD"], "config file not found: BAD"),
    (["--dtype", "float16"], "dtype float16 needs a CUDA device"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_trained, tiny_kg, tmp_path, capsys, extra, message):
    out = tmp_path / "eval"
    assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_malformed_records_line_names_its_number(tmp_path):
    path = tmp_path / "eval_records.jsonl"
    path.write_text('{"kind": "checkpoint", "method": "rome", "num_edits": 0, "retention": 1.0, '
                    '"past_efficacy": null, "past_context_robustness": null}\nnot json\n')
    from src.utils.errors import InputError

    with pytest.raises(InputError, match=r"eval_records.jsonl:2: not an evaluation record"):
        read_records(path)


def test_the_shell_wrapper_runs_from_another_directory(tiny_trained, tiny_kg, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "eval"
    result = subprocess.run([str(REPO_ROOT / "run_editing_eval.sh"), *eval_args(tiny_trained, tiny_kg, out,
                             "--methods", "rome", "--num-edits", "1")], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})  # the interpreter running the tests
    assert result.returncode == 0, result.stderr
    assert (out / "eval_summary.json").is_file()


def test_paired_differences_refuse_records_of_different_requests_and_bad_retention_records():
    from src.edit.evaluation.metrics import EditRecord, RetentionRecord
    from src.utils.errors import InputError

    def record(method, request):
        fields = {f: None for f in EditRecord.__dataclass_fields__ if f not in ("kind", "used_context", "used_kl")}
        fields.update(index=0, method=method, mode="independent", request=request, efficacy=True, efficacy_margin=0.5,
                      num_scored_seen=0, update_norm=1.0, seconds=0.1, layers=(0,), steps=1)
        return EditRecord(**fields)

    same = EditRequest("E_1", "R_1", "E_2", "E_3")
    summary = summarize([record("a", same), record("b", same)])
    assert summary["a"]["compared"]["b"]["efficacy"]["mean"] == 0.0
    with pytest.raises(InputError, match="records 0 of a and b edit different requests"):
        summarize([record("a", same), record("b", EditRequest("E_1", "R_2", "E_2", "E_3"))])
    with pytest.raises(InputError, match="strings of 0 and 1 of one length"):
        RetentionRecord("memit", "0110", "011")
    assert RetentionRecord("memit", "10", "00").drops_points().tolist() == [100.0, 0.0]
