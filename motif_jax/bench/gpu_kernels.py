"""GPU check, part 2: kernel speed and memory at the Motif shapes.

Fused cross-entropy, loss + dh + dW at D = 4096, V = 219,520, bf16, T = 8K and 32K: the fused
kernels (impl pallas and xla) against the naive full-logits loss (impl "reference": [T, V]
float32 logits, autodiff). Useful FLOPs 3 x 2TDV (the fused kernels recompute the logits twice
more: 5 matmul-equivalents). Memory: compiled temp bytes of that program.

Flash attention, forward + backward of Motif's GDA core (8 groups x (4 signal + 1 noise) query
heads on 16 KV heads, head dim 128, dual-V 256; kernel_bench.ATTN_SHAPES), causal, one
sequence, S = 8K and 32K: pallas, xla (blockwise) and cuDNN (jax.nn.dot_product_attention, one
call per 128-wide value slab: its value width must equal the QK width). FLOPs: causal-halved
2 S^2 (4h + 3v) per query head (forward QK and PV, backward five products); cuDNN computes QK
twice for the two slabs, which the count does not credit. Then pallas and the model's cuDNN
wrapper with 4 packed segments at 8K (the wrapper passes segments as a dense [S, S] mask).

First the two ceilings METHOD.md asks to measure once: a bf16 matmul (8192^3) and a 4 GiB
copy (bytes read + written). A case whose compiled program needs more than the device holds is
recorded with its memory and not run; `peak_bytes_in_use` is per case where the case raised it
(gpu_measure.peak_figures).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from motif_jax import kernel_bench
from motif_jax.bench import gpu_measure as gm
from motif_jax.bench.gpu_harness import PartContext, Skipped
from motif_jax.model import attention as model_attention
from pallas_kernels import flash_attention as fa
from pallas_kernels import fused_cross_entropy as fce

environment = gm.environment


def _run(fn, args: tuple, repeats: int) -> dict:
  """Compile once (memory from that program), skip if it cannot fit, else time it."""
  peak_before = gm.memory_stats().get("peak_bytes_in_use")
  compiled = jax.jit(fn).lower(*args).compile()
  stats = compiled.memory_analysis()
  figures = {"temp_bytes": int(stats.temp_size_in_bytes),
             "argument_bytes": int(stats.argument_size_in_bytes),
             "output_bytes": int(stats.output_size_in_bytes)}
  limit = gm.memory_stats().get("bytes_limit")
  needed = figures["temp_bytes"] + figures["output_bytes"]
  if limit is not None and needed + gm.memory_stats().get("bytes_in_use", 0) > limit:
    figures["not_run"] = (f"needs {needed / 2**30:.1f} GiB beyond its inputs; "
                          f"{limit / 2**30:.1f} GiB on the device")
    return figures
  figures.update(gm.time_stats(compiled, args, repeats=repeats))
  figures.update(gm.peak_figures(peak_before))
  return figures


def _rates(figures: dict, flops: float) -> dict:
  """TFLOP/s and the fraction of the device's dense bf16 peak (where it is known)."""
  if "median_s" not in figures:
    return figures
  figures["tflops"] = flops / figures["median_s"] / 1e12
  peak = gm.peak_bf16_flops(jax.devices()[0].device_kind)
  if peak is not None:
    figures["peak_fraction"] = flops / figures["median_s"] / peak
  return figures


# ---- Ceilings (METHOD.md: measure the two once) ------------------------------------------------

def _matmul(a, b):
  return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype)


def bench_matmul(n: int, *, repeats: int) -> dict:
  """bf16 [n, n] @ [n, n] with float32 accumulation, random operands."""
  k = jax.random.split(jax.random.key(n), 2)
  args = (gm.random_normal(k[0], (n, n), "bfloat16"), gm.random_normal(k[1], (n, n), "bfloat16"))
  figures = _run(_matmul, args, repeats)
  return _rates(figures | {"kind": "ceiling", "what": "bf16 matmul", "n": n}, 2.0 * n ** 3)


def bench_copy(n_bytes: int, *, repeats: int) -> dict:
  """One read and one write of a random float32 array (-x): device memory bandwidth."""
  x = jax.random.normal(jax.random.key(1), (n_bytes // 4,), jnp.float32)
  figures = _run(jnp.negative, (x,), repeats)
  figures.update(kind="ceiling", what="copy (read + write)", bytes=2 * x.size * 4)
  if "median_s" in figures:
    figures["gb_per_s"] = 2 * x.size * 4 / figures["median_s"] / 1e9
  return figures


# ---- Cross-entropy -----------------------------------------------------------------------------

def ce_loss_and_grads(impl: str, block_sizes: fce.BlockSizes = fce.BlockSizes()):
  def loss(h_td, w_dv, labels_t):
    return fce.fused_cross_entropy(h_td, w_dv, labels_t, impl=impl,
                                   block_sizes=block_sizes)[0].sum()
  return jax.value_and_grad(loss, argnums=(0, 1))


def bench_cross_entropy(impl: str, *, tokens: int, d_model: int, vocab: int, dtype: str,
                        repeats: int, block_sizes: fce.BlockSizes = fce.BlockSizes()) -> dict:
  k = jax.random.split(jax.random.key(tokens + vocab), 3)
  args = (gm.random_normal(k[0], (tokens, d_model), dtype),
          gm.random_normal(k[1], (d_model, vocab), dtype, scale=d_model ** -0.5),
          jax.random.randint(k[2], (tokens,), 0, vocab))
  figures = _run(ce_loss_and_grads(impl, block_sizes), args, repeats)
  flops = 3 * 2 * tokens * d_model * vocab
  figures.update(kind="cross_entropy", impl=impl, tokens=tokens, flops=flops)
  return _rates(figures, flops)


# ---- Attention ---------------------------------------------------------------------------------

def gda_loss_and_grads(impl: str, segments: bool, block_sizes: fa.BlockSizes = fa.BlockSizes()):
  """sum(signal o) - 0.5 sum(noise o) and its (dq, dk, dv), for impl pallas | xla | cudnn."""
  def attend(q, k, v, seg):
    if impl == "cudnn" and segments:
      return model_attention.attend_dot_product(q, k, v, seg, implementation="cudnn")
    if impl == "cudnn":
      b, t, kh, g, h = q.shape
      slabs = [jax.nn.dot_product_attention(q.reshape(b, t, kh * g, h), k, v[..., i:i + h],
                                            is_causal=True, implementation="cudnn")
               for i in range(0, v.shape[-1], h)]
      return jnp.concatenate(slabs, -1).reshape(b, t, kh, g, v.shape[-1])
    return fa.flash_attention(q, k, v, seg if segments else None, impl=impl,
                              block_sizes=block_sizes)[0]

  def loss(q_btgrh, k_btg2h, v_btgv, seg_bt):
    r = q_btgrh.shape[3] - 1
    signal = attend(q_btgrh[:, :, :, :r], k_btg2h[:, :, :, 0], v_btgv, seg_bt)
    noise = attend(q_btgrh[:, :, :, r:], k_btg2h[:, :, :, 1], v_btgv, seg_bt)
    return jnp.sum(signal.astype(jnp.float32)) - 0.5 * jnp.sum(noise.astype(jnp.float32))
  return jax.value_and_grad(loss, argnums=(0, 1, 2))


def attention_flops(seq: int, groups: int, ratio: int, head_dim: int) -> float:
  heads = groups * (ratio + 1)
  return 0.5 * 2 * seq * seq * (4 * head_dim + 3 * 2 * head_dim) * heads


def bench_attention(impl: str, *, seq: int, groups: int, ratio: int, head_dim: int, dtype: str,
                    repeats: int, segments: bool = False,
                    block_sizes: fa.BlockSizes = fa.BlockSizes()) -> dict:
  if impl == "cudnn" and not gm.on_gpu():
    raise Skipped("cuDNN needs a CUDA GPU")
  k = jax.random.split(jax.random.key(seq), 3)
  args = (gm.random_normal(k[0], (1, seq, groups, ratio + 1, head_dim), dtype),
          gm.random_normal(k[1], (1, seq, groups, 2, head_dim), dtype),
          gm.random_normal(k[2], (1, seq, groups, 2 * head_dim), dtype),
          jnp.repeat(jnp.arange(4, dtype=jnp.int32), seq // 4)[None])
  figures = _run(gda_loss_and_grads(impl, segments, block_sizes), args, repeats)
  flops = attention_flops(seq, groups, ratio, head_dim)
  figures.update(kind="attention", impl=impl, seq=seq, segments=4 if segments else 1,
                 flops=flops)
  return _rates(figures, flops)


# ---- The part ----------------------------------------------------------------------------------

def _settings(dry_run: bool) -> dict:
  if dry_run:
    return {"ce": dict(d_model=32, vocab=512, dtype="bfloat16"), "tokens": (64,),
            "ce_blocks": fce.BlockSizes(chunk_t=32, chunk_v=128, block_t=16, block_v=32,
                                        block_d=16),
            "attn": dict(groups=2, ratio=4, head_dim=16, dtype="bfloat16"), "seqs": (64,),
            "attn_blocks": fa.BlockSizes(block_q=16, block_k=16, block_q_dkv=16, block_k_dkv=16,
                                         block_q_dq=16, block_k_dq=16, xla_block_q=32,
                                         xla_block_k=32),
            "segment_impls": (), "matmul": 256, "copy_bytes": 2**22, "repeats": 2}
  ce = {k: kernel_bench.CE_SHAPES[k] for k in ("d_model", "vocab", "dtype")}
  attn = {k: kernel_bench.ATTN_SHAPES[k] for k in ("groups", "ratio", "head_dim", "dtype")}
  return {"ce": ce, "tokens": (8192, 32_768), "ce_blocks": fce.BlockSizes(),
          "attn": attn, "seqs": (8192, 32_768), "attn_blocks": fa.BlockSizes(),
          "segment_impls": ("pallas", "cudnn"), "matmul": 8192, "copy_bytes": 2**32,
          "repeats": 5}


def cases(ctx: PartContext):
  st = _settings(ctx.dry_run)
  repeats = st["repeats"]
  yield (f"ceiling bf16 matmul {st['matmul']}^3",
         functools.partial(bench_matmul, st["matmul"], repeats=repeats))
  yield (f"ceiling copy {st['copy_bytes'] / 2**30:.3g} GiB",
         functools.partial(bench_copy, st["copy_bytes"], repeats=repeats))
  for tokens in st["tokens"]:
    for impl in ("pallas", "xla"):
      yield (f"cross_entropy {impl} T={tokens}",
             functools.partial(bench_cross_entropy, impl, tokens=tokens, repeats=repeats,
                               block_sizes=st["ce_blocks"], **st["ce"]))
  for tokens in st["tokens"]:
    yield (f"cross_entropy naive T={tokens}",
           functools.partial(bench_cross_entropy, "reference", tokens=tokens, repeats=repeats,
                             **st["ce"]))
  for seq in st["seqs"]:
    for impl in ("cudnn", "pallas", "xla"):
      yield (f"attention {impl} S={seq}",
             functools.partial(bench_attention, impl, seq=seq, repeats=repeats,
                               block_sizes=st["attn_blocks"], **st["attn"]))
  for impl in st["segment_impls"]:
    seq = st["seqs"][0]
    yield (f"attention {impl} S={seq} 4 packed segments",
           functools.partial(bench_attention, impl, seq=seq, repeats=repeats, segments=True,
                             block_sizes=st["attn_blocks"], **st["attn"]))
