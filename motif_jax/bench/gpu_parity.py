"""GPU check, part 1: the kernels and the cuDNN path against the references.

Each check draws fresh random inputs, runs the implementation under test and the reference
(float32 on upcast inputs, matmuls at HIGHEST precision), and compares every output by relative
error against the dtype's tolerance (gpu_measure.TOLERANCE). The checks take the implementation
as an argument, so a wrong one (tests/test_gpu_check.py plants some) is reported as failed.

  fused cross-entropy: loss (temperature, z-loss, ignored labels, mask), log-probs, entropy,
                       dh, dW (cotangents on loss and entropy), impl pallas and xla
  flash attention:     o, lse, dq, dk, dv; GQA, packed segment ids, dual-V width, causal; a
                       query chunk at a causal offset against longer keys; impl pallas and xla
  segment isolation:   changing one packed segment's keys and values must leave every other
                       segment's outputs unchanged (the MaxText cudnn_flash_jax bug, peers.md)
  cuDNN:               model.attention.attend_dot_product (jax.nn.dot_product_attention) with
                       packed segment ids, values and gradients, and its segment isolation
  pytest -m gpu:       the gpu-marked tests, in a subprocess
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from motif_jax.bench import gpu_measure as gm
from motif_jax.bench.gpu_harness import PartContext, Skipped
from motif_jax.model import attention as model_attention
from pallas_kernels import flash_attention as fa
from pallas_kernels import fused_cross_entropy as fce

environment = gm.environment
IGNORE = -100

# Dry run: tiles far smaller than the shapes, so ragged edges and several tiles are exercised.
TINY_CE_BLOCKS = fce.BlockSizes(chunk_t=32, chunk_v=128, block_t=16, block_v=32, block_d=16)
TINY_FA_BLOCKS = fa.BlockSizes(block_q=16, block_k=16, block_q_dkv=16, block_k_dkv=16,
                               block_q_dq=16, block_k_dq=16, xla_block_q=16, xla_block_k=16)


def _keys(seed: int, n: int):
  return jax.random.split(jax.random.key(seed), n)


# ---- Fused cross-entropy -----------------------------------------------------------------------

def cross_entropy_inputs(tokens: int, d_model: int, vocab: int, dtype, seed: int):
  k = _keys(seed, 6)
  h = gm.random_normal(k[0], (tokens, d_model), dtype)
  w = gm.random_normal(k[1], (d_model, vocab), dtype, scale=d_model ** -0.5 * 2.0)
  labels = jax.random.randint(k[2], (tokens,), 0, vocab)
  labels = jnp.where(jax.random.uniform(k[3], (tokens,)) < 0.1, IGNORE, labels)
  mask = (jax.random.uniform(k[4], (tokens,)) > 0.1).astype(jnp.float32)
  g_loss, g_ent = jax.random.normal(k[5], (2, tokens), jnp.float32)
  return h, w, labels, mask, g_loss, g_ent


def check_cross_entropy(ce_fn, *, tokens: int, d_model: int, vocab: int, dtype,
                        temperature: float = 0.8, z_loss: float = 1e-4, seed: int = 0) -> dict:
  """ce_fn(h, w, labels, mask, *, temperature, z_loss) -> (loss_t, entropy_t) vs the reference:
  loss, entropy, log-probs (z_loss 0), dh and dW."""
  h, w, labels, mask, g_loss, g_ent = cross_entropy_inputs(tokens, d_model, vocab, dtype, seed)

  def outputs(fn, h, w):
    (loss, ent), vjp = jax.vjp(lambda h, w: fn(h, w, labels, mask, temperature=temperature,
                                               z_loss=z_loss), h, w)
    dh, dw = vjp((g_loss, g_ent))
    logprob = -fn(h, w, labels, mask, temperature=temperature, z_loss=0.0)[0]
    return {"loss": loss, "entropy": ent, "logprob": logprob, "dh": dh, "dw": dw}

  out = jax.jit(functools.partial(outputs, ce_fn))(h, w)
  with jax.default_matmul_precision("highest"):
    ref = jax.jit(functools.partial(outputs, fce.fused_cross_entropy_reference))(*gm.upcast(h, w))
  return gm.compare(out, ref, dtype)


def fused_ce(impl: str, block_sizes: fce.BlockSizes):
  return functools.partial(fce.fused_cross_entropy, impl=impl, block_sizes=block_sizes)


# ---- Flash attention ---------------------------------------------------------------------------

def packed_segments(b: int, t: int, parts: int = 3):
  """Row r: `parts` segments of unequal length (boundaries shifted by r, so rows differ)."""
  pos = jnp.arange(t)
  bounds = [(i * t) // parts + 7 * i for i in range(1, parts)]
  return jnp.stack([sum((pos >= x + r).astype(jnp.int32) for x in bounds) for r in range(b)])


def check_flash_attention(attn_fn, *, b: int, t: int, k: int, g: int, h: int, v: int, dtype,
                          s: int | None = None, q_offset: int | None = None, seed: int = 0
                          ) -> dict:
  """attn_fn(q, k, v, seg_q, seg_k, q_offset) -> (o, lse), causal, vs the dense reference:
  o, lse, dq, dk, dv under random cotangents on o and lse. s != t: a query chunk at q_offset
  against s keys (with the keys' own segment ids)."""
  s = t if s is None else s
  key = _keys(seed, 5)
  q = gm.random_normal(key[0], (b, t, k, g, h), dtype)
  kk = gm.random_normal(key[1], (b, s, k, h), dtype)
  vv = gm.random_normal(key[2], (b, s, k, v), dtype)
  do = jax.random.normal(key[3], (b, t, k, g, v), jnp.float32)
  dlse = jax.random.normal(key[4], (b, t, k, g), jnp.float32)
  seg_k = packed_segments(b, s)
  start = 0 if q_offset is None else q_offset
  seg_q = seg_k[:, start:start + t] if s != t else seg_k
  offset = None if q_offset is None else jnp.int32(q_offset)

  def outputs(fn, q, kk, vv):
    (o, lse), vjp = jax.vjp(lambda q, kk, vv: fn(q, kk, vv, seg_q, seg_k, offset), q, kk, vv)
    dq, dk, dv = vjp((do.astype(o.dtype), dlse))
    return {"o": o, "lse": lse, "dq": dq, "dk": dk, "dv": dv}

  out = jax.jit(functools.partial(outputs, attn_fn))(q, kk, vv)
  reference = lambda q, kk, vv, sq, sk, off: fa.flash_attention_reference(  # noqa: E731
      q, kk, vv, sq, q_offset=off, segment_ids_k=sk)
  with jax.default_matmul_precision("highest"):
    ref = jax.jit(functools.partial(outputs, reference))(*gm.upcast(q, kk, vv))
  return gm.compare(out, ref, dtype)


def flash(impl: str, block_sizes: fa.BlockSizes):
  def fn(q, k, v, seg_q, seg_k, q_offset):
    return fa.flash_attention(q, k, v, seg_q, q_offset=q_offset, segment_ids_k=seg_k, impl=impl,
                              block_sizes=block_sizes)
  return fn


# ---- Packed-segment isolation and the cuDNN path -----------------------------------------------

def check_segment_isolation(attend_fn, *, b: int, t: int, k: int, g: int, h: int, v: int, dtype,
                            seed: int = 0, max_leak: float = 1e-3) -> dict:
  """attend_fn(q, k, v, seg) -> o. Perturbs the keys and values of segment 1 only; the change in
  the other segments' outputs, relative to the change in segment 1's, must stay under max_leak
  (exactly 0 without a leak; order 1 with one)."""
  key = _keys(seed, 5)
  q = gm.random_normal(key[0], (b, t, k, g, h), dtype)
  kk = gm.random_normal(key[1], (b, t, k, h), dtype)
  vv = gm.random_normal(key[2], (b, t, k, v), dtype)
  seg = packed_segments(b, t)
  in_1 = (seg == 1)[:, :, None, None]
  kk2 = jnp.where(in_1, gm.random_normal(key[3], kk.shape, dtype), kk)
  vv2 = jnp.where(in_1, gm.random_normal(key[4], vv.shape, dtype), vv)
  run = jax.jit(attend_fn)
  o1, o2 = run(q, kk, vv, seg), run(q, kk2, vv2, seg)
  diff = (o2.astype(jnp.float32) - o1.astype(jnp.float32)) ** 2
  own = float(jnp.sqrt(jnp.sum(jnp.where(in_1[..., None], diff, 0.0))))
  other = float(jnp.sqrt(jnp.sum(jnp.where(in_1[..., None], 0.0, diff))))
  leak = other / own if own > 0 else float("nan")
  return {"leak": leak, "max_leak": max_leak, "own_change": own,
          "passed": bool(own > 0 and leak <= max_leak)}  # NaN fails


def check_dot_product_attention(implementation: str, *, b: int, t: int, k: int, g: int, h: int,
                                seed: int = 0) -> dict:
  """attend_dot_product (dual-V value width 2h, packed segments) vs the dense `attend`, bf16:
  o, dq, dk, dv."""
  dtype = jnp.bfloat16
  key = _keys(seed, 4)
  q = gm.random_normal(key[0], (b, t, k, g, h), dtype)
  kk = gm.random_normal(key[1], (b, t, k, h), dtype)
  vv = gm.random_normal(key[2], (b, t, k, 2 * h), dtype)
  do = jax.random.normal(key[3], (b, t, k, g, 2 * h), jnp.float32)
  seg = packed_segments(b, t)

  def outputs(fn, q, kk, vv):
    o, vjp = jax.vjp(lambda q, kk, vv: fn(q, kk, vv, seg), q, kk, vv)
    dq, dk, dv = vjp(do.astype(o.dtype))
    return {"o": o, "dq": dq, "dk": dk, "dv": dv}

  ours = functools.partial(model_attention.attend_dot_product, implementation=implementation)
  out = jax.jit(functools.partial(outputs, ours))(q, kk, vv)
  with jax.default_matmul_precision("highest"):
    ref = jax.jit(functools.partial(outputs, model_attention.attend))(*gm.upcast(q, kk, vv))
  return gm.compare(out, ref, dtype)


def _needs_gpu():
  if not gm.on_gpu():
    raise Skipped("cuDNN needs a CUDA GPU")


def _cudnn(check, **kw):
  _needs_gpu()
  return check(**kw)


# ---- pytest -m gpu -----------------------------------------------------------------------------

def run_gpu_tests(ctx: PartContext, tests_dir: Path = Path(__file__).resolve().parents[2] / "tests"
                  ) -> dict:
  files = sorted(str(p) for p in tests_dir.glob("test_*.py") if "mark.gpu" in p.read_text())
  if not files:
    raise Skipped(f"no gpu-marked tests under {tests_dir}")
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                         "no:cacheprovider", *files], capture_output=True, text=True,
                        timeout=max(5.0, ctx.seconds_left()), cwd=tests_dir.parent)
  lines = proc.stdout.strip().splitlines()
  summary = lines[-1] if lines else proc.stderr[-300:]
  if proc.returncode == 0 and not gm.on_gpu():
    raise Skipped(f"no CUDA device: pytest ran and skipped them ({summary})")
  return {"files": files, "summary": summary, "returncode": proc.returncode,
          "passed": proc.returncode == 0, "output_tail": proc.stdout[-1500:]}


# ---- The part ----------------------------------------------------------------------------------

def _shapes(dry_run: bool) -> dict:
  """Shapes and the (impl, dtype) matrix: all of it on a GPU, a covering subset in the dry run
  (every kernel, both dtypes, every feature, at CPU test speed)."""
  f32, bf16 = jnp.float32, jnp.bfloat16
  if dry_run:
    return {"ce": [("tiny", dict(tokens=40, d_model=32, vocab=300), TINY_CE_BLOCKS)],
            "ce_runs": (("pallas", f32), ("xla", bf16)),
            "fa": [("tiny", dict(b=1, t=40, k=2, g=2, h=16, v=32), TINY_FA_BLOCKS)],
            "fa_runs": (("pallas", bf16), ("xla", f32)),
            "fa_offset": dict(b=1, t=24, s=64, q_offset=30, k=2, g=2, h=16, v=32),
            "iso": dict(b=1, t=48, k=2, g=2, h=16, v=32), "impls": ("pallas",),
            "dpa": dict(b=1, t=48, k=2, g=2, h=16)}
  both = tuple((impl, dtype) for dtype in (f32, bf16) for impl in ("pallas", "xla"))
  return {"ce": [("small", dict(tokens=300, d_model=256, vocab=5003),
                  fce.BlockSizes(chunk_t=256, chunk_v=1024)),
                 ("motif", dict(tokens=1024, d_model=4096, vocab=219_520), fce.BlockSizes())],
          "ce_runs": both,
          "fa": [("small", dict(b=2, t=300, k=2, g=4, h=64, v=128), fa.BlockSizes()),
                 ("motif", dict(b=1, t=4096, k=8, g=4, h=128, v=256), fa.BlockSizes())],
          "fa_runs": both,
          "fa_offset": dict(b=1, t=512, s=2048, q_offset=1024, k=8, g=4, h=128, v=256),
          "iso": dict(b=2, t=1024, k=8, g=4, h=128, v=256), "impls": ("pallas", "xla"),
          "dpa": dict(b=2, t=1024, k=8, g=4, h=128)}


def cases(ctx: PartContext):
  """Small shapes first (every feature, cheap to compile), then cuDNN and segment isolation,
  then the Motif-like shapes, then pytest: a deadline cuts the least valuable cases."""
  sh = _shapes(ctx.dry_run)
  seed = iter(range(1000))

  def ce_cases(i):
    size, shape, bs = sh["ce"][i]
    for impl, dtype in sh["ce_runs"]:
      yield (f"cross_entropy {impl} {size} {jnp.dtype(dtype).name}",
             functools.partial(check_cross_entropy, fused_ce(impl, bs), dtype=dtype,
                               seed=next(seed), **shape))

  def fa_cases(i):
    size, shape, bs = sh["fa"][i]
    for impl, dtype in sh["fa_runs"]:
      yield (f"flash_attention {impl} {size} {jnp.dtype(dtype).name} gqa+segments+dual-V",
             functools.partial(check_flash_attention, flash(impl, bs), dtype=dtype,
                               seed=next(seed), **shape))

  yield from ce_cases(0)
  yield from fa_cases(0)
  fa_bs = sh["fa"][0][2]
  iso_dpa = sh["iso"] | {"v": 2 * sh["iso"]["h"]}
  for implementation in ("cudnn", "xla"):
    attend = functools.partial(model_attention.attend_dot_product, implementation=implementation)
    wrap = _cudnn if implementation == "cudnn" else _call
    yield (f"attend_dot_product {implementation} bfloat16 packed segments vs attend",
           functools.partial(wrap, check_dot_product_attention, implementation=implementation,
                             seed=next(seed), **sh["dpa"]))
    yield (f"segment isolation attend_dot_product {implementation} bfloat16",
           functools.partial(wrap, check_segment_isolation, attend_fn=attend, dtype=jnp.bfloat16,
                             seed=next(seed), **iso_dpa))
  for impl in sh["impls"]:
    yield (f"segment isolation flash {impl} bfloat16",
           functools.partial(check_segment_isolation, _flash_attend(impl, fa_bs),
                             dtype=jnp.bfloat16, seed=next(seed), **sh["iso"]))
  for impl in sh["impls"]:
    yield (f"flash_attention {impl} bfloat16 query chunk at a causal offset",
           functools.partial(check_flash_attention, flash(impl, fa_bs), dtype=jnp.bfloat16,
                             seed=next(seed), **sh["fa_offset"]))
  for i in range(1, len(sh["ce"])):
    yield from ce_cases(i)
    yield from fa_cases(i)
  yield ("pytest -m gpu", functools.partial(run_gpu_tests, ctx))


def _flash_attend(impl: str, block_sizes: fa.BlockSizes):
  def attend(q, k, v, seg):
    return flash(impl, block_sizes)(q, k, v, seg, seg, None)[0]
  return attend


def _call(check, **kw):
  return check(**kw)
