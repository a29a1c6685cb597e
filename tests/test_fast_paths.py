"""The speed paths compute what the plain paths compute: shared prompt stems, fused GELU, frozen parameters, MEMIT's
last-block readout, ROME's forward resumed from the edited block (prompts packed or padded), the kept statistics, a
Trace that stops before its module."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers.activations import NewGELUActivation

from src.edit.model.block_call import cache_argument
from src.edit.model.speedups import SpeedPaths, frozen_parameters, fused_activations, rows_per_forward, widest_hidden
from src.edit.model.hooks import Trace
from src.edit.methods.memit import LastTokenReadout
from src.edit.model.layout import ModelLayout
from src.edit.prompts.batch import PromptBatch
from src.edit.evaluation.prompt_probe import PromptProbe
from src.edit.model.resumed_forward import ResumedForward
from src.edit.rome import ROME
from src.lm.families import FAMILIES
from tests.tiny_models import tiny_family_model, tiny_gpt2, tiny_tokenizer

PAIRS = [f"{s} {r}" for s, r in itertools.product("abcdxyz", "rq")]  # 14 prompts over 7 stems


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("bos", [False, True])
def test_shared_stems_give_the_whole_prompts_predictions(family, bos):
    tokenizer = tiny_tokenizer(bos=bos)
    model = tiny_family_model(tokenizer, family)
    prompts = PAIRS + ["a r b q", "c r d q", "c r d r", "x"]  # a second length and a stem-less prompt
    shared, whole = PromptProbe(tokenizer, prompts), PromptProbe(tokenizer, prompts, share_stems=False)
    assert cache_argument(model) is not None
    assert [g.stems is not None for g in shared.groups] == [True, False, False]  # 7 stems for 14: shared
    assert not any(g.stems is not None for g in whole.groups)
    assert torch.equal(shared.top1(model), whole.top1(model))
    torch.testing.assert_close(shared.probabilities(model), whole.probabilities(model), atol=2e-6, rtol=1e-5)


def test_shared_stems_are_chunked_like_whole_prompts():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer)
    whole = PromptProbe(tokenizer, PAIRS, share_stems=False, speed=SpeedPaths.plain()).probabilities(model)
    small = SpeedPaths(activation_budget=9 * widest_hidden(model))  # 4 two-token prompts per forward: the 7 stems'
    assert small.rows(model, 2) == 4  # first prompts in two forwards, the 7 others in two more
    torch.testing.assert_close(PromptProbe(tokenizer, PAIRS, speed=small).probabilities(model), whole, atol=2e-6, rtol=1e-5)


def test_fused_activations_match_gelu_new_and_are_put_back():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer, n_layer=3)
    ids = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with fused_activations(model) as swapped:
            assert swapped == 3
            assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
            fused = model(input_ids=ids).logits
    assert sum(isinstance(m, NewGELUActivation) for m in model.modules()) == 3
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-5)  # logits of size ~100: float32 rounding only


def test_frozen_parameters_pass_gradients_through_without_weight_gradients():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer, n_layer=2)
    model.transformer.wte.weight.requires_grad_(False)  # a flag that is already off stays off
    delta = torch.zeros(model.config.n_embd, requires_grad=True)
    with frozen_parameters(model):
        hidden = model.transformer(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state
        (hidden + delta).pow(2).sum().backward()
    assert delta.grad is not None and float(delta.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.parameters())
    assert not model.transformer.wte.weight.requires_grad
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "transformer.wte.weight")


def test_rows_per_forward_bounds_the_widest_activation():
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer, n_embd=32, n_inner=256)
    assert widest_hidden(model) == 256
    assert rows_per_forward(model, 4, budget=256 * 4 * 10) == 10
    assert rows_per_forward(model, 4, budget=1) == 1
    assert widest_hidden(tiny_gpt2(tokenizer, n_embd=32)) == 128  # n_inner None: 4 x n_embd


def test_rome_leaves_no_weight_gradients_and_the_same_flags(tiny_model, tiny_kg, tmp_path):
    model, tokenizer = tiny_model
    fact = tiny_kg.graph.facts[0]
    target = next(e for e in tiny_kg.graph.entities if e not in (fact.o, fact.s))
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path,
                hparams={"layer": 1}, progress=False)
    edited, result = rome.apply_edit(fact.s, fact.r, target)
    assert result.status == "edited" and result.v_steps > 0
    assert all(p.grad is None for p in edited.parameters())
    assert all(p.requires_grad for p in edited.parameters())
    assert any(isinstance(m, NewGELUActivation) for m in edited.modules())  # the copy keeps the model's own modules


@pytest.mark.parametrize("family", list(FAMILIES))
def test_last_block_readout_equals_the_whole_forward(family):
    """MEMIT's z step: adding a vector at the last block's output, norm + unembedding alone give the logits that a
    whole forward with the vector added by a hook gives (right-padded prompts of different lengths)."""
    tokenizer = tiny_tokenizer()
    model = tiny_family_model(tokenizer, family)
    layout = ModelLayout.of(model)
    batch = PromptBatch.for_tokenizer([[1, 2, 3], [4, 5], [6, 7, 8, 9]], tokenizer, torch.device("cpu"))
    added = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    readouts = {layer: LastTokenReadout(model, layout, layer, batch) for layer in (layout.num_layers - 2,
                                                                                   layout.num_layers - 1)}
    assert readouts[layout.num_layers - 1].direct and not readouts[layout.num_layers - 2].direct
    for layer, readout in readouts.items():
        def add(output, layer=layer):
            output = output.clone()
            output[torch.arange(3), batch.last] += added
            return output

        with torch.no_grad(), Trace(layout.block(layer), retain_output=False, edit_output=add):
            expected = batch.last_logits(model)
        with torch.no_grad():
            torch.testing.assert_close(readout(added), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(readout(torch.zeros_like(added)), readout.initial_logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(expected, readout.initial_logits, atol=1e-3)  # the added vector matters


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pack", [True, False])
def test_resumed_forward_equals_the_whole_forward_with_a_hook(family, side, pack):
    """ROME's delta step: logits (and their gradient in the added tensor) from block l on equal a whole forward whose
    block l output gets the tensor by a hook, at the first, a middle and the last block, with padded prompts, run
    packed into 3 rows or padded in 5."""
    tokenizer = tiny_tokenizer()
    model = tiny_family_model(tokenizer, family)
    layout = ModelLayout.of(model)
    batch = PromptBatch.of([[1, 2, 3], [4, 5], [6, 7, 8, 9], [2, 3], [5]], pad_id=0, device=torch.device("cpu"),
                           side=side)
    read_rows = torch.tensor([0, 0, 1, 2, 3, 4])
    read_columns = batch.offset[read_rows] + torch.tensor([1, 2, 1, 3, 0, 0])  # real tokens of each row
    generator = torch.Generator().manual_seed(0)
    for layer in (0, layout.num_layers // 2, layout.num_layers - 1):
        resumed = ResumedForward(model, layer, batch, read_rows, read_columns, pack=pack)
        assert resumed.packed == (pack and layer < layout.num_layers - 1)  # the last block has no blocks above
        added = torch.randn(resumed.start.shape, generator=generator).requires_grad_(True)
        with Trace(layout.block(layer), retain_output=False, edit_output=lambda output: output + added):
            expected = batch.forward(model).logits[read_rows, read_columns]
        got = resumed(added)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        plain = ResumedForward(model, layer, batch, read_rows, read_columns, resume=False)
        torch.testing.assert_close(plain(added), expected.float(), atol=1e-6, rtol=1e-6)
        weights = torch.randn(got.shape, generator=generator)
        (expected_grad,), (got_grad,) = (torch.autograd.grad((x * weights).sum(), added) for x in (expected, got))
        torch.testing.assert_close(got_grad, expected_grad, atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(resumed(torch.zeros_like(added)), resumed.initial_logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(expected, resumed.initial_logits, atol=1e-3)  # the added tensor matters


def test_rome_reads_and_factorises_the_initial_statistics_once_per_layer(tiny_model, tiny_kg, tmp_path, monkeypatch):
    """Sequential in-place edits on one layer: C is read once, factorised once, and u = C^-1 k* as a fresh solve."""
    import src.edit.rank_one.covariance as rome_module

    model, tokenizer = tiny_model
    reads, factorisations, solves = [], [], []
    original_read, original_solver = rome_module.load_or_compute_second_moment, rome_module.PSDSolver

    class CountingSolver(original_solver):
        def __init__(self, matrix):
            factorisations.append(1)
            super().__init__(matrix)

        def solve(self, rhs):
            solution = super().solve(rhs)
            solves.append((self.matrix, rhs, solution))
            return solution

    monkeypatch.setattr(rome_module, "load_or_compute_second_moment",
                        lambda *a, **k: reads.append(1) or original_read(*a, **k))
    monkeypatch.setattr(rome_module, "PSDSolver", CountingSolver)
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path,
                hparams={"layer": 1}, progress=False, statistics_from="initial")
    facts = list(tiny_kg.graph.facts)[:3]
    for fact in facts:
        target = next(e for e in tiny_kg.graph.entities if e not in (fact.o, fact.s))
        _, result = rome.apply_edit(fact.s, fact.r, target, copy_model=False)
        assert result.status == "edited"
    assert len(reads) == 1 and len(factorisations) == 1 and len(solves) == 3
    for matrix, rhs, solution in solves:  # C is ill-conditioned here (few keys): the solve is checked by its residual,
        # which does not depend on how a solver rounds, and against LU's solution within what the condition allows
        residual = (matrix @ solution - rhs).norm() / rhs.norm()
        assert residual < 1e-10, residual
        torch.testing.assert_close(solution, torch.linalg.solve(matrix, rhs), atol=1e-6, rtol=1e-5)


def test_edits_from_the_same_weights_read_and_factorise_c_once_and_again_when_the_weights_change(tiny_model, tiny_kg,
                                                                                                 tmp_path, monkeypatch):
    """reuse_statistics: independent edits (copy_model=True) at one layer read C once and factorise it once, with
    updates bit-identical to reading and factorising it for every edit; an in-place edit changes the weights, and
    the next edit reads C again."""
    import src.edit.rank_one.covariance as rome_module
    import src.edit.rank_one.linalg as linalg

    model, tokenizer = tiny_model
    reads, factorisations = [], []
    original_read, original_solver = rome_module.load_or_compute_second_moment, rome_module.PSDSolver

    class CountingSolver(original_solver):
        def __init__(self, matrix):
            factorisations.append(1)
            super().__init__(matrix)

    monkeypatch.setattr(rome_module, "load_or_compute_second_moment",
                        lambda *a, **k: reads.append(1) or original_read(*a, **k))
    monkeypatch.setattr(rome_module, "PSDSolver", CountingSolver)
    monkeypatch.setattr(linalg, "PSDSolver", CountingSolver)  # what solve_psd factorises with
    facts = list(tiny_kg.graph.facts)[:3]
    targets = [next(e for e in tiny_kg.graph.entities if e not in (f.o, f.s)) for f in facts]
    updates = {}
    for reuse in (True, False):
        rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path,
                    hparams={"layer": 1}, progress=False, speed=SpeedPaths(reuse_statistics=reuse))
        reads.clear(), factorisations.clear()
        updates[reuse] = [rome.apply_edit(f.s, f.r, t, copy_model=True)[1]._update for f, t in zip(facts, targets)]
        assert (len(reads), len(factorisations)) == ((1, 1) if reuse else (3, 3))
    for kept, fresh in zip(updates[True], updates[False]):
        assert torch.equal(kept.u, fresh.u) and torch.equal(kept.delta, fresh.delta)
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path,
                hparams={"layer": 1}, progress=False)
    reads.clear()
    rome.apply_edit(facts[0].s, facts[0].r, targets[0], copy_model=False)  # the weights change in place
    rome.apply_edit(facts[1].s, facts[1].r, targets[1], copy_model=True)
    assert len(reads) == 2


def test_shared_stems_in_bfloat16_predict_the_kg_as_whole_prompts_do(tiny_model, tiny_kg):
    """The cache path in half precision (the CUDA dtypes; bfloat16 runs on the CPU): same top-1 on every KG fact."""
    model, tokenizer = tiny_model
    model = model.to(torch.bfloat16)
    prompts = [f.prompt() for f in tiny_kg.graph.facts]
    shared = PromptProbe(tokenizer, prompts)
    assert any(g.stems is not None for g in shared.groups)
    top1 = shared.top1(model)
    assert torch.equal(top1, PromptProbe(tokenizer, prompts, share_stems=False).top1(model))
    objects = torch.tensor([tokenizer.convert_tokens_to_ids(f.o) for f in tiny_kg.graph.facts])
    assert float((top1 == objects).float().mean()) > 0.9  # the trained model still knows its facts in bfloat16


def test_rome_with_every_speed_path_off_makes_the_same_edit(tiny_model, tiny_kg, tmp_path):
    """SpeedPaths.plain() (unfused GELU, weight gradients, unsized forwards, the whole model per delta step, every key
    in the statistics, each computed into its own cache) against the defaults: the same steps and the same update up
    to float32 rounding."""
    model, tokenizer = tiny_model
    fact = tiny_kg.graph.facts[3]
    target = next(e for e in tiny_kg.graph.entities if e not in (fact.o, fact.s))
    results = {}
    for name, speed in (("fast", SpeedPaths()), ("plain", SpeedPaths.plain())):
        rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path / name,
                    hparams={"layer": 1}, progress=False, speed=speed)
        results[name] = rome.apply_edit(fact.s, fact.r, target, measure=False)[1]
    fast, plain = results["fast"], results["plain"]
    assert fast.status == plain.status == "edited" and fast.v_steps == plain.v_steps
    difference = (fast._update.matrix() - plain._update.matrix()).abs().max() / plain._update.matrix().abs().max()
    assert float(difference) < 1e-4


def test_key_plan_counts_each_distinct_prefix_once_with_its_multiplicity():
    from src.edit.rank_one.key_statistics import KeyPlan

    lines = [[1, 2, 3], [1, 2], [1, 4], [1, 2, 3], [5]]
    plan = KeyPlan.shared(lines, last_token_only=False)
    # prefixes: (1) x4, (1, 2) x3, (1, 2, 3) x2, (1, 4) x1, (5) x1; [1, 2] is a prefix of [1, 2, 3]: not run
    assert plan.lines == ((1, 2, 3), (1, 4), (5,))
    assert plan.weights == ((4, 3, 2), (0, 1), (1,))
    assert plan.num_keys == 11 == sum(len(x) for x in lines)
    last = KeyPlan.shared(lines, last_token_only=True)  # one key per line, at its last token
    assert last.weights == ((0, 1, 2), (0, 1), (1,)) and last.num_keys == 5
    assert KeyPlan.plain(lines, last_token_only=False).weights[1] == (1, 1)


@pytest.mark.parametrize("source", ["corpus", "fact_prompts"])
def test_shared_prefix_statistics_equal_every_key_of_every_line(tiny_model, tiny_kg, source):
    from src.edit.prompts.kg_context import KGContext
    from src.edit.rank_one.key_statistics import compute_second_moment
    from src.kg.corpus import read_corpus

    model, tokenizer = tiny_model
    lines = (read_corpus(tiny_kg.corpus_path) if source == "corpus"
             else [f.prompt() for f in KGContext.from_corpus(tiny_kg.corpus_path).facts])
    last = source == "fact_prompts"
    keys = []  # the reference: one plain forward per line, its keys read by hand
    for line in lines:
        with torch.no_grad(), Trace(ModelLayout.of(model).mlp_out(2), retain_input=True) as trace:
            model(input_ids=torch.tensor([tokenizer(line, add_special_tokens=False)["input_ids"]]))
        keys.append(trace.input[0, -1:] if last else trace.input[0])
    keys = torch.cat(keys).double()
    expected = keys.T @ keys / len(keys)
    moments = []
    for speed in (SpeedPaths(), SpeedPaths.plain()):
        moment, count = compute_second_moment(model, tokenizer, lines, 2, batch_size=7, progress=False,
                                              last_token_only=last, speed=speed)
        assert count == len(keys)
        torch.testing.assert_close(moment, expected, rtol=1e-5, atol=1e-7)  # float32 keys, other batch shapes
        moments.append(moment)
    torch.testing.assert_close(moments[0], moments[1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("bos", [False, True])
def test_statistics_lines_are_tokenized_as_prompts_are(bos):
    from src.edit.rank_one.key_statistics import encode_lines
    from src.lm.token_ids import encode_prompt

    tokenizer = tiny_tokenizer(bos=bos)
    lines = ["a r b", "c q d ; x r y", "z"]
    assert encode_lines(tokenizer, lines) == [encode_prompt(tokenizer, line) for line in lines]


@pytest.mark.parametrize("block", [1, 4, 10, 512, None])
def test_weighted_gram_blocks_equal_a_sum_of_outer_products(block):
    """C's symmetric product (blocks on and above the diagonal, mirrored once at the end; widths that divide d and
    that do not), over two batches, against sum_i w_i k_i k_i^T written out row by row; every block below the
    diagonal holds the bits of its mirror above it."""
    from src.edit.rank_one.key_statistics import WeightedGram

    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(7, 10, generator=generator, dtype=torch.float64)
    weights = torch.tensor([1.0, 3.0, 2.0, 1.0, 5.0, 1.0, 4.0], dtype=torch.float64)
    expected = torch.zeros(10, 10, dtype=torch.float64)
    for k, w in zip(keys, weights):
        expected += w * torch.outer(k, k)
    gram = WeightedGram(10, block)
    gram.add(keys[:3], weights[:3])
    gram.add(keys[3:], weights[3:])
    total = gram.result()
    torch.testing.assert_close(total, expected, rtol=1e-13, atol=1e-13)
    if block is not None:
        for i in range(0, 10, block):
            assert torch.equal(total[i + block:, i:i + block], total[i:i + block, i + block:].T)


class _Counted(torch.nn.Linear):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


@pytest.mark.parametrize("retain_output", [False, True])
def test_a_stopping_trace_runs_its_module_only_when_its_output_is_kept(retain_output):
    torch.manual_seed(0)
    first, traced, last = torch.nn.Linear(3, 4), _Counted(4, 5), _Counted(5, 2)
    model, x = torch.nn.Sequential(first, traced, last), torch.randn(6, 3)
    _Counted.calls = 0
    with Trace(traced, retain_input=True, retain_output=retain_output, stop=True) as trace:
        model(x)
    with torch.no_grad():
        expected_input = x @ first.weight.T + first.bias  # by hand
    assert torch.allclose(trace.input, expected_input, atol=1e-6)
    assert _Counted.calls == (1 if retain_output else 0)  # the last module never runs
    if retain_output:
        assert torch.allclose(trace.output, expected_input @ traced.weight.T + traced.bias, atol=1e-6)
    else:
        assert trace.output is None
