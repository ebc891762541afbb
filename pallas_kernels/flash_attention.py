"""Flash attention for grouped queries, causal masks, packed segments and GDA's dual-V width.

    o_btkgv, lse_btkg = flash_attention(q_btkgh, k_bskh, v_bskv, segment_ids_bt)

Layout (the model's `attend` layout): q_btkgh has k KV heads, each serving g query heads
(query head n = k_index * g + g_index); K/V are never repeated across the g heads. The value width
v may differ from the QK width h (Motif GDA: h = 128, v = 256 = V1 ‖ V2, one softmax for both
slabs). `segment_ids_bt` (ints) restricts attention to equal ids (packing); `causal` masks the
future. Softmax, lse (natural log) and all accumulators are float32; o has the dtype of q.

Implementations behind one API (`impl`):
  "pallas": Pallas-Triton kernels (forward; backward as a dq kernel and a dk/dv kernel that
            recompute probabilities from the saved lse). Interpreted on CPU (`interpret=None`).
  "xla":    the blockwise fallback in `blockwise_attention.py`, O(s) memory, any backend.
`flash_attention_reference` is the dense oracle. Gradients flow through o and lse (the lse
cotangent enters as delta - dlse, which costs nothing extra).
Memory / lowering checks for benchmarks: `abstract_inputs` + `loss_and_grads`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import blockwise_attention as bw

IMPLS = ("pallas", "xla")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles (tokens). Pallas ones must be powers of 2 >= 16; they are clamped to the sequence.

  Untuned guesses for H100 at h = 128, v = 256 (no GPU was available when they were chosen).
  """

  block_q: int = 64  # pallas forward: query rows per program
  block_k: int = 64  # pallas forward: key rows per inner step
  block_q_dkv: int = 32  # pallas dk/dv: query rows per inner step
  block_k_dkv: int = 64  # pallas dk/dv: key rows per program
  block_q_dq: int = 64  # pallas dq: query rows per program
  block_k_dq: int = 32  # pallas dq: key rows per inner step
  xla_block_q: int = 512  # xla fallback: query rows per map step
  xla_block_k: int = 512  # xla fallback: key rows per loop step
  num_warps: int | None = None  # pallas; None: 4 for widths <= 64, else 8
  num_stages: int = 2  # pallas software pipelining depth


@dataclasses.dataclass(frozen=True)
class _Options:
  impl: str
  causal: bool
  sm_scale: float
  block_sizes: BlockSizes
  interpret: bool


def flash_attention_reference(q_btkgh, k_bskh, v_bskv, segment_ids_bt=None, *, causal=True,
                              sm_scale=None):
  """Dense oracle: the [t, s] logits, float32 throughout; returns (o_btkgv, lse_btkg)."""
  t = q_btkgh.shape[1]
  scale = q_btkgh.shape[-1] ** -0.5 if sm_scale is None else sm_scale
  s = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                 preferred_element_type=jnp.float32) * scale
  mask = bw.tile_mask(jnp.arange(t), jnp.arange(t), segment_ids_bt, segment_ids_bt,
                      causal=causal, seq_len=t)
  mask = mask[None, None, None] if mask.ndim == 2 else mask[:, None, None]
  s = jnp.where(mask, s, bw.MASK_VALUE)
  lse_bkgt = jax.nn.logsumexp(s, axis=-1)
  p = jnp.where(mask, jnp.exp(s - lse_bkgt[..., None]), 0.0)
  o_btkgv = jnp.einsum("bkgts,bskv->btkgv", p, v_bskv.astype(jnp.float32))
  return o_btkgv.astype(q_btkgh.dtype), jnp.transpose(lse_bkgt, (0, 3, 1, 2))


# ---- Pallas-Triton kernels --------------------------------------------------------------------
# Refs carry the whole sequence where a loop walks it (pl.ds slices of power-of-2 tiles) and one
# tile where the grid walks it; every load/store past the sequence end is masked, so t needs no
# padding. Matmuls take the input dtype and accumulate in float32.

def _dot(a, b, *, trans_a=False, trans_b=False):
  precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=precision)


def _load_segments(seg_ref, start, size, has_segments):
  """Segment ids of one tile; past the end they are masked by position anyway."""
  if not has_segments:
    return None
  idx = start + jnp.arange(size)
  return plgpu.load(seg_ref.at[pl.ds(start, size)], mask=idx < seg_ref.shape[0], other=-1)


def _key_tile(k_ref, v_ref, seg_ref, rows, seg_q, j, *, causal, has_segments, seq_len,
              block_k):
  """Key tile j of a query tile's loop: (k, v, mask), rows past the end loaded as zeros."""
  cols = j * block_k + jnp.arange(block_k)
  col_ok = (cols < seq_len)[:, None]
  k = plgpu.load(k_ref.at[pl.ds(j * block_k, block_k), :], mask=col_ok, other=0.0)
  v = plgpu.load(v_ref.at[pl.ds(j * block_k, block_k), :], mask=col_ok, other=0.0)
  seg_k = _load_segments(seg_ref, j * block_k, block_k, has_segments)
  return k, v, bw.tile_mask(rows, cols, seg_q, seg_k, causal=causal, seq_len=seq_len)


def _key_blocks(qi, *, causal, seq_len, block_q, block_k):
  """Key tiles query tile qi visits: all of them, or (causal) up to its diagonal."""
  num_k_blocks = pl.cdiv(seq_len, block_k)
  if causal:
    num_k_blocks = jnp.minimum(num_k_blocks, lax.div((qi + 1) * block_q + block_k - 1, block_k))
  return num_k_blocks


def _flash_attention_fwd_kernel(seg_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, causal,
                                has_segments, sm_scale, seq_len, block_q, block_k):
  num_q_blocks = pl.cdiv(seq_len, block_q)
  qi = num_q_blocks - 1 - pl.program_id(0)  # heaviest causal blocks launch first
  rows = qi * block_q + jnp.arange(block_q)
  row_ok = rows < seq_len
  q = plgpu.load(q_ref, mask=row_ok[:, None], other=0.0)
  seg_q = _load_segments(seg_ref, qi * block_q, block_q, has_segments)
  key_tile = functools.partial(_key_tile, k_ref, v_ref, seg_ref, rows, seg_q, causal=causal,
                               has_segments=has_segments, seq_len=seq_len, block_k=block_k)

  def body(j, carry):
    acc, m, l = carry
    k, v, mask = key_tile(j)
    s = jnp.where(mask, _dot(q, k, trans_b=True) * sm_scale, bw.MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_new, alpha * l + jnp.sum(p, axis=1)

  num_k_blocks = _key_blocks(qi, causal=causal, seq_len=seq_len, block_q=block_q,
                             block_k=block_k)
  init = (jnp.zeros((block_q, v_ref.shape[-1]), jnp.float32),
          jnp.full((block_q,), -jnp.inf, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  acc, m, l = lax.fori_loop(0, num_k_blocks, body, init)
  l = jnp.where(l == 0.0, 1.0, l)  # only rows past the end are fully masked
  plgpu.store(o_ref, (acc / l[:, None]).astype(o_ref.dtype), mask=row_ok[:, None])
  plgpu.store(lse_ref, m + jnp.log(l), mask=row_ok)


def _flash_attention_dq_kernel(seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref,
                               *, causal, has_segments, sm_scale, seq_len, block_q, block_k):
  num_q_blocks = pl.cdiv(seq_len, block_q)
  qi = num_q_blocks - 1 - pl.program_id(0)
  rows = qi * block_q + jnp.arange(block_q)
  row_ok = rows < seq_len
  q = plgpu.load(q_ref, mask=row_ok[:, None], other=0.0)
  do = plgpu.load(do_ref, mask=row_ok[:, None], other=0.0)
  lse = plgpu.load(lse_ref, mask=row_ok, other=0.0)
  delta = plgpu.load(delta_ref, mask=row_ok, other=0.0)
  seg_q = _load_segments(seg_ref, qi * block_q, block_q, has_segments)
  key_tile = functools.partial(_key_tile, k_ref, v_ref, seg_ref, rows, seg_q, causal=causal,
                               has_segments=has_segments, seq_len=seq_len, block_k=block_k)

  def body(j, dq):
    k, v, mask = key_tile(j)
    s = _dot(q, k, trans_b=True) * sm_scale
    p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
    ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k)

  num_k_blocks = _key_blocks(qi, causal=causal, seq_len=seq_len, block_q=block_q,
                             block_k=block_k)
  dq = lax.fori_loop(0, num_k_blocks, body, jnp.zeros((block_q, q_ref.shape[-1]), jnp.float32))
  plgpu.store(dq_ref, (dq * sm_scale).astype(dq_ref.dtype), mask=row_ok[:, None])


def _flash_attention_dkv_kernel(seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref,
                                dv_ref, *, causal, has_segments, sm_scale, seq_len, block_q,
                                block_k):
  """One key tile of one KV head; loops over its g query heads and the query tiles after it."""
  kj = pl.program_id(0)
  cols = kj * block_k + jnp.arange(block_k)
  col_ok = cols < seq_len
  k = plgpu.load(k_ref, mask=col_ok[:, None], other=0.0)
  v = plgpu.load(v_ref, mask=col_ok[:, None], other=0.0)
  seg_k = _load_segments(seg_ref, kj * block_k, block_k, has_segments)
  num_q_blocks = pl.cdiv(seq_len, block_q)
  first_q_block = lax.div(kj * block_k, block_q) if causal else 0  # earlier rows can't see kj
  num_tiles = num_q_blocks - first_q_block

  def body(step, carry):
    dk, dv = carry
    gi = lax.div(step, num_tiles)  # group head, then query tile
    i = first_q_block + lax.rem(step, num_tiles)
    rows = i * block_q + jnp.arange(block_q)
    row_ok = rows < seq_len
    tile = pl.ds(i * block_q, block_q)
    q = plgpu.load(q_ref.at[tile, gi, :], mask=row_ok[:, None], other=0.0)
    do = plgpu.load(do_ref.at[tile, gi, :], mask=row_ok[:, None], other=0.0)
    lse = plgpu.load(lse_ref.at[gi, tile], mask=row_ok, other=0.0)
    delta = plgpu.load(delta_ref.at[gi, tile], mask=row_ok, other=0.0)
    seg_q = _load_segments(seg_ref, i * block_q, block_q, has_segments)
    mask = bw.tile_mask(rows, cols, seg_q, seg_k, causal=causal, seq_len=seq_len)
    s = _dot(q, k, trans_b=True) * sm_scale
    p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
    dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
    ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
    return dk + _dot(ds.astype(q.dtype), q, trans_a=True), dv

  num_steps = q_ref.shape[1] * num_tiles
  init = (jnp.zeros((block_k, k_ref.shape[-1]), jnp.float32),
          jnp.zeros((block_k, v_ref.shape[-1]), jnp.float32))
  dk, dv = lax.fori_loop(0, num_steps, body, init)
  plgpu.store(dk_ref, (dk * sm_scale).astype(dk_ref.dtype), mask=col_ok[:, None])
  plgpu.store(dv_ref, dv.astype(dv_ref.dtype), mask=col_ok[:, None])


def _compiler_params(bs: BlockSizes, width: int):
  num_warps = bs.num_warps if bs.num_warps is not None else (4 if width <= 64 else 8)
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=bs.num_stages)


def _tile(block: int, t: int) -> int:
  """A power-of-2 tile no longer than needed for t (>= 16, Triton's smallest dot)."""
  return max(16, min(block, pl.next_power_of_2(t)))


def _pallas_forward(q, k, v, seg_bt, opts: _Options):
  b, t, kh, g, h = q.shape
  vd = v.shape[-1]
  bs = opts.block_sizes
  bq, bk = _tile(bs.block_q, t), _tile(bs.block_k, t)
  nq = pl.cdiv(t, bq)
  kernel = functools.partial(
      _flash_attention_fwd_kernel, causal=opts.causal, has_segments=seg_bt is not None,
      sm_scale=opts.sm_scale, seq_len=t, block_q=bq, block_k=bk)
  seg_bt = jnp.zeros((b, t), jnp.int32) if seg_bt is None else seg_bt
  return pl.pallas_call(
      kernel,
      grid=(nq, b, kh, g),
      in_specs=[
          pl.BlockSpec((None, t), lambda i, bi, ki, gi: (bi, 0)),
          pl.BlockSpec((None, bq, None, None, h),
                       lambda i, bi, ki, gi: (bi, nq - 1 - i, ki, gi, 0)),
          pl.BlockSpec((None, t, None, h), lambda i, bi, ki, gi: (bi, 0, ki, 0)),
          pl.BlockSpec((None, t, None, vd), lambda i, bi, ki, gi: (bi, 0, ki, 0)),
      ],
      out_specs=[
          pl.BlockSpec((None, bq, None, None, vd),
                       lambda i, bi, ki, gi: (bi, nq - 1 - i, ki, gi, 0)),
          pl.BlockSpec((None, None, None, bq), lambda i, bi, ki, gi: (bi, ki, gi, nq - 1 - i)),
      ],
      out_shape=[jax.ShapeDtypeStruct((b, t, kh, g, vd), q.dtype),
                 jax.ShapeDtypeStruct((b, kh, g, t), jnp.float32)],
      compiler_params=_compiler_params(bs, max(h, vd)),
      interpret=opts.interpret,
      name="flash_attention_fwd",
  )(seg_bt, q, k, v)


def _pallas_backward(q, k, v, seg_bt, lse_bkgt, do, delta_bkgt, opts: _Options):
  b, t, kh, g, h = q.shape
  vd = v.shape[-1]
  bs = opts.block_sizes
  statics = dict(causal=opts.causal, has_segments=seg_bt is not None, sm_scale=opts.sm_scale,
                 seq_len=t)
  seg_bt = jnp.zeros((b, t), jnp.int32) if seg_bt is None else seg_bt
  params = _compiler_params(bs, max(h, vd))

  bq, bk = _tile(bs.block_q_dq, t), _tile(bs.block_k_dq, t)
  nq = pl.cdiv(t, bq)
  q_tile = lambda width: pl.BlockSpec(  # noqa: E731
      (None, bq, None, None, width), lambda i, bi, ki, gi: (bi, nq - 1 - i, ki, gi, 0))
  row_tile = pl.BlockSpec((None, None, None, bq), lambda i, bi, ki, gi: (bi, ki, gi, nq - 1 - i))
  whole_kv = lambda width: pl.BlockSpec(  # noqa: E731
      (None, t, None, width), lambda i, bi, ki, gi: (bi, 0, ki, 0))
  dq = pl.pallas_call(
      functools.partial(_flash_attention_dq_kernel, block_q=bq, block_k=bk, **statics),
      grid=(nq, b, kh, g),
      in_specs=[pl.BlockSpec((None, t), lambda i, bi, ki, gi: (bi, 0)), q_tile(h), whole_kv(h),
                whole_kv(vd), q_tile(vd), row_tile, row_tile],
      out_specs=q_tile(h),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params,
      interpret=opts.interpret,
      name="flash_attention_dq",
  )(seg_bt, q, k, v, do, lse_bkgt, delta_bkgt)

  bq, bk = _tile(bs.block_q_dkv, t), _tile(bs.block_k_dkv, t)
  whole_q = lambda width: pl.BlockSpec(  # noqa: E731
      (None, t, None, g, width), lambda j, bi, ki: (bi, 0, ki, 0, 0))
  whole_rows = pl.BlockSpec((None, None, g, t), lambda j, bi, ki: (bi, ki, 0, 0))
  kv_tile = lambda width: pl.BlockSpec(  # noqa: E731
      (None, bk, None, width), lambda j, bi, ki: (bi, j, ki, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_flash_attention_dkv_kernel, block_q=bq, block_k=bk, **statics),
      grid=(pl.cdiv(t, bk), b, kh),
      in_specs=[pl.BlockSpec((None, t), lambda j, bi, ki: (bi, 0)), whole_q(h), kv_tile(h),
                kv_tile(vd), whole_q(vd), whole_rows, whole_rows],
      out_specs=[kv_tile(h), kv_tile(vd)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params,
      interpret=opts.interpret,
      name="flash_attention_dkv",
  )(seg_bt, q, k, v, do, lse_bkgt, delta_bkgt)
  return dq, dk, dv


# ---- custom_vjp over both implementations -----------------------------------------------------

def _forward(q, k, v, seg_bt, opts: _Options):
  if opts.impl == "pallas":
    return _pallas_forward(q, k, v, seg_bt, opts)
  bs = opts.block_sizes
  return bw.blockwise_forward(q, k, v, seg_bt, causal=opts.causal, sm_scale=opts.sm_scale,
                              block_q=bs.xla_block_q, block_k=bs.xla_block_k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, seg_bt, opts: _Options):
  o, lse_bkgt = _forward(q, k, v, seg_bt, opts)
  return o, jnp.transpose(lse_bkgt, (0, 3, 1, 2))


def _attention_fwd(q, k, v, seg_bt, opts: _Options):
  o, lse_bkgt = _forward(q, k, v, seg_bt, opts)
  return (o, jnp.transpose(lse_bkgt, (0, 3, 1, 2))), (q, k, v, seg_bt, o, lse_bkgt)


def _attention_bwd(opts: _Options, res, cotangents):
  q, k, v, seg_bt, o, lse_bkgt = res
  do, dlse_btkg = cotangents
  # d lse_i / d s_ij = p_ij, so the lse cotangent only shifts delta_i = sum_v(o_i * do_i).
  delta_bkgt = jnp.einsum("btkgv,btkgv->bkgt", o.astype(jnp.float32), do.astype(jnp.float32))
  delta_bkgt = delta_bkgt - jnp.transpose(dlse_btkg, (0, 2, 3, 1))
  do = do.astype(q.dtype)
  if opts.impl == "pallas":
    dq, dk, dv = _pallas_backward(q, k, v, seg_bt, lse_bkgt, do, delta_bkgt, opts)
  else:
    bs = opts.block_sizes
    dq, dk, dv = bw.blockwise_backward(
        q, k, v, seg_bt, lse_bkgt, do, delta_bkgt, causal=opts.causal, sm_scale=opts.sm_scale,
        block_q=bs.xla_block_q, block_k=bs.xla_block_k)
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ---- Public API -------------------------------------------------------------------------------

def resolve_interpret(interpret: bool | None) -> bool:
  """None means: interpret exactly when the default backend is the CPU."""
  return jax.default_backend() == "cpu" if interpret is None else interpret


def _check_shapes(q, k, v, segment_ids, impl, block_sizes):
  if impl not in IMPLS:
    raise ValueError(f"{impl=} must be one of {IMPLS}")
  if q.ndim != 5 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"expected q [b, t, k, g, h], k [b, s, k, h], v [b, s, k, v]; got "
                     f"{q.shape=}, {k.shape=}, {v.shape=}")
  b, t, kh, _, h = q.shape
  if k.shape[:3] != (b, t, kh) or v.shape[:3] != (b, t, kh) or k.shape[3] != h:
    raise ValueError(f"k/v must be [b={b}, s=t={t}, k={kh}, ·] with k head dim {h}: "
                     f"{q.shape=}, {k.shape=}, {v.shape=}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v dtypes differ: {q.dtype=}, {k.dtype=}, {v.dtype=}")
  if segment_ids is not None and segment_ids.shape != (b, t):
    raise ValueError(f"{segment_ids.shape=} must be (b, t) = {(b, t)}")
  if impl == "pallas":
    for name, width in (("head_dim", h), ("value_dim", v.shape[3])):
      if width < 16 or width & (width - 1):
        raise ValueError(f"pallas flash attention needs a power-of-2 {name} >= 16, got {width}")
    for field in dataclasses.fields(BlockSizes):
      value = getattr(block_sizes, field.name)
      if field.name.startswith("block") and (value < 16 or value & (value - 1)):
        raise ValueError(f"block_sizes.{field.name}={value} must be a power of 2 >= 16")


@functools.partial(jax.jit, static_argnames=("causal", "sm_scale", "impl", "block_sizes",
                                             "interpret"))
def flash_attention(q_btkgh: jax.Array, k_bskh: jax.Array, v_bskv: jax.Array,
                    segment_ids_bt: jax.Array | None = None, *, causal: bool = True,
                    sm_scale: float | None = None, impl: str = "pallas",
                    block_sizes: BlockSizes = BlockSizes(),
                    interpret: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """softmax(q kᵀ · sm_scale + mask) v per query head; returns (o_btkgv, lse_btkg float32).

  Args:
    sm_scale: logit scale; None means h ** -0.5.
    impl: "pallas" (Triton kernels; interpreted on CPU) or "xla" (blockwise, any backend).
    interpret: pallas only; None resolves to True on CPU.
  """
  _check_shapes(q_btkgh, k_bskh, v_bskv, segment_ids_bt, impl, block_sizes)
  opts = _Options(impl=impl, causal=causal,
                  sm_scale=float(q_btkgh.shape[-1] ** -0.5 if sm_scale is None else sm_scale),
                  block_sizes=block_sizes, interpret=resolve_interpret(interpret))
  seg_bt = None if segment_ids_bt is None else segment_ids_bt.astype(jnp.int32)
  return _attention(q_btkgh, k_bskh, v_bskv, seg_bt, opts)


# ---- Helpers for memory / lowering checks and benchmarks --------------------------------------

def abstract_inputs(*, batch: int = 1, seq_len: int, kv_heads: int = 8, group: int = 4,
                    head_dim: int = 128, value_dim: int = 256, dtype=jnp.bfloat16,
                    segments: bool = True):
  """ShapeDtypeStructs (q, k, v, segment_ids); the defaults are Motif's signal attention."""
  sds = jax.ShapeDtypeStruct
  return (sds((batch, seq_len, kv_heads, group, head_dim), dtype),
          sds((batch, seq_len, kv_heads, head_dim), dtype),
          sds((batch, seq_len, kv_heads, value_dim), dtype),
          sds((batch, seq_len), jnp.int32) if segments else None)


def loss_and_grads(impl: str = "pallas", *, block_sizes: BlockSizes = BlockSizes(),
                   interpret: bool | None = None):
  """f(q, k, v, seg) -> (sum(o), (dq, dk, dv)): one forward + backward, for AOT or timing.

  impl: "pallas" | "xla" | "reference".
  """
  def loss(q, k, v, seg):
    if impl == "reference":
      o, _ = flash_attention_reference(q, k, v, seg)
    else:
      o, _ = flash_attention(q, k, v, seg, impl=impl, block_sizes=block_sizes,
                             interpret=interpret)
    return jnp.sum(o.astype(jnp.float32))
  return jax.value_and_grad(loss, argnums=(0, 1, 2))
