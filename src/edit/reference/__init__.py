"""Plain reference implementations, kept only so that tests and benchmarks can check the fast code against them
(slow: one forward per restored state). Not a code path for real work."""
