"""Flash attention for grouped queries, causal masks, packed segments and GDA's dual-V width.

    o_btkgv, lse_btkg = flash_attention(q_btkgh, k_bskh, v_bskv, segment_ids_bt)

Layout (the model's `attend` layout): q_btkgh has k KV heads, each serving g query heads
(query head n = k_index * g + g_index); K/V are never repeated across the g heads. The value width
v may differ from the QK width h (Motif GDA: h = 128, v = 256 = V1 ‖ V2, one softmax for both
slabs). `segment_ids_bt` (ints) restricts attention to equal ids (packing); `causal` masks the
future. Softmax, lse (natural log) and all accumulators are float32; o has the dtype of q.

The t queries may be a chunk of a longer sequence against s != t keys (context parallelism):
`q_offset` (an int or traced int32 scalar) is the key position of query row 0 and
`segment_ids_k` the keys' ids. Rows that see no key get o = 0 and the finite lse MASK_VALUE.

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

  Pallas ones: untuned guesses for H100 at h = 128, v = 256 (no GPU was available when they
  were chosen). XLA ones: measured on 2 CPU cores (forward + backward, heads-major tiles; 128 is
  best or within 5% of it at every shape below): tiny Motif 16 x 512, 4 groups of 4 + 1 heads:
  363 / 427 / 688 / 1,680 ms at tiles 64 / 128 / 256 / 512 (dense: 998); quickstart-like
  8 x 384: 54 / 55 / 169 / 146 (dense 105); side-by-side Llama 8 x 256: 20 / 18 / 27 / 27
  (dense 19). Small tiles skip the masked half of causal attention and stay in cache.
  """

  block_q: int = 64  # pallas forward: query rows per program
  block_k: int = 64  # pallas forward: key rows per inner step
  block_q_dkv: int = 32  # pallas dk/dv: query rows per inner step
  block_k_dkv: int = 64  # pallas dk/dv: key rows per program
  block_q_dq: int = 64  # pallas dq: query rows per program
  block_k_dq: int = 32  # pallas dq: key rows per inner step
  xla_block_q: int = 128  # xla fallback: query rows per map step
  xla_block_k: int = 128  # xla fallback: key rows per loop step
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
                              sm_scale=None, q_offset=None, segment_ids_k=None):
  """Dense oracle: the [t, s] logits, float32 throughout; returns (o_btkgv, lse_btkg).

  The mask is built from positions here (not with `tile_mask`): query i at q_offset + i, key j at
  j. Rows that see no key get o = 0 and lse = MASK_VALUE, as in `flash_attention`.
  """
  t, s_len = q_btkgh.shape[1], k_bskh.shape[1]
  scale = q_btkgh.shape[-1] ** -0.5 if sm_scale is None else sm_scale
  s = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                 preferred_element_type=jnp.float32) * scale
  pos_q = (0 if q_offset is None else q_offset) + jnp.arange(t)
  mask_bts = jnp.ones((1, t, s_len), bool)
  if causal:
    mask_bts = mask_bts & (pos_q[:, None] >= jnp.arange(s_len)[None, :])[None]
  if segment_ids_bt is not None:
    seg_k = segment_ids_bt if segment_ids_k is None else segment_ids_k
    mask_bts = mask_bts & (segment_ids_bt[:, :, None] == seg_k[:, None, :])
  mask = mask_bts[:, None, None]
  s = jnp.where(mask, s, bw.MASK_VALUE)
  lse_bkgt = jnp.where(mask.any(-1), jax.nn.logsumexp(s, axis=-1), bw.MASK_VALUE)
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


def _key_tile(k_ref, v_ref, seg_k_ref, rows, seg_q, q_offset, j, *, causal, has_segments,
              q_len, k_len, block_k):
  """Key tile j of a query tile's loop: (k, v, mask), rows past the end loaded as zeros."""
  cols = j * block_k + jnp.arange(block_k)
  col_ok = (cols < k_len)[:, None]
  k = plgpu.load(k_ref.at[pl.ds(j * block_k, block_k), :], mask=col_ok, other=0.0)
  v = plgpu.load(v_ref.at[pl.ds(j * block_k, block_k), :], mask=col_ok, other=0.0)
  seg_k = _load_segments(seg_k_ref, j * block_k, block_k, has_segments)
  return k, v, bw.tile_mask(rows, cols, seg_q, seg_k, causal=causal, q_len=q_len, k_len=k_len,
                            q_offset=q_offset)


def _key_blocks(qi, q_offset, *, causal, q_len, k_len, block_q, block_k):
  """Key tiles [0, n) query tile qi visits: all, or (causal) up to its last row's position."""
  num_k_blocks = pl.cdiv(k_len, block_k)
  if causal:
    last = q_offset + jnp.minimum((qi + 1) * block_q, q_len) - 1
    # Tiles up to the one holding key `last`; none when last < 0 (div truncates toward 0).
    num_k_blocks = jnp.clip(lax.div(last + block_k, block_k), 0, num_k_blocks)
  return num_k_blocks


def _query_tile(off_ref, seg_q_ref, k_ref, v_ref, seg_k_ref, *, causal, has_segments, q_len,
                k_len, block_q, block_k):
  """This program's query tile (heaviest causal tiles launch first): rows, row_ok, a key-tile
  loader for `_key_tile` and the number of key tiles to visit."""
  q_offset = off_ref[0]
  qi = pl.cdiv(q_len, block_q) - 1 - pl.program_id(0)
  rows = qi * block_q + jnp.arange(block_q)
  seg_q = _load_segments(seg_q_ref, qi * block_q, block_q, has_segments)
  key_tile = functools.partial(_key_tile, k_ref, v_ref, seg_k_ref, rows, seg_q, q_offset,
                               causal=causal, has_segments=has_segments, q_len=q_len,
                               k_len=k_len, block_k=block_k)
  num_k_blocks = _key_blocks(qi, q_offset, causal=causal, q_len=q_len, k_len=k_len,
                             block_q=block_q, block_k=block_k)
  return rows < q_len, key_tile, num_k_blocks


def _flash_attention_fwd_kernel(off_ref, seg_q_ref, seg_k_ref, q_ref, k_ref, v_ref, o_ref,
                                lse_ref, *, sm_scale, **statics):
  row_ok, key_tile, num_k_blocks = _query_tile(off_ref, seg_q_ref, k_ref, v_ref, seg_k_ref,
                                               **statics)
  q = plgpu.load(q_ref, mask=row_ok[:, None], other=0.0)

  def body(j, carry):
    acc, m, l = carry
    k, v, mask = key_tile(j)
    s = jnp.where(mask, _dot(q, k, trans_b=True) * sm_scale, bw.MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_new, alpha * l + jnp.sum(p, axis=1)

  block_q = q.shape[0]
  init = (jnp.zeros((block_q, v_ref.shape[-1]), jnp.float32),
          jnp.full((block_q,), -jnp.inf, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  acc, m, l = lax.fori_loop(0, num_k_blocks, body, init)
  # Rows that saw no key (past the end, before the first key, or no key of their segment): o = 0
  # and lse = MASK_VALUE, whether their loop was empty (m = -inf) or only masked (m = MASK_VALUE).
  empty = l == 0.0
  l = jnp.where(empty, 1.0, l)
  plgpu.store(o_ref, (acc / l[:, None]).astype(o_ref.dtype), mask=row_ok[:, None])
  plgpu.store(lse_ref, jnp.where(empty, bw.MASK_VALUE, m + jnp.log(l)), mask=row_ok)


def _flash_attention_dq_kernel(off_ref, seg_q_ref, seg_k_ref, q_ref, k_ref, v_ref, do_ref,
                               lse_ref, delta_ref, dq_ref, *, sm_scale, **statics):
  row_ok, key_tile, num_k_blocks = _query_tile(off_ref, seg_q_ref, k_ref, v_ref, seg_k_ref,
                                               **statics)
  q = plgpu.load(q_ref, mask=row_ok[:, None], other=0.0)
  do = plgpu.load(do_ref, mask=row_ok[:, None], other=0.0)
  lse = plgpu.load(lse_ref, mask=row_ok, other=0.0)
  delta = plgpu.load(delta_ref, mask=row_ok, other=0.0)

  def body(j, dq):
    k, v, mask = key_tile(j)
    s = _dot(q, k, trans_b=True) * sm_scale
    p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
    ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k)

  dq = lax.fori_loop(0, num_k_blocks, body, jnp.zeros(q_ref.shape, jnp.float32))
  plgpu.store(dq_ref, (dq * sm_scale).astype(dq_ref.dtype), mask=row_ok[:, None])


def _flash_attention_dkv_kernel(off_ref, seg_q_ref, seg_k_ref, q_ref, k_ref, v_ref, do_ref,
                                lse_ref, delta_ref, dk_ref, dv_ref, *, causal, has_segments,
                                sm_scale, q_len, k_len, block_q, block_k):
  """One key tile of one KV head; loops over its g query heads and the query tiles after it.

  Program 0 holds the first key tile, which (causal) the most query tiles see.
  """
  q_offset = off_ref[0]
  kj = pl.program_id(0)
  cols = kj * block_k + jnp.arange(block_k)
  col_ok = cols < k_len
  k = plgpu.load(k_ref, mask=col_ok[:, None], other=0.0)
  v = plgpu.load(v_ref, mask=col_ok[:, None], other=0.0)
  seg_k = _load_segments(seg_k_ref, kj * block_k, block_k, has_segments)
  num_q_blocks = pl.cdiv(q_len, block_q)
  first_q_block = 0
  if causal:  # query rows at positions before key kj * block_k can't see this tile
    first_q_block = jnp.clip(lax.div(jnp.maximum(kj * block_k - q_offset, 0), block_q), 0,
                             num_q_blocks)
  num_tiles = num_q_blocks - first_q_block
  divisor = jnp.maximum(num_tiles, 1)  # no steps run when num_tiles == 0

  def body(step, carry):
    dk, dv = carry
    gi = lax.div(step, divisor)  # group head, then query tile
    i = first_q_block + lax.rem(step, divisor)
    rows = i * block_q + jnp.arange(block_q)
    row_ok = rows < q_len
    tile = pl.ds(i * block_q, block_q)
    q = plgpu.load(q_ref.at[tile, gi, :], mask=row_ok[:, None], other=0.0)
    do = plgpu.load(do_ref.at[tile, gi, :], mask=row_ok[:, None], other=0.0)
    lse = plgpu.load(lse_ref.at[gi, tile], mask=row_ok, other=0.0)
    delta = plgpu.load(delta_ref.at[gi, tile], mask=row_ok, other=0.0)
    seg_q = _load_segments(seg_q_ref, i * block_q, block_q, has_segments)
    mask = bw.tile_mask(rows, cols, seg_q, seg_k, causal=causal, q_len=q_len, k_len=k_len,
                        q_offset=q_offset)
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


def _pallas_forward(q, k, v, seg_q, seg_k, offset, opts: _Options):
  b, t, kh, g, h = q.shape
  s, vd = k.shape[1], v.shape[-1]
  bs = opts.block_sizes
  bq, bk = _tile(bs.block_q, t), _tile(bs.block_k, s)
  nq = pl.cdiv(t, bq)
  kernel = functools.partial(
      _flash_attention_fwd_kernel, causal=opts.causal, has_segments=seg_q is not None,
      sm_scale=opts.sm_scale, q_len=t, k_len=s, block_q=bq, block_k=bk)
  seg_q, seg_k = _segment_operands(seg_q, seg_k, b, t, s)
  whole_kv = lambda width: pl.BlockSpec(  # noqa: E731
      (None, s, None, width), lambda i, bi, ki, gi: (bi, 0, ki, 0))
  return pl.pallas_call(
      kernel,
      grid=(nq, b, kh, g),
      in_specs=[
          pl.BlockSpec((1,), lambda *_: (0,)),
          pl.BlockSpec((None, t), lambda i, bi, ki, gi: (bi, 0)),
          pl.BlockSpec((None, s), lambda i, bi, ki, gi: (bi, 0)),
          pl.BlockSpec((None, bq, None, None, h),
                       lambda i, bi, ki, gi: (bi, nq - 1 - i, ki, gi, 0)),
          whole_kv(h), whole_kv(vd),
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
  )(offset.reshape(1), seg_q, seg_k, q, k, v)


def _segment_operands(seg_q, seg_k, b, t, s):
  """Kernels always take [b, t] and [b, s] ids; without segments they are unread zeros."""
  if seg_q is None:
    return jnp.zeros((b, t), jnp.int32), jnp.zeros((b, s), jnp.int32)
  return seg_q, seg_k


def _pallas_backward(q, k, v, seg_q, seg_k, offset, lse_bkgt, do, delta_bkgt, opts: _Options):
  b, t, kh, g, h = q.shape
  s, vd = k.shape[1], v.shape[-1]
  bs = opts.block_sizes
  statics = dict(causal=opts.causal, has_segments=seg_q is not None, sm_scale=opts.sm_scale,
                 q_len=t, k_len=s)
  seg_q, seg_k = _segment_operands(seg_q, seg_k, b, t, s)
  params = _compiler_params(bs, max(h, vd))
  offset = offset.reshape(1)

  bq, bk = _tile(bs.block_q_dq, t), _tile(bs.block_k_dq, s)
  nq = pl.cdiv(t, bq)
  q_tile = lambda width: pl.BlockSpec(  # noqa: E731
      (None, bq, None, None, width), lambda i, bi, ki, gi: (bi, nq - 1 - i, ki, gi, 0))
  row_tile = pl.BlockSpec((None, None, None, bq), lambda i, bi, ki, gi: (bi, ki, gi, nq - 1 - i))
  whole_kv = lambda width: pl.BlockSpec(  # noqa: E731
      (None, s, None, width), lambda i, bi, ki, gi: (bi, 0, ki, 0))
  dq = pl.pallas_call(
      functools.partial(_flash_attention_dq_kernel, block_q=bq, block_k=bk, **statics),
      grid=(nq, b, kh, g),
      in_specs=[pl.BlockSpec((1,), lambda *_: (0,)),
                pl.BlockSpec((None, t), lambda i, bi, ki, gi: (bi, 0)),
                pl.BlockSpec((None, s), lambda i, bi, ki, gi: (bi, 0)), q_tile(h), whole_kv(h),
                whole_kv(vd), q_tile(vd), row_tile, row_tile],
      out_specs=q_tile(h),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params,
      interpret=opts.interpret,
      name="flash_attention_dq",
  )(offset, seg_q, seg_k, q, k, v, do, lse_bkgt, delta_bkgt)

  bq, bk = _tile(bs.block_q_dkv, t), _tile(bs.block_k_dkv, s)
  whole_q = lambda width: pl.BlockSpec(  # noqa: E731
      (None, t, None, g, width), lambda j, bi, ki: (bi, 0, ki, 0, 0))
  whole_rows = pl.BlockSpec((None, None, g, t), lambda j, bi, ki: (bi, ki, 0, 0))
  kv_tile = lambda width: pl.BlockSpec(  # noqa: E731
      (None, bk, None, width), lambda j, bi, ki: (bi, j, ki, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_flash_attention_dkv_kernel, block_q=bq, block_k=bk, **statics),
      grid=(pl.cdiv(s, bk), b, kh),
      in_specs=[pl.BlockSpec((1,), lambda *_: (0,)),
                pl.BlockSpec((None, t), lambda j, bi, ki: (bi, 0)),
                pl.BlockSpec((None, s), lambda j, bi, ki: (bi, 0)), whole_q(h), kv_tile(h),
                kv_tile(vd), whole_q(vd), whole_rows, whole_rows],
      out_specs=[kv_tile(h), kv_tile(vd)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params,
      interpret=opts.interpret,
      name="flash_attention_dkv",
  )(offset, seg_q, seg_k, q, k, v, do, lse_bkgt, delta_bkgt)
  return dq, dk, dv


# ---- custom_vjp over both implementations -----------------------------------------------------

def _forward(q, k, v, seg_q, seg_k, offset, opts: _Options):
  if opts.impl == "pallas":
    return _pallas_forward(q, k, v, seg_q, seg_k, offset, opts)
  bs = opts.block_sizes
  return bw.blockwise_forward(q, k, v, seg_q, causal=opts.causal, sm_scale=opts.sm_scale,
                              block_q=bs.xla_block_q, block_k=bs.xla_block_k, q_offset=offset,
                              seg_k_bs=seg_k)


def _backward(q, k, v, seg_q, seg_k, offset, lse_bkgt, do, delta_bkgt, opts: _Options):
  do = do.astype(q.dtype)
  if opts.impl == "pallas":
    return _pallas_backward(q, k, v, seg_q, seg_k, offset, lse_bkgt, do, delta_bkgt, opts)
  bs = opts.block_sizes
  return bw.blockwise_backward(
      q, k, v, seg_q, lse_bkgt, do, delta_bkgt, causal=opts.causal, sm_scale=opts.sm_scale,
      block_q=bs.xla_block_q, block_k=bs.xla_block_k, q_offset=offset, seg_k_bs=seg_k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attention(q, k, v, seg_q, seg_k, offset, opts: _Options):
  o, lse_bkgt = _forward(q, k, v, seg_q, seg_k, offset, opts)
  return o, jnp.transpose(lse_bkgt, (0, 3, 1, 2))


def _attention_fwd(q, k, v, seg_q, seg_k, offset, opts: _Options):
  o, lse_bkgt = _forward(q, k, v, seg_q, seg_k, offset, opts)
  return (o, jnp.transpose(lse_bkgt, (0, 3, 1, 2))), (q, k, v, seg_q, seg_k, offset, o, lse_bkgt)


def _attention_bwd(opts: _Options, res, cotangents):
  q, k, v, seg_q, seg_k, offset, o, lse_bkgt = res
  do, dlse_btkg = cotangents
  # d lse_i / d s_ij = p_ij, so the lse cotangent only shifts delta_i = sum_v(o_i * do_i).
  # Fully masked rows have p = 0 everywhere, so their (constant) lse passes no gradient.
  delta_bkgt = jnp.einsum("btkgv,btkgv->bkgt", o.astype(jnp.float32), do.astype(jnp.float32))
  delta_bkgt = delta_bkgt - jnp.transpose(dlse_btkg, (0, 2, 3, 1))
  dq, dk, dv = _backward(q, k, v, seg_q, seg_k, offset, lse_bkgt, do, delta_bkgt, opts)
  return dq, dk, dv, None, None, None  # ids and the int32 offset: no cotangent


_attention.defvjp(_attention_fwd, _attention_bwd)


# ---- Public API -------------------------------------------------------------------------------

def resolve_interpret(interpret: bool | None) -> bool:
  """None means: interpret exactly when the default backend is the CPU."""
  return jax.default_backend() == "cpu" if interpret is None else interpret


def check_inputs(q, k, v, seg_q, seg_k, q_offset, impl, block_sizes):
  if impl not in IMPLS:
    raise ValueError(f"{impl=} must be one of {IMPLS}")
  if q.ndim != 5 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"expected q [b, t, k, g, h], k [b, s, k, h], v [b, s, k, v]; got "
                     f"{q.shape=}, {k.shape=}, {v.shape=}")
  b, t, kh, _, h = q.shape
  s = k.shape[1]
  if k.shape[::2] != (b, kh) or v.shape[:3] != (b, s, kh) or k.shape[3] != h:
    raise ValueError(f"k/v must be [b={b}, s, k={kh}, ·] with one s and k head dim {h}: "
                     f"{q.shape=}, {k.shape=}, {v.shape=}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v dtypes differ: {q.dtype=}, {k.dtype=}, {v.dtype=}")
  if seg_q is not None and seg_q.shape != (b, t):
    raise ValueError(f"segment_ids.shape={seg_q.shape} must be (b, t) = {(b, t)}")
  if seg_k is not None and (seg_q is None or seg_k.shape != (b, s)):
    raise ValueError(f"segment_ids_k (shape {seg_k.shape}) must be (b, s) = {(b, s)} and come "
                     f"with query segment_ids (given: {seg_q is not None})")
  if seg_q is not None and seg_k is None and s != t:
    raise ValueError(f"keys and queries differ in length ({s=}, {t=}): pass the keys' "
                     f"segment_ids_k [b, s] along with segment_ids [b, t]")
  if q_offset is not None and (jnp.ndim(q_offset) != 0 or
                               not jnp.issubdtype(jnp.result_type(q_offset), jnp.integer)):
    raise ValueError(f"q_offset must be an integer scalar, got shape {jnp.shape(q_offset)} "
                     f"dtype {jnp.result_type(q_offset)}")
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
                    segment_ids_bt: jax.Array | None = None, *,
                    q_offset: int | jax.Array | None = None,
                    segment_ids_k: jax.Array | None = None, causal: bool = True,
                    sm_scale: float | None = None, impl: str = "pallas",
                    block_sizes: BlockSizes = BlockSizes(),
                    interpret: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """softmax(q kᵀ · sm_scale + mask) v per query head; returns (o_btkgv, lse_btkg float32).

  Query row i sits at position q_offset + i of the key sequence (key j at position j), so the t
  queries may be a chunk of a longer sequence attending to s != t keys (context parallelism).
  Query i may see key j when segment_ids_bt[i] == segment_ids_k[j] and (causal) q_offset + i >= j.

  Rows that see no key (q_offset + i < 0, or no key of their segment) return o = 0 and
  lse = MASK_VALUE (finite, about -2.4e38; never -inf), and pass no gradient. To merge partial
  results over disjoint key ranges, lse = logaddexp(lse_a, lse_b) and
  o = exp(lse_a - lse) o_a + exp(lse_b - lse) o_b: a masked part gets weight exp(MASK_VALUE - lse)
  = 0, and two masked parts give weights 1/2 each on o = 0 (with -inf it would be 0/0 = NaN).

  Args:
    q_offset: position of query row 0 among the keys; None means 0. An int or a traced int32
      scalar (one compile serves every offset); negative or past s is fine. Only the causal mask
      uses it.
    segment_ids_k: the keys' segment ids [b, s]; None means segment_ids_bt (needs s == t).
    sm_scale: logit scale; None means h ** -0.5.
    impl: "pallas" (Triton kernels; interpreted on CPU) or "xla" (blockwise, any backend).
    interpret: pallas only; None resolves to True on CPU.
  """
  check_inputs(q_btkgh, k_bskh, v_bskv, segment_ids_bt, segment_ids_k, q_offset, impl,
                block_sizes)
  opts = _Options(impl=impl, causal=causal,
                  sm_scale=float(q_btkgh.shape[-1] ** -0.5 if sm_scale is None else sm_scale),
                  block_sizes=block_sizes, interpret=resolve_interpret(interpret))
  seg_q = None if segment_ids_bt is None else segment_ids_bt.astype(jnp.int32)
  seg_k = seg_q if segment_ids_k is None else segment_ids_k.astype(jnp.int32)
  offset = jnp.asarray(0 if q_offset is None else q_offset, jnp.int32)
  return _attention(q_btkgh, k_bskh, v_bskv, seg_q, seg_k, offset, opts)


def attention_passes(*, impl: str = "pallas", sm_scale: float, causal: bool = True,
                     block_sizes: BlockSizes = BlockSizes(), interpret: bool | None = None):
  """(forward, backward) of one query chunk, for callers that combine chunks themselves.

    o_btkgv, lse_bkgt = forward(q, k, v, seg_q, seg_k, q_offset)
    dq, dk, dv = backward(q, k, v, seg_q, seg_k, q_offset, lse_bkgt, do, delta_bkgt)

  The same kernels as `flash_attention` without its custom VJP: ring attention
  (motif_jax.parallel.context) merges partial (o, lse) over key blocks and runs each block's
  backward with the *final* lse and delta_bkgt = rowsum(o * do). Inputs are not validated here;
  q_offset is an int32 scalar (may be traced), segment ids int32 or None.
  """
  if impl not in IMPLS:
    raise ValueError(f"{impl=} must be one of {IMPLS}")
  opts = _Options(impl=impl, causal=causal, sm_scale=float(sm_scale), block_sizes=block_sizes,
                  interpret=resolve_interpret(interpret))
  return functools.partial(_forward, opts=opts), functools.partial(_backward, opts=opts)


# ---- Helpers for memory / lowering checks and benchmarks --------------------------------------

def abstract_inputs(*, batch: int = 1, seq_len: int, kv_heads: int = 8, group: int = 4,
                    head_dim: int = 128, value_dim: int = 256, dtype=jnp.bfloat16,
                    segments: bool = True, kv_seq_len: int | None = None):
  """ShapeDtypeStructs (q, k, v, segment_ids); the defaults are Motif's signal attention.

  kv_seq_len: key length s when it differs from the query length (a query chunk).
  """
  sds = jax.ShapeDtypeStruct
  s = seq_len if kv_seq_len is None else kv_seq_len
  return (sds((batch, seq_len, kv_heads, group, head_dim), dtype),
          sds((batch, s, kv_heads, head_dim), dtype),
          sds((batch, s, kv_heads, value_dim), dtype),
          sds((batch, seq_len), jnp.int32) if segments else None)


def loss_and_grads(impl: str = "pallas", *, block_sizes: BlockSizes = BlockSizes(),
                   interpret: bool | None = None):
  """f(q, k, v, seg[, q_offset, seg_k]) -> (sum(o), (dq, dk, dv)): one forward + backward, for
  AOT or timing; the optional arguments are `flash_attention`'s q_offset and segment_ids_k.

  impl: "pallas" | "xla" | "reference".
  """
  def loss(q, k, v, seg, q_offset=None, seg_k=None):
    if impl == "reference":
      o, _ = flash_attention_reference(q, k, v, seg, q_offset=q_offset, segment_ids_k=seg_k)
    else:
      o, _ = flash_attention(q, k, v, seg, q_offset=q_offset, segment_ids_k=seg_k, impl=impl,
                             block_sizes=block_sizes, interpret=interpret)
    return jnp.sum(o.astype(jnp.float32))
  return jax.value_and_grad(loss, argnums=(0, 1, 2))
