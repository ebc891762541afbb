"""motif-jax: the Motif-2-12.7B-Reasoning post-training recipe in JAX."""
