"""Prompts with and without BOS, and batches padded on either side: the same numbers either way."""

import copy

import numpy as np
import pytest
import torch

from src.edit.causal_tracing import CausalTracer
from src.edit.prompts.batch import PromptBatch, pad_id
from src.edit.prompts.encoding import encode_fact_prompt
from src.edit.rome import ROME
from src.edit.reference.plain_tracing import plain_trace
from src.lm.token_ids import encode_prompt, starts_with_bos
from src.lm.train import encode_corpus
from src.utils.errors import InputError
from tests.tiny_models import tiny_family_model, tiny_gpt2, tiny_tokenizer

PROMPTS = ["a r", "y q ; a x r", "b", "c z ; d r ; a q"]


def test_bos_follows_the_tokenizer_and_shifts_the_subject_range():
    plain, with_bos = tiny_tokenizer(), tiny_tokenizer(bos=True)
    assert not starts_with_bos(plain) and starts_with_bos(with_bos)
    without = encode_fact_prompt(plain, "a x", "r", prefix="y q ; ")
    prompt = encode_fact_prompt(with_bos, "a x", "r", prefix="y q ; ")
    assert prompt.input_ids == (with_bos.bos_token_id,) + without.input_ids
    assert prompt.subject_range == (without.subject_range[0] + 1, without.subject_range[1] + 1) == (4, 6)
    assert encode_fact_prompt(with_bos, "a x", "r", prefix="y q ; ", bos=False).input_ids == without.input_ids
    assert encode_prompt(with_bos, "a r") == [with_bos.bos_token_id] + encode_prompt(plain, "a r")


def test_object_targets_move_with_bos():
    tokenizer = tiny_tokenizer(bos=True)
    inputs, targets = encode_corpus(["a r b ; c q d"], tokenizer, "objects", 16).buckets[7]
    assert tokenizer.convert_ids_to_tokens(inputs[0].tolist())[:2] == ["<bos>", "a"]
    assert [t if t == -100 else tokenizer.convert_ids_to_tokens(t) for t in targets[0].tolist()] == \
        [-100, -100, "b", -100, -100, -100, "d"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_trace_with_bos_equals_reference_and_leaves_bos_clean(family):
    tokenizer = tiny_tokenizer(bos=True)
    model = tiny_gpt2(tokenizer) if family == "gpt2" else tiny_family_model(tokenizer, family)
    tracer = CausalTracer(model, tokenizer, device="cpu")
    noise = torch.randn(4, 2, model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 3 * tracer.embedding_std
    result = tracer.trace_important_states("a x", "r", None, kind="hidden", noise=noise, num_samples=4, prefix="y q ; ")
    assert result.input_tokens[0] == "<bos>" and result.subject_range == (4, 6)
    reference, low, high = plain_trace(model, list(result.input_ids), result.subject_range, result.answer_id, noise,
                                       "hidden", 1)
    assert np.abs(result.scores - reference).max() <= 1e-5 and abs(result.low_score - low) <= 1e-5


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "gptj"])
def test_left_and_right_padding_give_the_same_last_logits(family):
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer) if family == "gpt2" else tiny_family_model(tokenizer, family)
    prompts = [encode_prompt(tokenizer, p) for p in PROMPTS]
    alone = torch.cat([PromptBatch.of([p], pad_id(tokenizer), torch.device("cpu")).last_logits(model) for p in prompts])
    for side in ("right", "left"):
        batch = PromptBatch.of(prompts, pad_id(tokenizer), torch.device("cpu"), side=side)
        assert torch.allclose(batch.last_logits(model), alone, atol=1e-4), side
    left = PromptBatch.of(prompts, pad_id(tokenizer), torch.device("cpu"), side="left")
    assert left.last.tolist() == [7] * 4 and left.columns([0, 0, 0, 0]).tolist() == [6, 2, 7, 0]  # lengths 2, 6, 1, 8
    assert left.position_ids[0].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]


def test_padding_side_is_checked():
    with pytest.raises(InputError, match="unknown padding side 'middle'; allowed: right, left"):
        PromptBatch.of([[1]], 0, torch.device("cpu"), side="middle")


def test_rome_edit_is_the_same_with_a_left_padding_tokenizer(tiny_model, tiny_kg):
    """Context prefixes and KL prompts of several lengths are batched: left padding must change nothing."""
    model, tokenizer = tiny_model
    fact = tiny_kg.graph.facts[0]
    results = {}
    for side in ("right", "left"):
        tokenizer.padding_side = side
        rome = ROME(copy.deepcopy(model), tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path,
                    hparams={"num_context_prefixes": 4, "num_eval_random_facts": 5}, progress=False)
        results[side] = rome.apply_edit(fact.s, fact.r, "E_005")[1]
    assert results["left"].success and results["right"].success
    assert results["left"].v_steps == results["right"].v_steps
    for name in ("k_star", "u", "delta"):  # the same up to float rounding (measured: 5e-6 of the norm for delta)
        left, right = getattr(results["left"]._update, name), getattr(results["right"]._update, name)
        assert float((left - right).norm() / right.norm()) <= 1e-4, name
