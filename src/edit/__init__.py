"""The science: causal tracing (CausalTracer) and rank-one model editing (ROME)."""
