import numpy as np
import pytest
import torch

from src.edit.model.block_call import attention_takes_any_mask
from src.edit.causal_tracing import CausalTracer, TraceRequest, TraceResult, default_window, window_layers
from src.edit.reference.plain_tracing import plain_trace
from src.utils.errors import InputError
from tests.tiny_models import tiny_gpt2, tiny_tokenizer

TOL = 1e-5


def assert_matches_reference(tracer, model, result, noise):
    window = 1 if result.kind == "hidden" else result.window
    ref, low, high = plain_trace(model, list(result.input_ids), result.subject_range, result.answer_id,
                                 noise, result.kind, window)
    assert np.abs(result.scores - ref).max() <= TOL
    assert abs(result.low_score - low) <= TOL and abs(result.high_score - high) <= TOL
    return ref


def assert_same_trace(traced: TraceResult, expected: TraceResult):
    """Exact equality for what identifies a trace (ids, tokens, ranges, sizes); 1e-5 for the measured floats."""
    for name in ("subject", "relation", "prompt", "input_ids", "input_tokens", "subject_range", "answer",
                 "answer_id", "kind", "window", "num_samples"):
        assert getattr(traced, name) == getattr(expected, name), name
    for name in ("low_score", "high_score", "noise_std"):
        assert getattr(traced, name) == pytest.approx(getattr(expected, name), abs=TOL), name
    np.testing.assert_allclose(traced.scores, expected.scores, atol=TOL)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["hidden", "mlp", "attn"])
@pytest.mark.parametrize("window", [1, 2, 3, 10])
@pytest.mark.parametrize("suffix_replay, share_restorations, merge_passes",
                         [(False, True, True), (False, False, True), (True, True, True), (True, True, False),
                          (True, False, False)])
def test_batched_tracer_equals_plain_reference_on_random_gpt2(kind, window, attn_implementation, suffix_replay,
                                                              share_restorations, merge_passes):
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer, attn_implementation=attn_implementation)
    tracer = CausalTracer(model, tokenizer, device="cpu", suffix_replay=suffix_replay,
                          share_restorations=share_restorations, merge_passes=merge_passes)
    noise = torch.randn(6, 2, 32, generator=torch.Generator().manual_seed(1)) * 3 * tracer.embedding_std
    # a two-token subject behind a context prefix: tokens before the subject, first/last subject token, relation
    result = tracer.trace_important_states("a x", "b r", None, kind=kind, window=window, noise=noise, num_samples=6,
                                           prefix="y q z ; ")
    assert result.subject_range == (4, 6)
    assert result.input_tokens == ("y", "q", "z", ";", "a", "x", "b", "r")
    ref = assert_matches_reference(tracer, model, result, noise)
    assert np.ptp(ref[4:]) > 1e-3  # the check is not vacuous: restorations change p(answer)


def test_tracer_equals_reference_on_trained_kg_model(tiny_model, tiny_kg):
    model, tokenizer = tiny_model
    tracer = CausalTracer(model, tokenizer, device="cpu", subjects=tiny_kg.graph.entities)
    fact = tiny_kg.graph.facts[5]
    noise = torch.randn(10, 1, model.config.n_embd, generator=torch.Generator().manual_seed(0)) * 3 * tracer.embedding_std
    for kind in ("hidden", "mlp", "attn"):
        result = tracer.trace_important_states(fact.s, fact.r, fact.o, kind=kind, noise=noise, num_samples=10)
        assert result.answer == fact.o and result.high_score > 0.5
        assert_matches_reference(tracer, model, result, noise)
    # restoring the last token's final hidden state restores the clean prediction exactly
    hidden = tracer.trace_important_states(fact.s, fact.r, fact.o, kind="hidden", noise=noise, num_samples=10)
    assert hidden.scores[-1, -1] == pytest.approx(hidden.high_score, abs=1e-5)


def test_small_chunks_give_identical_scores():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    noise = torch.randn(4, 1, 32, generator=torch.Generator().manual_seed(2))
    big = CausalTracer(model, tokenizer, device="cpu").trace_kinds("a", "b r", noise=noise, num_samples=4)
    small = CausalTracer(model, tokenizer, device="cpu", max_batch_tokens=12).trace_kinds("a", "b r", noise=noise, num_samples=4)
    for kind in big:
        np.testing.assert_allclose(big[kind].scores, small[kind].scores, atol=TOL)


def test_tracing_many_facts_together_equals_one_at_a_time():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    noise = torch.randn(5, 2, 32, generator=torch.Generator().manual_seed(4))
    requests = [  # prompts of 2, 3 and 5 tokens, one- and two-token subjects, given and predicted answers
        TraceRequest("a", "b", "c", seed=1), TraceRequest("a x", "b", None, seed=2), TraceRequest("x", "r", "z", seed=3),
        TraceRequest("q", "b r", None, seed=4), TraceRequest("a x", "r", "c", noise=noise),
        TraceRequest("z", "b", None, seed=5, prefix="y q ; "),
    ]
    together = tracer.trace_many(requests, num_samples=5, facts_per_forward=3)
    for request, traced in zip(requests, together):
        alone = tracer.trace_kinds(request.s, request.r, request.o_target, num_samples=5, noise=request.noise,
                                   seed=request.seed, prefix=request.prefix)
        assert traced.keys() == alone.keys() == {"hidden", "mlp", "attn"}
        for kind in alone:
            assert_same_trace(traced[kind], alone[kind])
    assert len({traced["hidden"].low_score for traced in together}) == len(requests)  # each fact has its own noise


def test_tracing_leaves_the_model_as_it_was_even_when_it_fails():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    before = [type(m) for m in model.modules()]
    tracer = CausalTracer(model, tokenizer, device="cpu")
    tracer.trace_kinds("a", "b", num_samples=2)
    with pytest.raises(InputError, match="noise has shape"):
        tracer.trace_kinds("a", "b", num_samples=2, noise=torch.zeros(3, 1, 32))
    assert [type(m) for m in model.modules()] == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_flash_and_flex_attention_replay_every_token():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    assert attention_takes_any_mask(model)
    model.config._attn_implementation = "flash_attention_2"  # its mask is a padding mask: no suffix replay
    assert not attention_takes_any_mask(model)


def test_seeded_noise_is_reproducible_and_scaled():
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    first = tracer.trace_important_states("a", "b", noise_level=3.0, seed=7)
    again = tracer.trace_important_states("a", "b", noise_level=3.0, seed=7)
    other = tracer.trace_important_states("a", "b", noise_level=3.0, seed=8)
    assert np.array_equal(first.scores, again.scores)
    assert not np.array_equal(first.scores, other.scores)
    assert first.noise_std == pytest.approx(3.0 * tracer.embedding_std)


def test_result_fields_and_round_trip():
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    result = tracer.trace_important_states("a", "b", kind=None, num_samples=3)
    assert result.kind == "hidden" and result.scores.shape == (2, 5) and result.subject_range == (0, 1)
    again = TraceResult.from_dict(result.to_dict())
    assert np.array_equal(again.scores, result.scores)
    assert again.to_dict() == result.to_dict()


def test_locate_picks_argmax_of_mlp_effect_at_the_position():
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    located = tracer.locate("a x", "b", "c", position="last", window=1, seed=3)
    trace = tracer.trace_important_states("a x", "b", "c", kind="mlp", window=1, seed=3)
    assert located.layer == int(np.argmax(trace.indirect_effect[-1]))
    assert tracer.locate_important_layer("a x", "b", "c", window=1, seed=3) == located.layer
    sub = tracer.locate("a x", "b", "c", position="subject_last", window=1, seed=3)
    assert sub.token_index == 1 and sub.layer == int(np.argmax(trace.indirect_effect[1]))


def test_windows_follow_the_original():
    assert list(window_layers(7, 10, 48)) == list(range(2, 12))
    assert list(window_layers(0, 10, 8)) == list(range(0, 5))
    assert list(window_layers(3, 1, 8)) == [3]
    assert default_window(48) == 10 and default_window(8) == 2 and default_window(2) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"s": "nope", "r": "b"}, "unknown subject 'nope'"),
        ({"s": "a", "r": "nope"}, "unknown relation 'nope'"),
        ({"s": "a", "r": "b", "o_target": "nope"}, "unknown object 'nope'"),
        ({"s": "a", "r": "b", "kind": "resid"}, "unknown kind 'resid'"),
        ({"s": "a", "r": "b", "window": 0}, "window must be >= 1"),
        ({"s": "a", "r": "b", "noise_level": 0}, "noise_level must be > 0"),
        ({"s": "a", "r": "b", "num_samples": 0}, "num_samples must be >= 1"),
        ({"s": "a", "r": "b", "noise": torch.zeros(3, 2, 32)}, "noise has shape"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    tokenizer = tiny_tokenizer()
    tracer = CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cpu")
    with pytest.raises(InputError, match=message):
        tracer.trace_important_states(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    tokenizer = tiny_tokenizer()
    with pytest.raises(InputError, match="CUDA is not available"):
        CausalTracer(tiny_gpt2(tokenizer), tokenizer, device="cuda")


def test_suffix_replay_is_used_and_can_be_turned_off():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    calls = []
    handle = model.transformer.h[2].register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[1]))
    try:
        for suffix_replay in (True, False):
            calls.clear()
            CausalTracer(model, tokenizer, device="cpu", suffix_replay=suffix_replay,
                         merge_passes=False).trace_kinds("a x", "b r", num_samples=2)
            # block 2 sees the whole 4-token prompt in the runs; then, restoring the subject (tokens 0-1) or the
            # relation (2-3), the tokens from the first one recomputed: 0 (mlp/attn at token 0), 1 (hidden at token
            # 0, over the clean run's keys and values; and token 1), 2, 3
            assert calls[0] == 4 and sorted(set(calls[1:])) == ([1, 2, 3, 4] if suffix_replay else [4])
    finally:
        handle.remove()


def test_the_runs_record_the_clean_outputs_of_the_kinds_traced_only():
    from src.edit.prompts.encoding import encode_fact_prompt

    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    runs = tracer.engine.runs([TraceRequest("a", "r")], [encode_fact_prompt(tokenizer, "a", "r")],
                              [(torch.zeros(2, 1, 32), 0.0)], kinds=("mlp",))
    assert sorted({name.split(".")[0] for name in runs.clean}) == ["hidden", "mlp"]  # block outputs always
    with pytest.raises(ValueError, match="not attn"):
        tracer.engine.trace(runs, ["attn"], window=2)


def test_restorations_that_restored_the_same_states_share_their_rows():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)  # 5 layers
    rows = {}
    for share in (True, False):
        seen = []
        handle = model.transformer.h[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
        try:
            CausalTracer(model, tokenizer, device="cpu", share_restorations=share,
                         merge_passes=False).trace_important_states("a", "r", kind="mlp", window=10, num_samples=3)
        finally:
            handle.remove()
        rows[share] = seen[1:]  # after the runs: one replay pass per first token recomputed
    # window 10 over 5 layers restores layers 0-4 for every layer (clipped): per token, 5 equal restorations
    assert rows[False] == [5 * 3, 5 * 3] and rows[True] == [3, 3]


def test_passes_are_merged_when_block_calls_cost_more_than_the_tokens_saved():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    noise = torch.randn(4, 1, 32, generator=torch.Generator().manual_seed(3)) * 3
    # one length (4 tokens), subjects starting at token 2 (behind a prefix) and at token 0
    requests = [TraceRequest("a", "r", None, noise=noise, prefix="y ; "), TraceRequest("b", "x q r", None, noise=noise)]
    calls: list[int] = []
    handle = model.transformer.h[2].register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[1]))
    traced = {}
    try:
        for cost in (0, 10 ** 9):
            calls.clear()
            tracer = CausalTracer(model, tokenizer, device="cpu")
            tracer.engine.block_call_cost = cost
            traced[cost] = tracer.trace_many(requests, num_samples=4)
            # free block calls: one pass per first token recomputed; costly ones: one pass from the first subject token
            assert sorted(set(calls[1:])) == ([1, 2, 3, 4] if cost == 0 else [4])
    finally:
        handle.remove()
    for request, merged, apart in zip(requests, traced[10 ** 9], traced[0]):
        for kind in ("hidden", "mlp", "attn"):
            result = merged[kind]
            reference, _, _ = plain_trace(model, list(result.input_ids), result.subject_range, result.answer_id,
                                          noise, kind, result.window)
            np.testing.assert_allclose(result.scores, reference, atol=TOL)
            np.testing.assert_allclose(apart[kind].scores, reference, atol=TOL)
    assert [t["hidden"].subject_range[0] for t in traced[0]] == [2, 0]


def test_a_reused_trace_figure_draws_what_a_fresh_one_draws(tmp_path):
    from matplotlib.image import imread

    from src.viz.tracing import TraceFigure, plot_trace

    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    requests = [TraceRequest(s, "r", None, seed=i) for i, s in enumerate("abc")]
    traced = [list(t.values()) for t in tracer.trace_many(requests, num_samples=3)]
    figure = TraceFigure(traced[0])
    for i, (traces, best) in enumerate(zip(traced, [1, None, 4])):  # other data, limits and lines each time
        figure.save(traces, tmp_path / f"reused{i}.png", best_layer=best)
        plot_trace(traces, tmp_path / f"fresh{i}.png", best_layer=best)
        assert np.array_equal(imread(tmp_path / f"reused{i}.png"), imread(tmp_path / f"fresh{i}.png"))
    with pytest.raises(ValueError, match="drawn on a figure of shape"):
        figure.save(traced[0][:1], tmp_path / "wrong.png")
