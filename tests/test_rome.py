import copy

import numpy as np
import pytest
import torch

from src.edit.model.layout import ModelLayout
from src.edit.rank_one.linalg import combine_keys, null_space_projector, solve_psd
from src.edit.model.layout import apply_update
from src.edit.rome import ROME, RankOneUpdate
from src.edit.rank_one.hparams import ROMEHyperParams, load_hparams
from src.edit.rank_one.key_statistics import load_or_compute_second_moment, stats_key
from src.utils.errors import InputError
from tests.conftest import REPO_ROOT
from tests.tiny_models import tiny_gpt2, tiny_tokenizer

FAST = {"num_context_prefixes": 3, "num_eval_prefixes": 2, "num_eval_random_facts": 10, "v_num_grad_steps": 60,
        "clamp_norm_factor": 20, "v_weight_decay": 0.001}


@pytest.fixture()
def tiny_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("a r b\nx q y ; c r d\nb q a\nc r x\nd q z ; a q c\ny r a\nz r b\nx r c\n")
    return path


def changed_tensors(before: dict, after: dict) -> list[str]:
    return [name for name in before if not torch.equal(before[name], after[name])]


def test_rank_one_update_closed_form():
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(500, 6, generator=generator, dtype=torch.float64)
    moment = keys.T @ keys / 500
    k_star = torch.randn(6, generator=generator, dtype=torch.float64)
    delta = torch.randn(4, generator=generator, dtype=torch.float64)
    u = solve_psd(moment, k_star)
    assert torch.allclose(moment @ u, k_star, atol=1e-10)
    update = RankOneUpdate(k_star=k_star, key=k_star, u=u, delta=delta)
    matrix = update.matrix()
    assert torch.allclose(matrix @ k_star, delta, atol=1e-12)  # W' k* = W k* + delta = v*
    assert torch.linalg.matrix_rank(matrix).item() == 1
    expected = torch.outer(delta, torch.linalg.inv(moment) @ k_star) / (k_star @ torch.linalg.inv(moment) @ k_star)
    assert torch.allclose(matrix, expected, atol=1e-10)


@pytest.mark.parametrize("key_mode", ["consistent", "original"])
def test_several_keys_get_delta_in_full_from_the_least_change_rank_one_update(key_mode):
    """A 3-piece target read at 3 positions: W' k_j = W k_j + delta at each key k_j, with dW written out
    independently: dW = delta 1^T (K C^-1 K_den^T)^-1 K C^-1 (rows of K: the mean keys; K_den = K, where this is
    the update of least ||dW C^1/2|| with that property, or the bare prompt's keys for "original", the original's
    one-key mixture)."""
    generator = torch.Generator().manual_seed(3)
    samples = torch.randn(400, 8, generator=generator, dtype=torch.float64)
    moment = samples.T @ samples / 400
    keys = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    bare = keys + 0.3 * torch.randn(3, 8, generator=generator, dtype=torch.float64)
    denominator_keys = keys if key_mode == "consistent" else bare
    delta = torch.randn(5, generator=generator, dtype=torch.float64)
    k_star, key, u = combine_keys(keys, denominator_keys, lambda x: solve_psd(moment, x))
    update = RankOneUpdate(k_star=k_star, key=key, u=u, delta=delta, keys=keys)
    matrix = update.matrix()
    assert torch.linalg.matrix_rank(matrix).item() == 1
    for k in denominator_keys:
        assert torch.allclose(matrix @ k, delta, atol=1e-9)
    inverse = torch.linalg.inv(moment)
    gram = keys @ inverse @ denominator_keys.T  # (3, 3)
    expected = torch.outer(delta, torch.ones(3, dtype=torch.float64) @ torch.linalg.inv(gram) @ keys @ inverse)
    assert torch.allclose(matrix, expected, atol=1e-9)
    one_key = combine_keys(keys[:1], denominator_keys[:1], lambda x: solve_psd(moment, x))
    assert torch.equal(one_key[2], solve_psd(moment, keys[0]))  # one key: ROME's u = C^-1 k*, unchanged


def test_keys_that_admit_no_equal_delta_update_are_one_clear_error():
    key = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    same = torch.stack([key, key])  # one key twice: fine, u . k is equal for both
    assert torch.allclose(combine_keys(same, same, lambda x: x.clone())[2], key)  # as for one key, with C = I
    opposite = torch.stack([key, -key])  # u . k_1 = -u . k_2: no u gives both the same nonzero value
    with pytest.raises(InputError, match="the 2 keys of this multi-token edit give no update with delta at each"):
        combine_keys(opposite, opposite, lambda x: x.clone())


def test_solve_falls_back_on_a_singular_moment():
    vector = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    singular = torch.diag(torch.tensor([2.0, 4.0, 0.0], dtype=torch.float64))
    assert torch.allclose(solve_psd(singular, vector), torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("n_inner", [None, 32])  # 32 == n_embd: a square MLP, where a shape test would be wrong
def test_edit_is_rank_one_on_one_tensor_and_hits_v_star(tiny_corpus, tmp_path, n_inner):
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer, n_inner=n_inner)
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_corpus, hparams={**FAST, "layer": 2},
                stats_dir=tmp_path / "cache", progress=False)
    before = copy.deepcopy(model.state_dict())
    edited, result = rome.apply_edit("a", "r", "z", copy_model=True)
    after = edited.state_dict()
    assert changed_tensors(before, after) == ["transformer.h.2.mlp.c_proj.weight"]
    assert result.weight_name == "transformer.h.2.mlp.c_proj"
    diff = (after["transformer.h.2.mlp.c_proj.weight"] - before["transformer.h.2.mlp.c_proj.weight"]).double()
    assert torch.linalg.matrix_rank(diff, atol=1e-5 * diff.abs().max()).item() == 1
    update = result._update
    # the edited projection maps k* to its old output plus delta (Conv1D stores (d_ff, d_model): y = k W + b)
    module = ModelLayout.of(edited).mlp_out(2)
    k = update.k_star.float()[None]
    with torch.no_grad():
        new_out = module(k)[0].double()
        old_out = (k @ before["transformer.h.2.mlp.c_proj.weight"] + before["transformer.h.2.mlp.c_proj.bias"])[0].double()
    assert torch.allclose(new_out - old_out, update.delta, atol=1e-4 * update.delta.norm())


def test_linear_orientation_with_square_weight():
    linear = torch.nn.Linear(5, 5, bias=False)
    before = linear.weight.detach().clone()
    update = torch.outer(torch.arange(5.0), torch.ones(5)).double()
    apply_update(linear, update)
    assert torch.allclose(linear.weight - before, update.float())  # nn.Linear stores (out, in): no transpose


def test_original_key_mode_uses_the_bare_key_in_the_denominator(tiny_corpus, tmp_path):
    tokenizer = tiny_tokenizer()
    rome = ROME(tiny_gpt2(tokenizer), tokenizer, device="cpu", kg_corpus_path=tiny_corpus,
                hparams={**FAST, "layer": 1, "key_mode": "original", "v_objective": "lookup"},
                stats_dir=tmp_path / "cache", progress=False)
    _, result = rome.apply_edit("a", "r", "z")
    update = result._update
    assert not torch.allclose(update.key, update.k_star)
    assert torch.allclose(update.matrix() @ update.key, update.delta, atol=1e-9)


def test_copy_model_leaves_model_bit_identical_and_restore_undoes_in_place(tiny_corpus, tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_corpus, hparams={**FAST, "layer": 1},
                stats_dir=tmp_path / "cache", progress=False)
    original = copy.deepcopy(model.state_dict())
    edited, _ = rome.apply_edit("a", "r", "z", copy_model=True)
    assert edited is not model and changed_tensors(original, model.state_dict()) == []
    same, result = rome.apply_edit("a", "r", "z", copy_model=False)
    assert same is model and len(changed_tensors(original, model.state_dict())) == 1
    ROME.restore(model, result)
    assert changed_tensors(original, model.state_dict()) == []


def test_statistics_cache_is_keyed_by_weights(tiny_corpus, tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    first, cached = load_or_compute_second_moment(model, tokenizer, tiny_corpus, 1, 0, cache_dir=tmp_path, progress=False)
    again, cached_again = load_or_compute_second_moment(model, tokenizer, tiny_corpus, 1, 0, cache_dir=tmp_path, progress=False)
    assert not cached and cached_again and torch.equal(first, again)
    key = stats_key(model, tokenizer, tiny_corpus, 1, 0)
    assert stats_key(model, tiny_tokenizer(bos=True), tiny_corpus, 1, 0) != key  # BOS changes the keys
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    assert stats_key(model, tokenizer, tiny_corpus, 1, 0) != key
    assert stats_key(model, tokenizer, tiny_corpus, 2, 0) != stats_key(model, tokenizer, tiny_corpus, 1, 0)
    changed, cached_changed = load_or_compute_second_moment(model, tokenizer, tiny_corpus, 1, 0, cache_dir=tmp_path, progress=False)
    assert not cached_changed and not torch.equal(changed, first)
    # C is the uncentered second moment of the keys
    assert torch.allclose(first, first.T) and torch.linalg.eigvalsh(first).min() > -1e-9


def test_edit_on_trained_kg_model_succeeds_and_keeps_other_facts(tiny_model, tiny_kg, tmp_path):
    model, tokenizer = tiny_model
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path,
                hparams={"num_context_prefixes": 5, "clamp_norm_factor": 20, "v_weight_decay": 0.001},
                stats_dir=tmp_path / "cache", progress=False)
    fact = tiny_kg.graph.facts[0]
    target = next(e for e in tiny_kg.graph.entities if e not in (fact.o, fact.s))
    edited, result = rome.apply_edit(fact.s, fact.r, target)
    assert result.success and result.new_prediction == target and result.original_prediction == fact.o
    assert result.status == "edited" and result.layer_source == "located"
    assert result.target_prob_after > 0.5 > result.target_prob_before
    assert result.metrics.specificity_random >= 0.9
    from src.lm.fact_accuracy import fact_accuracy

    others = [f for f in tiny_kg.graph.facts if (f.s, f.r) != (fact.s, fact.r)]
    assert fact_accuracy(edited, tokenizer, others).accuracy >= 0.95
    data = result.to_dict()
    assert data["success"] is True and "_saved_weight" not in data and data["metrics"]["num_random_facts"] > 0


def test_target_equal_to_prediction_changes_nothing(tiny_model, tiny_kg, tmp_path):
    model, tokenizer = tiny_model
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path, progress=False)
    fact = tiny_kg.graph.facts[0]
    same, result = rome.apply_edit(fact.s, fact.r, fact.o)
    assert same is model and result.status == "unchanged" and "already predicts" in result.note


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda rome: rome.apply_edit("nope", "r", "z"), "unknown subject 'nope'"),
        (lambda rome: rome.apply_edit("a", "nope", "z"), "unknown relation 'nope'"),
        (lambda rome: rome.apply_edit("a", "r", "nope"), "unknown target 'nope'"),
        (lambda rome: rome.apply_edit("a", "r", "z", layer=9), r"layer 9 is out of range; this model has layers 0\.\.4"),
    ],
)
def test_bad_edit_input_is_a_clear_error(call, message, tiny_corpus, tmp_path):
    tokenizer = tiny_tokenizer()
    rome = ROME(tiny_gpt2(tokenizer), tokenizer, device="cpu", kg_corpus_path=tiny_corpus, stats_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match=message):
        call(rome)


def test_missing_corpus_and_bad_hparams_are_clear_errors(tmp_path):
    tokenizer = tiny_tokenizer()
    with pytest.raises(InputError, match="Corpus file not found"):
        ROME(tiny_gpt2(tokenizer), tokenizer, device="cpu", kg_corpus_path=tmp_path / "none.txt")
    with pytest.raises(InputError, match="unknown config key 'clamp'"):
        load_hparams({"clamp": 1})
    with pytest.raises(InputError, match="fact_token must be one of"):
        ROMEHyperParams(fact_token="first")


def test_default_hparams_file_matches_the_dataclass():
    from_yaml = load_hparams(REPO_ROOT / "configs" / "rome_gpt_small.yaml")
    assert from_yaml == ROMEHyperParams()  # ROME(hparams=None) and the documented YAML are the same settings


def test_no_corpus_warns_and_uses_identity(tmp_path):
    tokenizer = tiny_tokenizer()
    with pytest.warns(UserWarning, match="C = I"):
        rome = ROME(tiny_gpt2(tokenizer), tokenizer, device="cpu", hparams={**FAST, "layer": 1}, progress=False)
    _, result = rome.apply_edit("a", "r", "z")
    assert torch.allclose(result._update.u, result._update.k_star)
    assert np.isfinite(result.update_norm)


def test_edits_are_deterministic(tiny_corpus, tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_corpus, hparams=FAST,
                stats_dir=tmp_path / "cache", progress=False)
    first, a = rome.apply_edit("a", "r", "z")
    second, b = rome.apply_edit("a", "r", "z")
    assert a.layer == b.layer and a.v_steps == b.v_steps
    assert all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), second.state_dict().values()))


def test_failed_located_edit_is_undone_and_retried_at_the_next_best_layer(tiny_model, tiny_kg, tmp_path):
    """A clamp of ~0 makes every edit fail: each retry must first undo the failed edit (one tensor changed in the
    end, at the last layer tried), and the layers tried follow the trace's ranking."""
    model, tokenizer = tiny_model
    original = copy.deepcopy(model.state_dict())
    fact = tiny_kg.graph.facts[0]
    target = next(e for e in tiny_kg.graph.entities if e not in (fact.o, fact.s))
    hparams = {"num_context_prefixes": 3, "clamp_norm_factor": 1e-6, "v_num_grad_steps": 3, "layer_retries": 2}
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, hparams=hparams,
                stats_dir=tmp_path, progress=False)
    _, result = rome.apply_edit(fact.s, fact.r, target, copy_model=False)
    effects = result.locate["effects"]
    ranking = sorted(range(len(effects)), key=lambda l: (-effects[l], l))
    assert not result.success and result.layer_source == "located (retry)" and result.layer == ranking[2]
    assert changed_tensors(original, model.state_dict()) == [f"{result.weight_name}.weight"]
    ROME.restore(model, result)
    assert changed_tensors(original, model.state_dict()) == []
    _, no_retry = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path,
                       hparams={**hparams, "layer_retries": 0}, stats_dir=tmp_path, progress=False).apply_edit(
        fact.s, fact.r, target)
    assert no_retry.layer_source == "located" and no_retry.layer == ranking[0]


def test_past_keys_weight_keeps_a_new_update_off_earlier_edits_keys(tiny_corpus, tmp_path):
    """With a large past_keys_weight, the second in-place edit's update barely moves the first edit's key (u is
    nearly orthogonal to it); without it, it does; forget_past_edits drops the remembered keys."""
    def second_update_on_first_key(weight: float) -> float:
        tokenizer = tiny_tokenizer()
        model = tiny_gpt2(tokenizer)
        rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_corpus,
                    hparams={**FAST, "layer": 2, "past_keys_weight": weight}, stats_dir=tmp_path / "cache",
                    progress=False, statistics_from="initial")
        _, first = rome.apply_edit("a", "r", "z", copy_model=False)
        _, second = rome.apply_edit("c", "r", "y", copy_model=False)
        assert len(rome.covariance.past_keys.get(2, [])) == (2 if weight else 0)
        rome.forget_past_edits()
        assert rome.covariance.past_keys == {}
        k_first = first._update.k_star
        return float((second._update.matrix() @ k_first).norm() / second._update.delta.norm())

    assert second_update_on_first_key(1e6) < 1e-3 < second_update_on_first_key(0.0)


def test_null_space_update_leaves_the_preserved_key_directions_unchanged(tiny_corpus, tmp_path):
    """null_space_threshold: u = P k* with P the projector on C's small-eigenvalue directions, so the update maps
    every large-eigenvalue direction of C (the keys the corpus uses) to ~0, and the edit still lands."""
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    moment, _ = load_or_compute_second_moment(model, tokenizer, tiny_corpus, 2, 0, cache_dir=tmp_path / "cache",
                                              progress=False)
    projector = null_space_projector(moment, 0.01)
    assert torch.allclose(projector @ projector, projector, atol=1e-10) and torch.allclose(projector, projector.T)
    values, vectors = torch.linalg.eigh(moment.double())
    preserved = vectors[:, values >= 0.01 * values[-1]]
    assert preserved.shape[1] > 0 and float((projector @ preserved).abs().max()) < 1e-10
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_corpus, stats_dir=tmp_path / "cache",
                hparams={**FAST, "layer": 2, "null_space_threshold": 0.01}, progress=False)
    _, result = rome.apply_edit("a", "r", "z")
    assert result.success
    update = result._update.matrix()  # (d_model, d_ff)
    assert float((update @ preserved).norm()) < 1e-8 * float(update.norm())
    with pytest.raises(InputError, match="null_space_threshold must be in"):
        ROME(model, tokenizer, device="cpu", hparams={"null_space_threshold": 1.5}, progress=False)


def test_fact_prompt_statistics_are_the_last_token_keys_of_every_fact(tiny_model, tiny_kg, tmp_path):
    from src.edit.model.hooks import Trace
    from src.edit.prompts.kg_context import KGContext

    model, tokenizer = tiny_model
    moment, cached = load_or_compute_second_moment(model, tokenizer, tiny_kg.corpus_path, 1, 0, cache_dir=tmp_path,
                                                   progress=False, source="fact_prompts")
    keys = []
    for fact in KGContext.from_corpus(tiny_kg.corpus_path).facts:  # one plain forward per fact
        with torch.no_grad(), Trace(ModelLayout.of(model).mlp_out(1), retain_input=True) as trace:
            model(input_ids=torch.tensor([tokenizer(fact.prompt(), add_special_tokens=False)["input_ids"]]))
        keys.append(trace.input[0, -1].double())
    keys = torch.stack(keys)
    assert not cached and torch.allclose(moment, keys.T @ keys / len(keys), rtol=1e-5, atol=1e-7)
    both, _ = load_or_compute_second_moment(model, tokenizer, tiny_kg.corpus_path, 1, 0, cache_dir=tmp_path,
                                            progress=False, source="both")
    corpus, corpus_cached = load_or_compute_second_moment(model, tokenizer, tiny_kg.corpus_path, 1, 0,
                                                          cache_dir=tmp_path, progress=False)
    assert corpus_cached and torch.allclose(both, (corpus + moment) / 2)
    assert len(list((tmp_path / "mom2").glob("*.pt"))) == 2
    with pytest.raises(InputError, match="mom2_source must be one of corpus, fact_prompts, both"):
        ROMEHyperParams(mom2_source="tokens")
