"""Every benchmark script imports what it names (a module moved in the library breaks a benchmark here, not on the
day it is run)."""

import runpy

import pytest

from tests.conftest import REPO_ROOT

BENCHMARKS = sorted((REPO_ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_benchmark_imports(path):
    namespace = runpy.run_path(str(path), run_name="benchmark_import_check")  # top level only: main() is not run
    assert callable(namespace.get("main")), f"{path.name} has no main()"


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_every_benchmark_reports_its_peak_memory(path):
    assert "peak_rss_mib()" in path.read_text(), f"{path.name} does not print its peak RSS (src.utils.resources)"
