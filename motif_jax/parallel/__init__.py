"""Parallelism beyond GSPMD annotations: context (sequence) parallel attention."""
