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
    ({"corruption": "replace", "replacement": "q"}, "replacement 'q' is 1 tokens but the subject 'a x' is 2"),
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
