"""Metric logit_diff, the normalized effect, and attribution patching (method "attribution").

Exact tracing with logit_diff is checked against the plain one-forward-per-restoration reference; attribution against
a plain autograd computation that differentiates one layer's state at a time, and, on a model whose every block is
affine, against exact restorations, which the first-order estimate must then equal."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from src.edit.causal_tracing import CausalTracer, TraceRequest, TraceResult
from src.edit.prompts.encoding import encode_fact_prompt
from src.edit.reference.plain_attribution import plain_attribution
from src.edit.reference.plain_tracing import plain_replacement_trace, plain_trace
from src.utils.errors import InputError
from tests.tiny_models import tiny_family_model, tiny_gpt2, tiny_tokenizer

TOL = 1e-5
CASES = [("hidden", 1), ("mlp", 1), ("mlp", 2), ("attn", 3)]


def model_of(family, tokenizer):
    return tiny_gpt2(tokenizer) if family == "gpt2" else tiny_family_model(tokenizer, family)


def noise_for(tokenizer, s, r, samples=4, seed=1):
    b, e = encode_fact_prompt(tokenizer, s, r).subject_range
    return torch.randn(samples, e - b, 32, generator=torch.Generator().manual_seed(seed)) * 3


def contrast_by_hand(model, ids, noise=None, replaced=None):
    """(answer, contrast) built apart from the tracer: the clean row's top token, and the corrupted rows' most
    probable other token; the corrupted rows add `noise` at the subject (tokens 0-1) or read `replaced`."""
    with torch.no_grad():
        if noise is None:
            logits = model(input_ids=torch.tensor([ids, replaced]), use_cache=False).logits[:, -1].float()
        else:
            embedded = model.get_input_embeddings()(torch.tensor([ids] * (1 + len(noise)))).clone()
            embedded[1:, 0:2] += noise
            logits = model(inputs_embeds=embedded).logits[:, -1].float()
    answer = int(logits[0].argmax())
    probabilities = torch.softmax(logits[1:], -1).mean(0)
    probabilities[answer] = -1
    return answer, int(probabilities.argmax())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kind, window", CASES)
@pytest.mark.parametrize("corruption", ["gaussian", "replace"])
def test_logit_diff_tracing_equals_the_plain_reference(family, kind, window, corruption):
    tokenizer = tiny_tokenizer()
    model = model_of(family, tokenizer)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    s, r = "a x", "b r"
    ids = list(encode_fact_prompt(tokenizer, s, r).input_ids)
    if corruption == "gaussian":
        noise = noise_for(tokenizer, s, r)
        result = tracer.trace_important_states(s, r, kind=kind, window=window, noise=noise, num_samples=4,
                                               metric="logit_diff")
        answer, contrast = contrast_by_hand(model, ids, noise=noise)
        reference, low, high = plain_trace(model, ids, (0, 2), answer, noise, kind, window, "logit_diff", contrast)
    else:
        replaced = list(encode_fact_prompt(tokenizer, "q y", r).input_ids)
        result = tracer.trace_important_states(s, r, kind=kind, window=window, corruption="replace",
                                               replacement="q y", metric="logit_diff")
        answer, contrast = contrast_by_hand(model, ids, replaced=replaced)
        reference, low, high = plain_replacement_trace(model, ids, replaced, answer, kind, window, "logit_diff",
                                                       contrast)
    assert result.metric == "logit_diff" and (result.answer_id, result.contrast_id) == (answer, contrast)
    assert np.abs(result.scores - reference).max() <= 1e-4  # logits are O(10): float32 rounding of their difference
    assert abs(result.low_score - low) <= 1e-4 and abs(result.high_score - high) <= 1e-4
    assert np.ptp(reference[result.subject_range[0]:]) > 1e-2


@pytest.mark.parametrize("metric", ["prob", "logit_diff"])
def test_normalized_effect_is_one_where_the_clean_state_is_back_and_zero_before_the_subject(tiny_model, tiny_kg,
                                                                                              metric):
    """Restoring the last token's final hidden state restores the clean metric exactly: normalized effect 1."""
    model, tokenizer = tiny_model
    tracer = CausalTracer(model, tokenizer, device="cpu")
    fact, context = tiny_kg.graph.facts[0], tiny_kg.graph.facts[1]
    result = tracer.trace_important_states(fact.s, fact.r, fact.o, kind="hidden", metric=metric,
                                           prefix=f"{context.s} {context.r} {context.o} ; ")
    assert result.subject_range[0] == 4
    normalized = result.normalized_effect
    spread = abs(result.high_score - result.low_score)
    assert spread > 1e-3 and abs(normalized[-1, -1] - 1) * spread <= 1e-5 * max(1.0, abs(result.high_score))
    assert np.abs(normalized[: result.subject_range[0]]).max() <= 1e-6  # tokens before the subject never see noise
    assert np.isnan(dataclasses.replace(result, high_score=result.low_score + 1e-12).normalized_effect).all()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kind, window", CASES)
@pytest.mark.parametrize("metric", ["prob", "logit_diff"])
def test_attribution_equals_a_plain_autograd_computation(family, kind, window, metric):
    tokenizer = tiny_tokenizer()
    model = model_of(family, tokenizer)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    s, r = "a x", "b r"
    noise = noise_for(tokenizer, s, r, samples=3)
    ids = list(encode_fact_prompt(tokenizer, s, r).input_ids)
    result = tracer.trace_important_states(s, r, kind=kind, window=window, noise=noise, num_samples=3,
                                           metric=metric, method="attribution")
    reference, low, high = plain_attribution(model, ids, result.answer_id, kind, window, metric, result.contrast_id,
                                             noise=noise, subject_range=(0, 2))
    assert result.method == "attribution" and result.num_samples == 3
    scale = 1 if metric == "prob" else 10  # logit differences are O(10)
    assert np.abs(result.scores - reference).max() <= TOL * scale
    assert abs(result.low_score - low) <= TOL * scale and abs(result.high_score - high) <= TOL * scale
    assert np.ptp(reference[0:]) > 1e-3  # the estimates are not all zero


@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_facts_batched_with_their_own_noise_each_equal_the_plain_computations(method):
    """Three facts of one length in one forward, 3 noise samples each, logit_diff: each fact's contrast and scores
    as computed for it alone by the plain references."""
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    subjects = ["a x", "q y", "x a"]
    requests = [TraceRequest(s, "b r", noise=noise_for(tokenizer, s, "b r", samples=3, seed=i))
                for i, s in enumerate(subjects)]
    traced = tracer.trace_many(requests, num_samples=3, kinds=["hidden", "mlp"], window=2, metric="logit_diff",
                               method=method)
    for request, traces in zip(requests, traced):
        ids = list(encode_fact_prompt(tokenizer, request.s, request.r).input_ids)
        answer, contrast = contrast_by_hand(model, ids, noise=request.noise)
        for kind, result in traces.items():
            assert (result.answer_id, result.contrast_id) == (answer, contrast)
            if method == "exact":
                reference, low, _ = plain_trace(model, ids, (0, 2), answer, request.noise, kind, result.window,
                                                "logit_diff", contrast)
            else:
                reference, low, _ = plain_attribution(model, ids, answer, kind, result.window, "logit_diff", contrast,
                                                      noise=request.noise, subject_range=(0, 2))
            assert np.abs(result.scores - reference).max() <= 1e-4 and abs(result.low_score - low) <= 1e-4


@pytest.mark.parametrize("kind, window", CASES)
def test_attribution_of_facts_batched_with_replacements_equals_the_plain_computation(tiny_model, tiny_kg, kind,
                                                                                     window):
    model, tokenizer = tiny_model
    facts, entities = tiny_kg.graph.facts[:6], tiny_kg.graph.entities
    requests = [TraceRequest(f.s, f.r, f.o, replacement=next(e for e in entities[i:] if e != f.s))
                for i, f in enumerate(facts)]
    tracer = CausalTracer(model, tokenizer, device="cpu")
    traced = tracer.trace_many(requests, kinds=[kind], window=window, corruption="replace", metric="logit_diff",
                               method="attribution")
    for request, result in zip(requests, (t[kind] for t in traced)):
        ids = list(encode_fact_prompt(tokenizer, request.s, request.r).input_ids)
        replaced = list(encode_fact_prompt(tokenizer, request.replacement, request.r).input_ids)
        reference, low, _ = plain_attribution(model, ids, result.answer_id, kind, window, "logit_diff",
                                              result.contrast_id, replaced_ids=replaced)
        assert np.abs(result.scores - reference).max() <= 1e-4 and abs(result.low_score - low) <= 1e-4


def affine_gpt2(tokenizer):
    """A GPT-2 whose blocks are affine: no layer norms, identity activation, queries and keys zero (uniform causal
    attention), so every logit is an affine function of every state."""
    torch.manual_seed(0)
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=32, n_layer=4, n_head=4,
                        activation_function="linear", attn_implementation="eager",
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8)
        for block in model.transformer.h:
            block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
            block.attn.c_attn.weight[:, : 2 * 32] = 0
            block.attn.c_attn.bias[: 2 * 32] = 0
            block.mlp.c_proj.weight.mul_(20)
        model.transformer.ln_f = nn.Identity()
    return model


@pytest.mark.parametrize("kind", ["hidden", "mlp", "attn"])
def test_attribution_equals_exact_restorations_on_an_affine_model(kind):
    tokenizer = tiny_tokenizer()
    model = affine_gpt2(tokenizer)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    noise = noise_for(tokenizer, "a x", "b r", samples=3) * 10
    common = dict(kind=kind, window=1, noise=noise, num_samples=3, metric="logit_diff")
    exact = tracer.trace_important_states("a x", "b r", **common)
    estimate = tracer.trace_important_states("a x", "b r", method="attribution", **common)
    spread = np.ptp(exact.scores)
    assert spread > 1e-2
    assert np.abs(estimate.scores - exact.scores).max() <= 1e-5 * max(1.0, np.abs(exact.scores).max())
    # p(answer) is not affine in the states: there the estimate is only close
    prob = dict(common, metric="prob")
    exact_p = tracer.trace_important_states("a x", "b r", **prob)
    estimate_p = tracer.trace_important_states("a x", "b r", method="attribution", **prob)
    difference = np.abs(estimate_p.scores - exact_p.scores).max()
    assert 1e-6 < difference < 0.1 * np.ptp(exact_p.scores), difference


def test_metric_and_method_round_trip_and_default_traces_keep_their_keys():
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    plain = tracer.trace_important_states("a x", "b r", num_samples=2)
    assert not {"metric", "method", "contrast"} & set(plain.to_dict())
    other = tracer.trace_important_states("a x", "b r", num_samples=2, metric="logit_diff", method="attribution")
    back = TraceResult.from_dict(other.to_dict())
    assert (back.metric, back.method, back.contrast, back.contrast_id) == ("logit_diff", "attribution", other.contrast,
                                                                           other.contrast_id)
    assert back.contrast != back.answer and np.array_equal(back.scores, other.scores)


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "kl"}, "unknown metric 'kl'; allowed: prob, logit_diff"),
    ({"method": "guess"}, "unknown method 'guess'; allowed: exact, attribution"),
])
def test_bad_metric_or_method_is_one_line(kwargs, message):
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    with pytest.raises(InputError) as raised:
        tracer.trace_important_states("a x", "b r", **kwargs)
    assert str(raised.value) == message


def test_rank_correlation_and_agreement_against_hand_computed_values():
    from src.edit.tracing.stats import agreement, average_ranks, rank_correlation

    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    a, b = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    d = np.array([1, -1, 1, -1, 0])  # rank differences, no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    assert rank_correlation(a, b) == pytest.approx(1 - 6 * (d ** 2).sum() / (5 * 24))
    assert rank_correlation(a, -a) == pytest.approx(-1) and np.isnan(rank_correlation(a, np.ones(5)))
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    base = tracer.trace_important_states("a", "b r", kind="mlp", window=1, num_samples=2, prefix="y ; ")
    assert base.subject_range == (2, 3) and base.scores.shape == (5, 5)
    first = np.zeros((5, 5), np.float32)  # cells from the subject on (rows 2..4), ranks written out by hand
    first[2:] = np.arange(15).reshape(3, 5)
    second = first.copy()
    second[4, 4], second[4, 3] = first[4, 3], first[4, 4]  # one adjacent swap among 15 ranks: 1 - 6*2/(15*224)
    second[0, 0] = 99.0  # before the subject: left out
    a = dataclasses.replace(base, scores=first, low_score=0.0)
    b = dataclasses.replace(base, scores=second, low_score=0.0, method="attribution")
    found = agreement(a, b)
    assert found.rank_correlation == pytest.approx(1 - 6 * 2 / (15 * 224))
    assert (found.exact_best_layer, found.estimated_best_layer, found.same_best_layer) == (4, 3, False)
    assert found.max_difference == pytest.approx(1.0)
    with pytest.raises(InputError, match="the metric is 'prob' in one and 'logit_diff' in the other"):
        agreement(a, dataclasses.replace(b, metric="logit_diff"))


def test_locating_with_logit_diff_and_attribution_says_so_everywhere(tiny_trained, tiny_kg, tmp_path, capsys):
    import json

    import run_locating_batch
    from src.cli.common import run_cli
    from src.pipelines.locate_sample import load_results

    out = tmp_path / "loc"
    args = ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
            "--num-samples", "3", "--output-dir", str(out), "--metric", "logit_diff", "--method", "attribution"]
    assert run_cli(run_locating_batch.main, args) == 0
    printed = capsys.readouterr().out
    assert "metric:     logit difference" in printed and "method:     attribution patching" in printed
    summary = json.loads((out / "locating_summary.json").read_text())
    assert summary["parameters"]["metric"] == "logit_diff" and summary["parameters"]["method"] == "attribution"
    assert summary["mean_clean_logit_diff"] > summary["mean_corrupted_logit_diff"]
    _, samples, _ = load_results(out)
    for sample in samples:
        for trace in sample.traces.values():
            assert (trace.metric, trace.method) == ("logit_diff", "attribution") and trace.contrast != trace.answer
    assert (out / "average_indirect_effect.png").is_file() and len(list(out.glob("trace_*.png"))) == len(samples)
    for flag, value in (("--metric", "kl"), ("--method", "guess")):
        with pytest.raises(SystemExit) as raised:
            run_locating_batch.parse_args([flag, value])
        assert raised.value.code == 2
        assert f"invalid choice: '{value}'" in capsys.readouterr().err


def test_comparing_two_locating_runs_writes_agreement_and_a_figure(tiny_trained, tiny_kg, tmp_path, capsys):
    import json

    import run_locating_batch
    import visualize_locating
    from src.cli.common import run_cli
    from src.edit.tracing.stats import agreement
    from src.pipelines.locate_sample import load_results

    common = ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
              "--num-samples", "4", "--no-plots"]
    assert run_cli(run_locating_batch.main, common + ["--output-dir", str(tmp_path / "exact")]) == 0
    assert run_cli(run_locating_batch.main, common + ["--output-dir", str(tmp_path / "attr"), "--method",
                                                      "attribution"]) == 0
    capsys.readouterr()
    assert run_cli(visualize_locating.main, ["--results-dir", str(tmp_path / "exact"), "--compare",
                                             str(tmp_path / "attr"), "--plot-dir", str(tmp_path / "cmp")]) == 0
    assert "mlp: mean rank correlation" in capsys.readouterr().out
    written = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    _, exact, _ = load_results(tmp_path / "exact")
    _, estimated, _ = load_results(tmp_path / "attr")
    by_hand = np.mean([agreement(a.traces["mlp"], b.traces["mlp"]).same_best_layer for a, b in zip(exact, estimated)])
    assert written["num_common_facts"] == len(exact) and written["agreement"]["mlp"]["same_best_layer"] == by_hand
    assert "attribution patching" in written["labels"][1] and (tmp_path / "cmp" / "comparison.png").is_file()
