"""Kernel benchmarks: AOT-compiled temp memory at the Motif shapes and wall time at a small shape.

Memory figures come from `jit(...).lower(ShapeDtypeStruct...).compile().memory_analysis()` of
the loss (or attention output) *with its gradients*, so nothing is allocated. Times are medians
of repeated calls after a warm-up call, all implementations measured in one run.
On CPU the Pallas kernels run in interpret mode: their memory and time describe the emulation
(XLA loops over the kernel body), not the Triton kernel on a GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pallas_kernels import fused_cross_entropy as fce

CE_SHAPES = dict(d_model=4096, vocab=219_520, tokens=(8192, 65_536), dtype="bfloat16")
CE_SMALL = dict(tokens=2048, d_model=512, vocab=32_768, dtype="float32")


def median_seconds(fn: Callable, args: tuple, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def temp_bytes(fn: Callable, specs: tuple) -> int:
  return int(jax.jit(fn).lower(*specs).compile().memory_analysis().temp_size_in_bytes)


def _ce_grad_fn(impl: str) -> Callable:
  def loss(h_td, w_dv, labels_t):
    return fused_cross_entropy_sum(h_td, w_dv, labels_t, impl)
  return jax.grad(loss, argnums=(0, 1))


def fused_cross_entropy_sum(h_td, w_dv, labels_t, impl):
  return fce.fused_cross_entropy(h_td, w_dv, labels_t, impl=impl)[0].sum()


def cross_entropy_temp_bytes(impl: str, tokens: int, d_model: int, vocab: int, dtype: str) -> int:
  specs = (jax.ShapeDtypeStruct((tokens, d_model), dtype),
           jax.ShapeDtypeStruct((d_model, vocab), dtype),
           jax.ShapeDtypeStruct((tokens,), jnp.int32))
  return temp_bytes(_ce_grad_fn(impl), specs)


def cross_entropy_seconds(impl: str, tokens: int, d_model: int, vocab: int, dtype: str,
                          repeats: int) -> float:
  k_h, k_w, k_l = jax.random.split(jax.random.key(0), 3)
  args = (jax.random.normal(k_h, (tokens, d_model), dtype),
          (0.05 * jax.random.normal(k_w, (d_model, vocab))).astype(dtype),
          jax.random.randint(k_l, (tokens,), 0, vocab))
  return median_seconds(jax.jit(_ce_grad_fn(impl)), args, repeats)


def bench_cross_entropy(impls: tuple[str, ...], repeats: int, log: Callable = print) -> dict:
  results = {}
  for impl in impls:
    row = {}
    for tokens in CE_SHAPES["tokens"]:
      shape = dict(CE_SHAPES, tokens=tokens)
      row[f"temp_bytes_T{tokens}"] = cross_entropy_temp_bytes(impl, **shape)
      log(f"cross_entropy {impl:<10} T={tokens:<6} temp {row[f'temp_bytes_T{tokens}'] / 2**30:8.3f} GiB")
    row["seconds_small"] = cross_entropy_seconds(impl, **CE_SMALL,
                                                 repeats=1 if impl == "pallas" else repeats)
    log(f"cross_entropy {impl:<10} small shape {row['seconds_small']:.3f} s")
    results[impl] = row
  return results
