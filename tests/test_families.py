"""Beyond GPT-2: tracing and ROME on tiny random Llama and GPT-NeoX models (rotary embeddings, nn.Linear MLPs)."""

import copy

import numpy as np
import pytest
import torch

from src.edit.causal_tracing import CausalTracer
from src.edit.model_layout import ModelLayout
from src.edit.rome import ROME
from src.edit.tracing_reference import plain_trace
from src.utils.errors import InputError
from tests.tiny_models import tiny_llama_like, tiny_tokenizer


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
@pytest.mark.parametrize("kind", ["hidden", "mlp", "attn"])
def test_tracer_equals_reference(family, kind):
    tokenizer = tiny_tokenizer()
    model = tiny_llama_like(tokenizer, family)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    noise = torch.randn(5, 2, 32, generator=torch.Generator().manual_seed(1)) * 3 * tracer.embedding_std
    result = tracer.trace_important_states("a x", "b r", None, kind=kind, window=2, noise=noise, num_samples=5,
                                           prefix="y q ; ")
    reference, low, high = plain_trace(model, list(result.input_ids), result.subject_range, result.answer_id, noise,
                                       kind, 1 if kind == "hidden" else 2)
    assert np.abs(result.scores - reference).max() <= 1e-5
    assert abs(result.low_score - low) <= 1e-5 and abs(result.high_score - high) <= 1e-5
    assert np.ptp(reference[result.subject_range[0]:]) > 1e-2


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_rome_on_linear_mlp_with_square_weight(family):
    tokenizer = tiny_tokenizer()
    model = tiny_llama_like(tokenizer, family, intermediate_size=32)  # d_ff == d_model: orientation by type only
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

    with pytest.raises(InputError, match="unsupported model_type 'bert'; supported: gpt2, gpt_neox, llama"):
        ModelLayout.of(Fake())
