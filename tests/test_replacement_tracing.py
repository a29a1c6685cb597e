"""Symmetric token replacement (corruption "replace"): the corrupted run reads another subject's tokens. Checked
against a plain one-forward-per-restoration implementation that runs the replaced prompt's own token ids, for every
kind and window, on GPT-2 and every other family."""

import numpy as np
import pytest

from src.edit.causal_tracing import CausalTracer, TraceRequest, TraceResult
from src.edit.prompts.encoding import encode_fact_prompt
from src.edit.reference.plain_tracing import plain_replacement_trace
from src.lm.families import FAMILIES
from src.utils.errors import InputError
from tests.tiny_models import tiny_family_model, tiny_gpt2, tiny_tokenizer

TOL = 1e-5


def model_of(family, tokenizer):
    return tiny_gpt2(tokenizer) if family == "gpt2" else tiny_family_model(tokenizer, family)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kind, window", [("hidden", 1), ("mlp", 1), ("mlp", 2), ("attn", 3), ("attn", 10)])
def test_replacement_tracing_equals_the_plain_run_on_the_replaced_prompt(family, kind, window):
    tokenizer = tiny_tokenizer()
    model = model_of(family, tokenizer)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    requests = [TraceRequest("a x", "b r", None, replacement="q y", prefix="y q ; "),
                TraceRequest("a", "b r", None, replacement="x"), TraceRequest("q", "a b r", "x", replacement="b")]
    traced = tracer.trace_many(requests, kinds=[kind], window=window, corruption="replace")
    for request, result in zip(requests, (t[kind] for t in traced)):
        assert result.corruption == "replace" and result.replacement == request.replacement and result.num_samples == 1
        replaced = encode_fact_prompt(tokenizer, request.replacement, request.r, request.prefix).input_ids
        reference, low, high = plain_replacement_trace(model, list(result.input_ids), list(replaced),
                                                       result.answer_id, kind, 1 if kind == "hidden" else window)
        assert np.abs(result.scores - reference).max() <= TOL
        assert abs(result.low_score - low) <= TOL and abs(result.high_score - high) <= TOL
        assert np.ptp(reference[result.subject_range[0]:]) > 1e-4  # the restorations do change the score
        assert TraceResult.from_dict(result.to_dict()).replacement == request.replacement


@pytest.mark.parametrize("bos", [False, True])
def test_facts_with_different_replacements_in_one_forward_each_equal_the_plain_run(tiny_model, tiny_kg, bos):
    """Prompts of one length go into the same forward, each with its own replacement (drawn or given); with BOS, on
    a random GPT-2 over a tokenizer that puts <bos> first (the subject's range moves by one)."""
    if bos:
        tokenizer = tiny_tokenizer(bos=True)
        model = tiny_gpt2(tokenizer)
        words = ["a", "b", "c", "d", "q", "x", "y", "z"]
        pairs = [(u, v) for u in words for v in words if u != v][:8]
        requests = [TraceRequest(u, "r", None, replacement=v) for u, v in pairs]
        tracer = CausalTracer(model, tokenizer, device="cpu")
    else:
        model, tokenizer = tiny_model
        facts = tiny_kg.graph.facts[:8]
        requests = [TraceRequest(f.s, f.r, None, seed=i, replacement=facts[(i + 3) % 8].s if i % 2 else None)
                    for i, f in enumerate(facts)]
        tracer = CausalTracer(model, tokenizer, device="cpu", subjects=tiny_kg.graph.entities)
    traced = tracer.trace_many(requests, kinds=["mlp"], window=2, corruption="replace")
    names = [t["mlp"].replacement for t in traced]
    assert len(set(names)) > 2
    for request, result, name in zip(requests, (t["mlp"] for t in traced), names):
        prompt = encode_fact_prompt(tokenizer, request.s, request.r)
        assert result.subject_range == prompt.subject_range and list(result.input_ids) == list(prompt.input_ids)
        assert (prompt.input_ids[0] == tokenizer.bos_token_id) == bos
        replaced = list(prompt.input_ids)
        b, e = prompt.subject_range
        replaced[b:e] = tokenizer(name, add_special_tokens=False)["input_ids"]  # built apart from the tracer
        reference, low, high = plain_replacement_trace(model, list(prompt.input_ids), replaced, result.answer_id,
                                                       "mlp", 2)
        assert np.abs(result.scores - reference).max() <= TOL and abs(result.low_score - low) <= TOL


def test_a_drawn_replacement_has_the_subjects_token_count_changes_the_answer_and_follows_the_seed(tiny_model,
                                                                                                    tiny_kg):
    import torch

    model, tokenizer = tiny_model
    fact = tiny_kg.graph.facts[0]
    tracer = CausalTracer(model, tokenizer, device="cpu", subjects=tiny_kg.graph.entities)
    clean = tracer.trace_important_states(fact.s, fact.r).answer_id
    drawn = [tracer.trace_important_states(fact.s, fact.r, corruption="replace", seed=seed) for seed in range(6)]
    again = tracer.trace_important_states(fact.s, fact.r, corruption="replace", seed=0)
    assert again.replacement == drawn[0].replacement and np.array_equal(again.scores, drawn[0].scores)
    names = {t.replacement for t in drawn}
    assert len(names) > 1 and fact.s not in names and names <= set(tiny_kg.graph.entities)
    for name in names:  # each changes the model's answer
        replaced = encode_fact_prompt(tokenizer, name, fact.r).input_ids
        assert int(model(input_ids=torch.tensor([list(replaced)])).logits[0, -1].argmax()) != clean
    assert all(t.low_score < t.high_score for t in drawn)
    model = tiny_gpt2(tiny_tokenizer())  # its answer to "... b r" is the same whatever the subject
    lone = CausalTracer(model, tiny_tokenizer(), device="cpu", subjects=["a x", "q y", "x y", "b"])
    with pytest.raises(InputError, match="no entity of 2 tokens among the subjects changes the answer to 'a x b r'"):
        lone.trace_important_states("a x", "b r", corruption="replace")


@pytest.mark.parametrize("kwargs, message", [
    ({"corruption": "blur"}, "unknown corruption 'blur'; allowed: gaussian, replace"),
    ({"corruption": "replace", "replacement": "E_404"}, "unknown replacement 'E_404'"),
    ({"corruption": "replace", "replacement": "q"}, "replacement 'q' takes 1 token(s) in the prompt and the subject 'a x' 2"),
    ({"corruption": "replace", "replacement": ""}, "empty replacement"),
    ({"replacement": "q y"}, "replacement 'q y' is given but corruption is gaussian; use corruption replace"),
    ({"corruption": "replace", "replacement": "a x"}, "replacement 'a x' is the subject itself"),
    ({"corruption": "replace"}, "corruption replace needs a replacement, or CausalTracer(subjects=...)"),
])
def test_bad_corruptions_are_one_line(kwargs, message):
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    with pytest.raises(InputError) as raised:
        tracer.trace_important_states("a x", "b r", **kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_locating_with_replacement_says_so_and_records_each_replacement(tiny_trained, tiny_kg, tmp_path, capsys):
    import json

    import run_locating_batch
    from src.cli.common import run_cli

    out = tmp_path / "loc"
    args = ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
            "--num-samples", "4", "--no-plots", "--output-dir", str(out), "--corruption", "replace"]
    assert run_cli(run_locating_batch.main, args) == 0
    assert "corruption: the subject's tokens replaced by another entity's" in capsys.readouterr().out
    summary = json.loads((out / "locating_summary.json").read_text())
    assert summary["parameters"]["corruption"] == "replace" and summary["num_traced"] >= 1
    for sample in summary["samples"]:
        for trace in sample["traces"].values():
            assert trace["corruption"] == "replace" and trace["num_samples"] == 1
            assert trace["replacement"] in tiny_kg.graph.entities and trace["replacement"] != sample["s"]
        assert sample["corrupted_prob"] < sample["clean_prob"]
