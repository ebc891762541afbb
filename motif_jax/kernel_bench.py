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

from pallas_kernels import flash_attention as fa
from pallas_kernels import fused_cross_entropy as fce

CE_SHAPES = dict(d_model=4096, vocab=219_520, tokens=(8192, 65_536), dtype="bfloat16")
CE_SMALL = dict(tokens=2048, d_model=512, vocab=32_768, dtype="float32")


def _interpreted(impl: str) -> bool:
  """Pallas off a GPU runs the interpreter: its wall time says nothing about the kernel."""
  return impl == "pallas" and jax.default_backend() != "gpu"


def _seconds_text(seconds: float | None) -> str:
  return "not timed (Pallas interpreter)" if seconds is None else f"{seconds:.3f} s"


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
    return fce.fused_cross_entropy(h_td, w_dv, labels_t, impl=impl)[0].sum()
  return jax.grad(loss, argnums=(0, 1))


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
    row["seconds_small"] = (None if _interpreted(impl) else
                            cross_entropy_seconds(impl, **CE_SMALL, repeats=repeats))
    log(f"cross_entropy {impl:<10} small shape {_seconds_text(row['seconds_small'])}")
    results[impl] = row
  return results


# ---- Attention: Motif's GDA core, 40 query heads (8 groups x (4 signal + 1 noise)) on 16 KV
# heads, head dim 128, dual-V width 256: one signal call (g=4) and one noise call (g=1). -------

ATTN_SHAPES = dict(groups=8, ratio=4, head_dim=128, seq=(32_768, 65_536), dtype="bfloat16")
ATTN_SMALL = dict(groups=2, ratio=4, head_dim=32, seq=1024, dtype="float32")


def _gda_attention_grad_fn(impl: str) -> Callable:
  def loss(q_btgrh, k_btgph, v_btgph, segment_ids_bt):
    r = q_btgrh.shape[3] - 1
    v_btgv = jnp.concatenate([v_btgph[:, :, :, 0], v_btgph[:, :, :, 1]], axis=-1)
    outs = []
    for q, k in ((q_btgrh[:, :, :, :r], k_btgph[:, :, :, 0]),
                 (q_btgrh[:, :, :, r:], k_btgph[:, :, :, 1])):
      if impl == "reference":
        o, _ = fa.flash_attention_reference(q, k, v_btgv, segment_ids_bt)
      else:
        o, _ = fa.flash_attention(q, k, v_btgv, segment_ids_bt, impl=impl)
      outs.append(jnp.sum(o.astype(jnp.float32)))
    return outs[0] - 0.5 * outs[1]
  return jax.grad(loss, argnums=(0, 1, 2))


def _attention_specs(groups, ratio, head_dim, seq, dtype):
  sds = jax.ShapeDtypeStruct
  return (sds((1, seq, groups, ratio + 1, head_dim), dtype),
          sds((1, seq, groups, 2, head_dim), dtype), sds((1, seq, groups, 2, head_dim), dtype),
          sds((1, seq), jnp.int32))


def attention_temp_bytes(impl: str, seq: int, **shape) -> int:
  return temp_bytes(_gda_attention_grad_fn(impl), _attention_specs(seq=seq, **shape))


def attention_seconds(impl: str, repeats: int, **shape) -> float:
  specs = _attention_specs(**shape)
  keys = jax.random.split(jax.random.key(1), 3)
  args = [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, specs[:3])]
  seq = shape["seq"]
  args.append(jnp.repeat(jnp.arange(1, 5, dtype=jnp.int32), seq // 4)[None])  # 4 packed segments
  return median_seconds(jax.jit(_gda_attention_grad_fn(impl)), tuple(args), repeats)


def bench_attention(impls: tuple[str, ...], repeats: int, log: Callable = print) -> dict:
  results = {}
  for impl in impls:
    row = {}
    for seq in ATTN_SHAPES["seq"]:
      shape = {k: v for k, v in ATTN_SHAPES.items() if k != "seq"}
      row[f"temp_bytes_S{seq}"] = attention_temp_bytes(impl, seq, **shape)
      log(f"attention     {impl:<10} S={seq:<6} temp {row[f'temp_bytes_S{seq}'] / 2**30:8.3f} GiB")
    row["seconds_small"] = (None if _interpreted(impl) else
                            attention_seconds(impl, repeats, **ATTN_SMALL))
    log(f"attention     {impl:<10} small shape {_seconds_text(row['seconds_small'])}")
    results[impl] = row
  return results
