"""Attention knockout: the batched tracer against a plain one-forward-per-(layer, target) reference on every family,
and that reference against a GPT-2 forward written out by hand with the knocked-out edges in its attention."""

import math

import numpy as np
import pytest
import torch

from src.edit.causal_tracing import CausalTracer, KnockoutResult, TraceRequest
from src.edit.prompts.encoding import encode_fact_prompt
from src.edit.reference.plain_knockout import plain_knockout
from src.edit.tracing.results import window_layers
from src.lm.families import FAMILIES
from src.utils.errors import InputError
from tests.tiny_models import tiny_family_model, tiny_gpt2, tiny_tokenizer

TOL = 1e-5
REQUESTS = [TraceRequest("a x", "b r"), TraceRequest("a", "b r", "x", prefix="y q ; "), TraceRequest("q", "a b r")]


def model_of(family, tokenizer):
    return tiny_gpt2(tokenizer) if family == "gpt2" else tiny_family_model(tokenizer, family)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("window", [1, 2, 3])
def test_knockout_equals_the_plain_masked_forwards(family, window):
    tokenizer = tiny_tokenizer()
    model = model_of(family, tokenizer)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    results = tracer.knockout_many(REQUESTS, window=window)
    moved = 0.0
    for request, result in zip(REQUESTS, results):
        prompt = encode_fact_prompt(tokenizer, request.s, request.r, request.prefix)
        b, e = prompt.subject_range
        assert result.positions == {"subject": tuple(range(b, e)), "relation": tuple(range(e, len(prompt.input_ids)))}
        for target, keys in result.positions.items():
            reference, clean = plain_knockout(model, list(prompt.input_ids), result.answer_id, keys, window)
            assert np.abs(result.scores[target] - reference).max() <= TOL
            assert abs(result.high_score - clean) <= TOL
            moved = max(moved, float(np.abs(result.change(target)).max()))
    assert moved > 1e-3  # blocking the edges does change p(answer)


def gpt2_by_hand(model, ids: list[int], blocked_layers: range, keys) -> torch.Tensor:
    """GPT-2 (eager attention, gelu_new) written out: p over the vocabulary at the last token, the last token's
    attention to `keys` removed in `blocked_layers`."""
    transformer, config = model.transformer, model.config
    d, heads = config.n_embd, config.n_head
    T = len(ids)

    def layer_norm(x, norm):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + config.layer_norm_epsilon) * norm.weight + norm.bias

    def gelu_new(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    x = transformer.wte.weight[ids] + transformer.wpe.weight[:T]
    for layer, block in enumerate(transformer.h):
        a = layer_norm(x, block.ln_1) @ block.attn.c_attn.weight + block.attn.c_attn.bias
        q, k, v = (t.view(T, heads, d // heads).transpose(0, 1) for t in a.split(d, dim=-1))
        scores = q @ k.transpose(1, 2) / math.sqrt(d // heads)
        allowed = torch.ones(T, T, dtype=torch.bool).tril()
        if layer in blocked_layers:
            allowed[T - 1, list(keys)] = False
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        attended = (weights @ v).transpose(0, 1).reshape(T, d)
        x = x + attended @ block.attn.c_proj.weight + block.attn.c_proj.bias
        m = gelu_new(layer_norm(x, block.ln_2) @ block.mlp.c_fc.weight + block.mlp.c_fc.bias)
        x = x + m @ block.mlp.c_proj.weight + block.mlp.c_proj.bias
    logits = layer_norm(x, transformer.ln_f) @ transformer.wte.weight.T
    return torch.softmax(logits[-1], dim=-1)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_plain_knockout_and_the_tracer_equal_a_hand_written_gpt2(attention):
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer, n_layer=4, attn_implementation=attention)
    prompt = encode_fact_prompt(tokenizer, "a x", "b r", "y q ; ")
    ids = list(prompt.input_ids)
    with torch.no_grad():
        answer = int(gpt2_by_hand(model, ids, range(0), ()).argmax())
        torch.testing.assert_close(gpt2_by_hand(model, ids, range(0), ()),
                                   torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1),
                                   atol=1e-6, rtol=1e-5)
        result = CausalTracer(model, tokenizer, device="cpu").knockout("a x", "b r", window=2, prefix="y q ; ")
        for target, keys in result.positions.items():
            by_hand = np.array([float(gpt2_by_hand(model, ids, window_layers(l, 2, 4), keys)[answer])
                                for l in range(4)])
            reference, _ = plain_knockout(model, ids, answer, keys, 2)
            assert np.abs(reference - by_hand).max() <= TOL and np.abs(result.scores[target] - by_hand).max() <= TOL
            assert np.ptp(by_hand) > 1e-4


def test_trace_many_with_knockout_holds_the_same_knockouts_beside_the_traces():
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    traced = tracer.trace_many(REQUESTS, num_samples=2, kinds=["mlp"], window=2, knockout=True)
    alone = tracer.knockout_many(REQUESTS, window=2)
    for traces, knocked in zip(traced, alone):
        assert set(traces) == {"mlp", "knockout"} and traces["knockout"].subject == knocked.subject
        assert all(np.array_equal(traces["knockout"].scores[k], knocked.scores[k]) for k in knocked.scores)


def test_knockout_results_round_trip_and_bad_input_is_one_line():
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    result = tracer.knockout("a x", "b r")
    back = KnockoutResult.from_dict(result.to_dict())
    assert back.positions == result.positions and all(np.array_equal(back.scores[k], result.scores[k])
                                                      for k in result.scores)
    assert np.allclose(result.relative_change("subject"), result.change("subject") / result.high_score)
    with pytest.raises(InputError, match="unknown knockout target 'object'; allowed: subject, relation"):
        result.change("object")
    with pytest.raises(InputError, match="window must be >= 1, got 0"):
        tracer.knockout("a x", "b r", window=0)
    tracer.model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(InputError, match="attention knockout needs eager or sdpa attention"):
        tracer.knockout("a x", "b r")


def test_locating_with_knockout_writes_curves_arrays_and_a_plot(tiny_trained, tiny_kg, tmp_path, capsys):
    import json

    import run_locating_batch
    from src.cli.common import run_cli
    from src.pipelines.locate_sample import load_results

    out = tmp_path / "loc"
    args = ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
            "--num-samples", "4", "--output-dir", str(out), "--knockout", "--kinds", "mlp"]
    assert run_cli(run_locating_batch.main, args) == 0
    assert "knockout last token -> subject" in capsys.readouterr().out
    summary = json.loads((out / "locating_summary.json").read_text())
    assert summary["parameters"]["knockout"] is True
    _, samples, _ = load_results(out)
    arrays = np.load(out / "traces.npz")
    changes = []
    for sample in samples:
        knocked = sample.knockout
        assert knocked is not None and knocked.subject == sample.fact.s
        assert np.array_equal(arrays[f"{sample.index:03d}/knockout_subject"], knocked.scores["subject"])
        changes.append(knocked.change("subject"))
    average = summary["average_knockout"]["subject"]
    assert np.allclose(average["mean"], np.mean(changes, axis=0)) and average["count"] == len(samples)
    assert (out / "attention_knockout.png").is_file()
