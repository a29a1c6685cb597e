import math

from src.edit.evaluation import draw_requests, mean_interval
from src.kg.graph import Fact, KnowledgeGraph


def test_mean_interval_known_values():
    result = mean_interval([1, 0, 1, 0, None])
    assert result.n == 4 and result.mean == 0.5
    assert math.isclose(result.ci95, 1.96 * math.sqrt(1 / 3) / 2)
    assert mean_interval([True]).ci95 == 0.0
    assert mean_interval([None]).n == 0


def test_requests_are_counterfactual_and_seeded():
    graph = KnowledgeGraph.from_facts([Fact(f"E_{i}", "R_0", f"E_{(i + 1) % 6}") for i in range(6)])
    requests = draw_requests(graph, 4, seed=1)
    assert requests == draw_requests(graph, 4, seed=1)
    assert len({(q.s, q.r) for q in requests}) == 4
    assert all(q.target not in (q.o, q.s) and graph.object_of(q.s, q.r) == q.o for q in requests)


def test_sequential_edits_with_initial_statistics(tiny_model, tiny_kg, tmp_path):
    from src.edit.evaluation import sequential_edits
    from src.edit.rome import ROME

    model, tokenizer = tiny_model
    rome = ROME(model, tokenizer, device="cpu", kg_corpus_path=tiny_kg.corpus_path, stats_dir=tmp_path,
                hparams={"layer": 1, "num_context_prefixes": 3, "num_eval_other_facts": 5}, progress=False,
                statistics_from="initial")
    requests = draw_requests(tiny_kg.graph, 4, seed=0)
    checkpoints = sequential_edits(rome, requests, tiny_kg.graph.facts, every=2, progress=False)
    assert [c.num_edits for c in checkpoints] == [0, 2, 4]
    assert checkpoints[0].retention == 1.0
    assert all(0.0 <= c.retention <= 1.0 and 0.0 <= c.past_efficacy <= 1.0 for c in checkpoints[1:])
    assert checkpoints[-1].past_efficacy >= 0.5
    # one statistics file for layer 1, although the weights changed after every edit
    assert len(list((tmp_path / "mom2").glob("*.pt"))) == 1
