"""Parallelism beyond GSPMD annotations: context (sequence) parallel attention (`context`) and
the per-shard, vocab-parallel fused cross-entropy (`loss`)."""
