"""The method registry: every method edits the tiny trained model through one interface, changing only the
tensors it reports; MEMIT's layer update against its normal equations; FT's L-infinity constraint."""

import copy
import dataclasses

import pytest
import torch

from src.edit.evaluation.requests import EditRequest, draw_requests
from src.edit.methods import METHODS, EditEnvironment, apply_method, build_editor
from src.edit.methods.memit import MEMITHyperParams
from src.edit.model.speedups import SpeedPaths
from src.lm.fact_accuracy import predict_objects
from src.kg.graph import Fact
from src.utils.errors import InputError

FAST = {
    "rome": {"layer": 1, "num_context_prefixes": 3, "num_eval_random_facts": 5},
    # the original code's edit position (the subject's last token) moves the tiny model no more than the default one
    "rome-original": {"layer": 1, "num_context_prefixes": 3, "num_eval_random_facts": 5, "fact_token": "last"},
    "ft": {"layer": 1, "num_context_prefixes": 3, "norm_constraint": 0.2, "lr": 0.02},
    "memit": {"layers": [0, 1, 2], "num_context_prefixes": 3, "mom2_source": "corpus", "mom2_update_weight": 100},
}  # (the tiny KG has fewer facts than the MLP has keys dims: C from fact prompts alone would be singular)


@pytest.fixture()
def env(tiny_kg, tmp_path):
    return EditEnvironment(corpus_path=tiny_kg.corpus_path, device=torch.device("cpu"), stats_dir=tmp_path)


def changed_tensors(before, after):
    old = dict(before.named_parameters())
    return sorted(name for name, p in after.named_parameters() if not torch.equal(p, old[name]))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_makes_the_target_top1_and_reports_what_it_changed(method, tiny_model, tiny_kg, env):
    model, tokenizer = tiny_model
    original = copy.deepcopy(model)
    request = draw_requests(tiny_kg.graph, 1, seed=5)[0]
    editor = build_editor(method, model, tokenizer, FAST[method], env)
    output = editor.edit([request])
    assert predict_objects(model, tokenizer, [Fact(request.s, request.r, request.target)]) == [request.target]
    assert changed_tensors(original, model) == sorted(output.changed)
    assert len(output.infos) == 1 and output.infos[0].layers
    assert all(" " in sentence for sentence in output.infos[0].context_facts)


def test_one_fact_methods_refuse_batches(tiny_model, tiny_kg, env):
    model, tokenizer = tiny_model
    requests = draw_requests(tiny_kg.graph, 2, seed=0)
    with pytest.raises(InputError, match="one fact at a time"):
        apply_method("rome", model, tokenizer, requests, FAST["rome"], env)
    with pytest.raises(InputError, match="unknown method 'nope'"):
        build_editor("nope", model, tokenizer, None, env)
    with pytest.raises(InputError, match="unknown config key 'lr'"):
        build_editor("memit", model, tokenizer, {"lr": 1}, env)


def test_ft_stays_inside_its_linf_ball(tiny_model, tiny_kg, env):
    model, tokenizer = tiny_model
    original = copy.deepcopy(model)
    hparams = {**FAST["ft"], "norm_constraint": 0.01, "num_steps": 20, "stop_prob": 1.0}
    output = build_editor("ft", model, tokenizer, hparams, env).edit(draw_requests(tiny_kg.graph, 3, seed=2))
    (name,) = output.changed
    change = (dict(model.named_parameters())[name] - dict(original.named_parameters())[name]).detach()
    assert 0.0099 < float(change.abs().max()) <= 0.01 + 1e-7



@pytest.mark.parametrize("method", ["ft", "memit"])
def test_half_precision_edits_stay_finite(method, tiny_model, tiny_kg, env):
    """float16 weights (run here on the CPU; CUDA is where they are used): FT's Adam must not step on float16
    weights (its eps underflows and the weight became inf, found on an H200)."""
    model, tokenizer = tiny_model
    model.to(torch.float16)
    request = draw_requests(tiny_kg.graph, 1, seed=5)[0]
    output = build_editor(method, model, tokenizer, FAST[method], env).edit([request])
    (name, *_) = output.changed
    assert bool(torch.isfinite(dict(model.named_parameters())[name]).all())
    assert predict_objects(model, tokenizer, [Fact(request.s, request.r, request.target)]) == [request.target]

def test_memit_layer_update_solves_its_normal_equations(tiny_model, env):
    """dW = R K^T (lambda C + K K^T)^-1 is the minimiser of |dW K - R|^2 + lambda tr(dW C dW^T): the gradient,
    (dW K - R) K^T + lambda dW C, must vanish."""
    model, tokenizer = tiny_model
    editor = build_editor("memit", model, tokenizer, {**FAST["memit"], "mom2_update_weight": 3.0}, env)
    assert editor.hparams.mom2_source == "corpus"
    generator = torch.Generator().manual_seed(0)
    d_ff = editor.layout.mlp_out(1).weight.shape[0]  # Conv1D: (d_ff, d_model)
    keys = torch.randn(5, d_ff, generator=generator, dtype=torch.float64)
    residual = torch.randn(5, editor.layout.hidden_size, generator=generator, dtype=torch.float64)
    update = editor._layer_update(1, keys, residual)
    from src.edit.rank_one.key_statistics import load_or_compute_second_moment

    moment, cached = load_or_compute_second_moment(editor._statistics_model, tokenizer, env.corpus_path, 1, 0,
                                                   cache_dir=env.stats_dir, progress=False)
    assert cached
    gradient = (update @ keys.T - residual.T) @ keys + 3.0 * update @ moment.double()
    assert update.shape == (editor.layout.hidden_size, d_ff)
    assert float(gradient.abs().max()) < 1e-8 * float(update.abs().max() + 1)


def test_memit_batch_edits_the_requests_jointly(tiny_model, tiny_kg, env):
    model, tokenizer = tiny_model
    requests = draw_requests(tiny_kg.graph, 4, seed=1)
    _, infos = apply_method("memit", model, tokenizer, requests, {**FAST["memit"], "z_batch_size": 3}, env)
    assert [i.layers for i in infos] == [(0, 1, 2)] * 4
    predicted = predict_objects(model, tokenizer, [Fact(q.s, q.r, q.target) for q in requests])
    hits = sum(p == q.target for p, q in zip(predicted, requests))
    assert hits >= 3  # 3 of 4 on this tiny model (its keys are nearly collinear); the default model: docs/results.md


def test_memit_targets_are_the_same_bits_every_time_on_two_threads(tiny_model, tiny_kg, env):
    """z for a batch whose rows map onto requests in two runs (rewrite prompts, then KL prompts), wide enough (134 rows
    x 576) that torch splits a gradient's accumulation over both threads: every call gives the same bits (summing
    repeated indices through advanced indexing's backward does not, on this batch)."""
    from tests.tiny_models import tiny_gpt2

    _, tokenizer = tiny_model
    model = tiny_gpt2(tokenizer, n_layer=2, n_embd=576)
    editor = build_editor("memit", model, tokenizer, {**FAST["memit"], "layers": [0, 1], "v_num_grad_steps": 5}, env)
    sets, targets = editor.prepare(draw_requests(tiny_kg.graph, 30, seed=0))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        targets_z = [editor._target_residuals(sets, targets)[0] for _ in range(8)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(targets_z[0], z) for z in targets_z[1:])


def test_memit_targets_on_packed_prompts_equal_those_on_the_padded_batch(tiny_model, tiny_kg, env, monkeypatch):
    """z at block 2 of 5: the blocks above run on the rewrite and KL prompts packed into fewer rows
    (`SpeedPaths.pack_prompts`) and give the targets the padded batch gives, to float32 rounding."""
    import src.edit.model.resumed_forward as resumed_forward

    packed, original = [], resumed_forward.packed_call

    def spy(call, layout):
        packed.append(layout.num_rows < layout.batch_rows)
        return original(call, layout)

    monkeypatch.setattr(resumed_forward, "packed_call", spy)
    model, tokenizer = tiny_model
    requests = draw_requests(tiny_kg.graph, 4, seed=1)
    targets_z = {}
    for pack in (True, False):
        editor = build_editor("memit", model, tokenizer, {**FAST["memit"], "v_num_grad_steps": 5},
                              dataclasses.replace(env, speed=SpeedPaths(pack_prompts=pack)))
        sets, targets = editor.prepare(requests)
        targets_z[pack] = editor._target_residuals(sets, targets)[0]
    assert packed == [True]  # packed once, with fewer rows; the padded run never asks
    torch.testing.assert_close(targets_z[True], targets_z[False], atol=1e-5, rtol=1e-5)


def test_memit_hparams_are_checked():
    with pytest.raises(InputError, match="increasing"):
        MEMITHyperParams(layers=(2, 1))
    assert MEMITHyperParams(layers=[0, 3]).layers == (0, 3)
    assert MEMITHyperParams().layers is None  # every layer of the model


def test_rome_original_defaults_to_the_original_code(tiny_model, env):
    model, tokenizer = tiny_model
    editor = build_editor("rome-original", model, tokenizer, {"layer": 1}, env)
    assert editor.hparams.key_mode == "original" and editor.hparams.v_objective == "lookup"
    assert (editor.hparams.kl_direction, editor.hparams.v_weight_decay_form) == ("reverse", "norm")
    assert build_editor("rome", model, tokenizer, None, env).hparams.key_mode == "consistent"
    assert build_editor("memit", model, tokenizer, None, env).layers == (0, 1, 2, 3)  # default: every layer
    assert EditRequest("a", "b", "c", "d").to_dict()["target"] == "d"


@pytest.mark.parametrize("method", list(METHODS))
def test_each_default_hparams_file_matches_the_method_defaults(method):
    from src.pipelines.evaluate_methods import DEFAULT_HPARAMS_FILES
    from tests.conftest import REPO_ROOT

    spec = METHODS[method]
    assert spec.load_hparams(REPO_ROOT / DEFAULT_HPARAMS_FILES[method]) == spec.load_hparams(None)


def test_sequential_rome_config_fixes_the_layer_and_keeps_each_methods_key_mixture():
    from src.edit.methods.rome_editor import load_rome_original_hparams
    from src.edit.rank_one.hparams import load_hparams as load_rome_hparams
    from tests.conftest import REPO_ROOT

    path = REPO_ROOT / "configs" / "rome_sequential_gpt_small.yaml"
    default = load_rome_hparams(REPO_ROOT / "configs" / "rome_gpt_small.yaml").to_dict()
    sequential = load_rome_hparams(path).to_dict()
    assert {key: sequential[key] for key in default if sequential[key] != default[key]} == {"layer": 0}
    original = load_rome_original_hparams(path)  # the overlay leaves rome-original's own keys alone
    assert (original.layer, original.key_mode, original.v_objective) == (0, "original", "lookup")


@pytest.mark.parametrize("name, method", [("memit_gpt_mlp1024", "memit"), ("memit_sequential_gpt_small", "memit"),
                                          ("rome_original_gpt_small", "rome"),
                                          ("rome_original_last_token_gpt_small", "rome-original"),
                                          ("rome_fast_gpt_small", "rome"), ("rome_normalized_gd_gpt_small", "rome")])
def test_an_overlay_method_config_is_its_base_with_its_own_keys(name, method):
    """`base:` overlays: loading gives the base file's hyperparameters with exactly the keys the overlay writes."""
    import yaml

    from tests.conftest import REPO_ROOT

    path = REPO_ROOT / "configs" / f"{name}.yaml"
    written = yaml.safe_load(path.read_text())
    base = METHODS[method].load_hparams(path.parent / written.pop("base")).to_dict()
    loaded = METHODS[method].load_hparams(path).to_dict()
    assert {key: value for key, value in loaded.items() if base[key] != value} == written
