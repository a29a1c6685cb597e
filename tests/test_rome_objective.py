"""ROME's v* objective against hand-written formulas: ours (squared weight decay, KL(before || now)) and the original
code's (kmeng01/rome compute_v: |delta| / |v|^2 and kl_div(init, now), i.e. KL(now || before))."""

import pytest
import torch

from src.edit.rank_one.delta import delta_objective
from src.edit.rank_one.hparams import ROMEHyperParams
from src.edit.rome import ROME


def hand_written(kl_factor, weight_decay, squared, forward, tlp, w, m, now, before, delta, out):
    nll = -sum(float(w[i]) * float(tlp[i]) for i in range(len(tlp))) / m
    p_now, p_before = now.double().exp(), before.double().exp()
    if forward:  # KL(before || now) = sum_v p_before (log p_before - log p_now), mean over prompts
        kl = float((p_before * (before.double() - now.double())).sum(-1).mean())
    else:
        kl = float((p_now * (now.double() - before.double())).sum(-1).mean())
    d, o = float(delta.double().norm()), float(out.double().norm())
    decay = weight_decay * (d ** 2 if squared else d) / o ** 2
    return nll + kl_factor * kl + decay


@pytest.mark.parametrize("form,direction", [("squared", "forward"), ("norm", "reverse"), ("squared", "reverse"),
                                            ("norm", "forward")])
def test_objective_terms_equal_the_hand_written_formulas(form, direction):
    generator = torch.Generator().manual_seed(0)
    hp = ROMEHyperParams(kl_factor=0.3, v_weight_decay=0.7, v_weight_decay_form=form, kl_direction=direction)
    tlp = -torch.rand(4, generator=generator) * 3  # (n_rewrite,) summed over m pieces
    w = torch.tensor([0.4, 0.2, 0.2, 0.2])
    now = torch.log_softmax(torch.randn(3, 11, generator=generator), dim=-1)
    before = torch.log_softmax(torch.randn(3, 11, generator=generator), dim=-1)
    delta, out = torch.randn(8, generator=generator), torch.randn(8, generator=generator)
    got = float(delta_objective(hp, tlp, w, 2, now, before, delta, out))
    expected = hand_written(0.3, 0.7, form == "squared", direction == "forward", tlp, w, 2, now, before, delta, out)
    assert got == pytest.approx(expected, rel=1e-5)
    other = "reverse" if direction == "forward" else "forward"
    flipped = float(delta_objective(ROMEHyperParams(kl_factor=0.3, v_weight_decay=0.7, v_weight_decay_form=form,
                                                    kl_direction=other), tlp, w, 2, now, before, delta, out))
    assert flipped != pytest.approx(got, rel=1e-3)  # the direction matters for these distributions


def test_the_original_stop_rule_takes_at_most_one_step_fewer_than_the_budget(tiny_model, tiny_kg, tmp_path):
    """v_stop "loss": the original computes the loss at each of its v_num_grad_steps iterations and steps after all
    but the last (or until the loss is below v_stop_loss)."""
    model, tokenizer = tiny_model
    fact = tiny_kg.graph.facts[2]
    target = next(e for e in tiny_kg.graph.entities if e not in (fact.o, fact.s))
    steps = {}
    for stop in ("target_prob", "loss"):
        rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path,
                    progress=False, hparams={"layer": 1, "v_num_grad_steps": 3, "v_stop": stop, "v_stop_loss": 0.0})
        steps[stop] = rome.apply_edit(fact.s, fact.r, target, measure=False)[1].v_steps
    assert steps["loss"] == 2 and steps["target_prob"] <= 3


def test_uniform_prompt_weights():
    from src.edit.prompts.rewrite import prompt_weights
    assert torch.equal(prompt_weights(4, None), torch.full((4,), 0.25, dtype=torch.float64))
    assert prompt_weights(3, 0.5).tolist() == [0.5, 0.25, 0.25]


@pytest.mark.parametrize("source", [None, "rome_original_gpt_small.yaml"])
def test_rome_original_sets_every_term_of_the_original_code(source):
    from src.edit.methods import METHODS
    from tests.conftest import REPO_ROOT

    hp = METHODS["rome-original"].load_hparams(source and REPO_ROOT / "configs" / source)
    assert (hp.v_weight_decay_form, hp.kl_direction, hp.v_stop, hp.bare_prompt_weight) == ("norm", "reverse", "loss", None)
    assert (hp.fact_token, hp.clamp_norm_factor, hp.v_weight_decay, hp.v_num_grad_steps) == ("subject_last", 4.0, 0.5, 20)
    assert (hp.key_mode, hp.v_objective, hp.layer_retries) == ("original", "lookup", 0)


@pytest.mark.parametrize("halvings", [1, 4, 12])
def test_the_refined_stop_is_the_first_point_of_the_step_meeting_the_rule_to_the_bisection_resolution(halvings):
    """A half-space rule a . v >= c, crossed by the step start -> end at t* = (c - a . start) / (a . (end - start)):
    the point returned meets it and lies within 2^-halvings of the step past t*."""
    from src.edit.rank_one.delta import shortest_meeting

    generator = torch.Generator().manual_seed(1)
    a, start = torch.randn(6, generator=generator, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    end = a * 2.0 / float(a @ a)  # a . end = 2
    c = 0.7
    crossing = (c - float(a @ start)) / float(a @ (end - start))
    tests = []

    def meets(vector):
        tests.append(vector)
        return float(a @ vector) >= c

    found = shortest_meeting(start, end, halvings, meets)
    t = float((found - start) @ (end - start)) / float((end - start) @ (end - start))
    assert len(tests) == halvings and meets(found)
    assert crossing <= t <= crossing + 2.0 ** -halvings
    assert torch.allclose(found, start + t * (end - start))  # on the segment


def test_a_refined_edit_meets_the_stop_rule_with_a_shorter_delta_after_as_many_steps(tiny_model, tiny_kg, tmp_path):
    model, tokenizer = tiny_model
    fact = tiny_kg.graph.facts[2]
    target = next(e for e in tiny_kg.graph.entities if e not in (fact.o, fact.s))
    results = {}
    for refine in (0, 8):
        rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path,
                    progress=False, hparams={"layer": 1, "v_lr": 2.0, "v_stop_refine": refine})
        results[refine] = rome.apply_edit(fact.s, fact.r, target, measure=False)[1]
    plain, refined = results[0], results[8]
    assert refined.v_steps == plain.v_steps >= 1
    assert refined.delta_norm < plain.delta_norm
    assert refined.target_prob_after < plain.target_prob_after  # less overshoot past the rule...
    assert refined.success and refined.new_prediction == target  # the bare prompt is one of the rule's prompts


def test_refining_needs_the_target_prob_rule():
    from src.utils.errors import InputError

    with pytest.raises(InputError, match="v_stop_refine 3 needs v_stop target_prob"):
        ROMEHyperParams(v_stop="loss", v_stop_refine=3)
    with pytest.raises(InputError, match="v_stop_refine must be >= 0, got -1"):
        ROMEHyperParams(v_stop_refine=-1)


def test_a_normalized_step_moves_the_vector_its_length_against_the_gradient():
    from src.edit.rank_one.delta import normalized_step

    vector = torch.tensor([1.0, -1.0, 2.0], requires_grad=True)
    vector.grad = torch.tensor([3.0, 4.0, 0.0])  # |grad| = 5
    normalized_step(vector, 2.0)
    assert torch.allclose(vector.detach(), torch.tensor([1.0 - 2.0 * 0.6, -1.0 - 2.0 * 0.8, 2.0]))
    vector.grad = torch.zeros(3)
    before = vector.detach().clone()
    normalized_step(vector, 2.0)
    assert torch.equal(vector.detach(), before)  # no gradient, no step


def test_normalized_gd_takes_steps_of_length_v_lr_and_makes_the_edit(tiny_model, tiny_kg, tmp_path):
    model, tokenizer = tiny_model
    fact = tiny_kg.graph.facts[2]
    target = next(e for e in tiny_kg.graph.entities if e not in (fact.o, fact.s))

    def edit(**hparams):
        rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path,
                    progress=False, hparams={"layer": 1, "v_optimizer": "normalized_gd", **hparams})
        return rome.apply_edit(fact.s, fact.r, target, measure=False)[1]

    one_step = edit(v_lr=0.75, v_num_grad_steps=1)  # from delta = 0, one step: |delta| = its length
    assert one_step.v_steps == 1 and one_step.delta_norm == pytest.approx(0.75, rel=1e-5)
    full = edit(v_lr=4.0)
    assert full.success and full.new_prediction == target and full.v_steps >= 2


def test_the_optimizer_and_its_step_are_checked():
    from src.utils.errors import InputError

    with pytest.raises(InputError, match="v_optimizer must be one of adam, normalized_gd, got 'sgd'"):
        ROMEHyperParams(v_optimizer="sgd")
    with pytest.raises(InputError, match="v_lr must be > 0, got 0"):
        ROMEHyperParams(v_lr=0)
