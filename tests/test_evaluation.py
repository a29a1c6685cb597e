import math

from src.edit.evaluation.requests import draw_requests, mean_interval
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
