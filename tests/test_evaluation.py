"""Requests, and the intervals an evaluation reports, on hand-made cases with known answers."""

import math

import numpy as np
import pytest

from src.edit.evaluation import estimates
from src.edit.evaluation.requests import draw_requests
from src.kg.graph import Fact, KnowledgeGraph
from src.utils.intervals import bootstrap_interval, wilson_interval


@pytest.mark.parametrize("successes, n, low, high", [
    (5, 10, 0.2366, 0.7634),   # the textbook values of Wilson's 95% interval
    (10, 10, 0.7225, 1.0),     # n / (n + z^2) at the top: a width the normal interval would collapse to 0
    (0, 10, 0.0, 0.2775),
    (1, 1, 0.2065, 1.0),
])
def test_wilson_interval_known_values(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_by_its_closed_form_at_the_top():
    z = 1.96
    for n in (3, 20, 200):
        assert wilson_interval(n, n)[0] == pytest.approx(n / (n + z * z))


def test_bootstrap_interval_matches_the_normal_interval_on_a_large_sample():
    values = np.array([0.0] * 500 + [1.0] * 500)
    low, high = bootstrap_interval(values, seed=3)
    half = 1.96 * math.sqrt(0.25 / 1000)  # 0.031
    assert low == pytest.approx(0.5 - half, abs=0.006) and high == pytest.approx(0.5 + half, abs=0.006)
    assert bootstrap_interval(np.full(40, 0.7), seed=0) == pytest.approx((0.7, 0.7))  # no spread, no width
    assert bootstrap_interval(values, seed=3) == (low, high)  # seeded


def test_estimates_leave_unmeasured_values_out_and_name_their_interval():
    share = estimates.proportion([True, False, None, True, True])
    assert (share.mean, share.n, share.interval) == (0.75, 4, "wilson")
    assert (share.low, share.high) == pytest.approx(wilson_interval(3, 4))
    mean = estimates.mean([0.5, None, 1.0])
    assert (mean.mean, mean.n, mean.interval) == (0.75, 2, "bootstrap") and 0.5 <= mean.low <= mean.high <= 1.0
    assert estimates.mean([None]).n == 0 and estimates.proportion([]).interval == "none"
    assert estimates.Estimate.from_dict(share.to_dict()) == share


def test_a_paired_comparison_finds_a_planted_difference_and_none_between_a_method_and_itself():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0.0, 1.0, 200)  # what the requests share: large against the planted difference
    a = difficulty + 0.1 + rng.normal(0.0, 0.05, 200)
    b = difficulty
    planted = estimates.paired_difference(a.tolist(), b.tolist())
    assert planted.excludes(0.0) and planted.low < 0.1 < planted.high
    unpaired = 1.96 * math.sqrt(a.var() / 200 + b.var() / 200)  # ~0.2: an unpaired interval would not see it
    assert planted.high - planted.low < unpaired / 5
    itself = estimates.paired_difference(a.tolist(), a.tolist())
    assert (itself.mean, itself.low, itself.high) == (0.0, 0.0, 0.0) and not itself.excludes(0.0)
    assert estimates.paired_difference([1.0, None], [None, 2.0]).n == 0  # no request measured in both


def test_requests_are_counterfactual_and_seeded():
    graph = KnowledgeGraph.from_facts([Fact(f"E_{i}", "R_0", f"E_{(i + 1) % 6}") for i in range(6)])
    requests = draw_requests(graph, 4, seed=1)
    assert requests == draw_requests(graph, 4, seed=1)
    assert len({(q.s, q.r) for q in requests}) == 4
    assert all(q.target not in (q.o, q.s) and graph.object_of(q.s, q.r) == q.o for q in requests)


def test_intervals_at_the_ends_contain_the_share_exactly_and_plot(tmp_path):
    """All 500 of 500 (or none): the interval ends at exactly 1 (0), so a bar's error never comes out negative."""
    from src.viz.evaluation import BAR_METRICS, plot_method_metrics

    assert wilson_interval(500, 500)[1] == 1.0 and wilson_interval(0, 500)[0] == 0.0
    metrics = {name: estimates.proportion([True] * 500).to_dict() for name in BAR_METRICS}
    paraphrase = estimates.mean([0.3] * 7).to_dict()
    metrics["paraphrase"] = {**paraphrase, "low": paraphrase["mean"] + 1e-12}  # an end a rounding error past the mean
    plot_method_metrics({"m": {"metrics": metrics}}, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 0
