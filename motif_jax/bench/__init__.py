"""Benchmark and GPU-validation code (measuring, not library code; nothing in motif_jax imports it)."""
