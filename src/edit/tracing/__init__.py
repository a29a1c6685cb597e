"""Causal tracing's engine, result types and averages; the public face is `src.edit.causal_tracing`."""
