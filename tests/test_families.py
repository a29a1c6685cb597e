"""Beyond GPT-2: tracing and ROME on a tiny random model of every family (rotary embeddings, parallel
attention/MLP blocks, gated MLPs, nn.Linear projections), built by `src.lm.model.build_model`."""

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import run_editing_single
import run_locating_batch
from src.cli.common import run_cli
from src.edit.model.block_call import BlockCall, RecordKeysValues
from src.edit.causal_tracing import CausalTracer, TraceRequest
from src.edit.model.hooks import RecordCall
from src.pipelines.locate_sample import load_results
from src.edit.model.layout import ModelLayout
from src.edit.rome import ROME
from src.edit.reference.plain_tracing import plain_trace
from src.lm.config import TokenizerConfig, TrainConfig
from src.lm.token_ids import starts_with_bos
from src.lm.families import FAMILIES as ALL_FAMILIES
from src.lm.model import load_model
from src.pipelines.train_model import train_and_save
from src.utils.errors import InputError
from tests.conftest import TINY_MODEL, TINY_OPTIM
from tests.tiny_models import tiny_family_model, tiny_tokenizer

FAMILIES = [f for f in ALL_FAMILIES if f != "gpt2"]  # GPT-2 has its own tests (test_causal_tracing, test_rome)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["hidden", "mlp", "attn"])
@pytest.mark.parametrize("suffix_replay", [False, True])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_tracer_equals_reference(family, kind, suffix_replay, attn_implementation):
    tokenizer = tiny_tokenizer()
    model = tiny_family_model(tokenizer, family)
    model.config._attn_implementation = attn_implementation  # eager blocks get a mask, which the suffix replay slices
    tracer = CausalTracer(model, tokenizer, device="cpu", suffix_replay=suffix_replay, merge_passes=False)
    noise = torch.randn(5, 2, 32, generator=torch.Generator().manual_seed(1)) * 3 * tracer.embedding_std
    other = torch.randn(5, 1, 32, generator=torch.Generator().manual_seed(2)) * 3 * tracer.embedding_std
    requests = [TraceRequest("a x", "b r", None, noise=noise, prefix="y q ; "),  # 3 tokens before the subject
                TraceRequest("a x", "b r", None, noise=noise), TraceRequest("q", "a b r", None, noise=other)]
    widths = []  # tokens per call of block 1: fewer than the prompt's when only a suffix is recomputed
    handle = ModelLayout.of(model).block(1).register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape[1]))
    try:
        traced = tracer.trace_many(requests, num_samples=5, kinds=[kind], window=2)
    finally:
        handle.remove()
    assert (min(widths) < 4) == suffix_replay
    for request, result in zip(requests, (t[kind] for t in traced)):
        reference, low, high = plain_trace(model, list(result.input_ids), result.subject_range, result.answer_id,
                                           request.noise, kind, 1 if kind == "hidden" else 2)
        assert np.abs(result.scores - reference).max() <= 1e-5
        assert abs(result.low_score - low) <= 1e-5 and abs(result.high_score - high) <= 1e-5
        assert np.ptp(reference[result.subject_range[0]:]) > 1e-2


def test_models_mixing_attention_types_are_refused():
    tokenizer = tiny_tokenizer()
    model = tiny_family_model(tokenizer, "qwen2")
    model.config.layer_types = ["full_attention", "sliding_attention"] * 2
    with pytest.raises(InputError, match="different attention types"):
        CausalTracer(model, tokenizer, device="cpu")


@pytest.mark.parametrize("family", list(ALL_FAMILIES))
def test_every_family_supports_suffix_replay(family):
    tokenizer = tiny_tokenizer()
    model = tiny_family_model(tokenizer, family)
    with RecordCall(ModelLayout.of(model).block(0)) as call, \
            RecordKeysValues([ModelLayout.of(model).attn(l) for l in range(2)]) as keys_values:
        model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=False)
    assert BlockCall.bind(ModelLayout.of(model).block(0), call.args[1:], call.kwargs, num_tokens=3).supports_suffix
    assert [tuple(k.shape[-2:]) for k, _ in keys_values.recorded] == [(3, 32 // model.config.num_attention_heads)] * 2


@pytest.mark.parametrize("family", FAMILIES)
def test_rome_on_linear_mlp_with_square_weight(family):
    tokenizer = tiny_tokenizer()
    model = tiny_family_model(tokenizer, family, intermediate_size=32)  # d_ff == d_model: orientation by type only
    before = copy.deepcopy(model.state_dict())
    with pytest.warns(UserWarning, match="without kg_corpus_path"):
        rome = ROME(model, tokenizer, device="cpu", hparams={"layer": 1, "num_context_prefixes": 0}, progress=False)
    edited, result = rome.apply_edit("a", "r", "z")
    changed = [name for name in before if not torch.equal(before[name], edited.state_dict()[name])]
    assert changed == [result.weight_name + ".weight"]
    assert result.success
    k = result._update.k_star.float()[None]
    with torch.no_grad():
        new = ModelLayout.of(edited).mlp_out(1)(k)[0].double()
        old = torch.nn.functional.linear(k, before[result.weight_name + ".weight"])[0].double()
    assert torch.allclose(new - old, result._update.delta, atol=1e-4 * result._update.delta.norm())


def test_unsupported_family_lists_the_supported_ones():
    class Fake(torch.nn.Module):
        config = type("Config", (), {"model_type": "bert"})()

    with pytest.raises(InputError, match="unsupported model_type 'bert'; supported: gpt2, gpt_neox, gptj, llama, mistral, qwen2$"):
        ModelLayout.of(Fake())


def test_a_llama_trained_on_the_kg_is_located_and_edited_by_the_same_commands(tiny_kg, tmp_path, capsys):
    """`model_type: llama` and a tokenizer that starts every text with <bos>, as Llama's do; then the guide's
    locating and editing scripts, unchanged."""
    config = TrainConfig(kg_dir=tiny_kg.directory, output_dir=tmp_path / "llama", seed=0,
                         model=replace(TINY_MODEL, model_type="llama"), optim=TINY_OPTIM,
                         tokenizer=TokenizerConfig(bos=True))
    trained = train_and_save(config, progress=False)
    assert trained.result.reached_target
    model, tokenizer = load_model(trained.model_dir, "cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and starts_with_bos(tokenizer)
    common = ["--model-dir", str(trained.model_dir), "--device", "cpu"]
    out = tmp_path / "loc"
    assert run_cli(run_locating_batch.main, common + ["--kg-file", str(tiny_kg.graph_path), "--num-samples", "3",
                                                      "--num-noise-samples", "3", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "locating_summary.json").read_text())
    assert summary["num_traced"] == 3 and all(0 <= s["best_layer"] < TINY_MODEL.n_layer for s in summary["samples"])
    _, samples, _ = load_results(out)
    trace = samples[0].traces["hidden"]
    assert trace.input_tokens[0] == "<bos>" and trace.subject_range == (1, 2)
    fact = tiny_kg.graph.facts[0]
    target = next(e for e in tiny_kg.graph.entities if e != fact.o)
    edit_out, hparams = tmp_path / "edit", tmp_path / "rome.yaml"
    hparams.write_text("num_context_prefixes: 5\nnum_eval_random_facts: 10\n")
    assert run_cli(run_editing_single.main, common + ["--kg-corpus", str(tiny_kg.corpus_path), "-s", fact.s, "-r", fact.r,
                                                      "-o", target, "--output-dir", str(edit_out), "--hparams", str(hparams)]) == 0
    result = json.loads((edit_out / "edit_result.json").read_text())["result"]
    assert result["success"] is True and result["weight_name"].endswith("mlp.down_proj")


@pytest.mark.parametrize("family", FAMILIES)
def test_train_lm_builds_trains_saves_and_reloads_every_family(family, tiny_kg, tmp_path):
    """A few training steps of each family from a TrainConfig; the saved directory loads through the Auto classes
    into the same family with the same weights."""
    optim = replace(TINY_OPTIM, max_steps=5, eval_every=5)
    config = TrainConfig(kg_dir=tiny_kg.directory, output_dir=tmp_path / family, seed=0,
                         model=replace(TINY_MODEL, model_type=family, n_inner=None), optim=optim)
    trained = train_and_save(config, progress=False)
    assert trained.result.steps == 5
    model, _ = load_model(trained.model_dir, "cpu")
    assert model.config.model_type == family and ModelLayout.of(model).num_layers == TINY_MODEL.n_layer
    again = train_and_save(config, output_dir=tmp_path / "again", progress=False)
    reloaded, _ = load_model(again.model_dir, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_traces_follow_float32(family, dtype):
    """The suffix replay's keys, values and mask follow the model's dtype (run here on the CPU)."""
    tokenizer = tiny_tokenizer()
    model = tiny_family_model(tokenizer, family)
    noise = torch.randn(5, 2, 32, generator=torch.Generator().manual_seed(1))
    request = [TraceRequest("a x", "b r", None, noise=noise)]
    full = CausalTracer(model, tokenizer, device="cpu").trace_many(request, num_samples=5)[0]
    half = CausalTracer(model.to(dtype), tokenizer, device="cpu").trace_many(request, num_samples=5)[0]
    for kind in full:
        assert np.abs(full[kind].scores - half[kind].scores).max() < 2e-2
