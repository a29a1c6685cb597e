"""benchmarks/bench_floors.py counts the matrix products' FLOPs of every call and every training step it profiles,
against FLOPs written out by hand."""

import runpy

import torch

from tests.conftest import REPO_ROOT

FLOORS = runpy.run_path(str(REPO_ROOT / "benchmarks" / "bench_floors.py"), run_name="bench_floors_under_test")


def test_measure_counts_every_calls_products():
    a, b = torch.randn(64, 32), torch.randn(32, 48)
    floor = FLOORS["measure"]("matmul", lambda _: a @ b, [None, None, None], target=1.0)
    assert floor.calls == 3 and floor.products > 0 and floor.wall > 0
    assert abs(floor.product_rate * floor.products - 2 * 64 * 32 * 48) < 1e-3 * 2 * 64 * 32 * 48  # per call


def test_measure_per_optimizer_step_keeps_every_steps_products():
    """Three SGD steps in one call, the profiler's events tallied and dropped at each: forward x @ w (2 m k n) and
    the backward's gradient for w (x^T @ g: 2 m k n again; x needs none), per step."""
    weight = torch.nn.Parameter(torch.randn(32, 48))
    x = torch.randn(64, 32)
    optimizer = torch.optim.SGD([weight], lr=0.1)

    def train(_):
        for _ in range(3):
            optimizer.zero_grad()
            (x @ weight).square().sum().backward()
            optimizer.step()

    floor = FLOORS["measure"]("steps", train, [None], target=1.0, per_optimizer_step=True)
    expected = 3 * 2 * (2 * 64 * 32 * 48)
    assert abs(floor.product_rate * floor.products - expected) < 1e-3 * expected
