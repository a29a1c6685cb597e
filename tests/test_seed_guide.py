"""The usage guide's Python API examples, verbatim except for the model and device."""

import pytest
import torch

from src.utils.errors import InputError


def test_guide_python_api(tiny_model, tiny_kg, tmp_path, monkeypatch):
    monkeypatch.setenv("KG_ROME_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_model
    device = "cuda" if torch.cuda.is_available() else "cpu"

    from src.edit.causal_tracing import CausalTracer

    tracer = CausalTracer(model, tokenizer, device=device)
    result = tracer.trace_important_states(s="E_000", r="R_01", o_target="E_001", noise_level=3.0, num_samples=10)
    best_layer = tracer.locate_important_layer(s="E_000", r="R_01", o_target="E_001")
    assert 0 <= best_layer < model.config.n_layer
    assert result.scores.shape == (2, model.config.n_layer)

    from src.edit.rome import ROME

    rome = ROME(model, tokenizer, device=device, kg_corpus_path=str(tiny_kg.corpus_path), use_mom2_adjustment=True)
    edited_model, result = rome.apply_edit(s="E_000", r="R_01", o_target="E_005", copy_model=True)
    assert result.success and result.new_prediction == "E_005" and result.original_prediction == "E_001"
    assert isinstance(result.layer, int)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_guide_cuda_device_fails_clearly_without_cuda(tiny_model):
    from src.edit.causal_tracing import CausalTracer
    from src.edit.rome import ROME

    model, tokenizer = tiny_model
    with pytest.raises(InputError, match="CUDA is not available"):
        CausalTracer(model, tokenizer, device="cuda")
    with pytest.raises(InputError, match="CUDA is not available"):
        ROME(model, tokenizer, device="cuda")
