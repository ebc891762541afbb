"""Blockwise (flash-style) attention in plain XLA: the `impl="xla"` path of `flash_attention`.

Same math and layouts as the Pallas kernel in `flash_attention.py`, written with `lax.map` over
query blocks and `lax.fori_loop` over key blocks with an online softmax, so no [t, s] tensor
exists in the forward or the backward pass: memory is O(s) plus one [block_q, block_k] tile per
head. Causal loops stop at the diagonal block (dynamic trip counts are fine: the backward is
hand-written, never derived by autodiff).

Layouts: q_btkgh (k KV heads, each serving g query heads), k_bskh, v_bskv, segment ids [b, t]
for queries and [b, s] for keys, lse_bkgt (float32). The t queries may be a chunk of a longer
sequence: query row i sits at key position q_offset + i (causal mask q_offset + i >= j).
Sequences are padded to whole blocks here; `tile_mask` removes the padding. Rows that see no key
get o = 0 and lse = MASK_VALUE (see `flash_attention`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Finite, so that exp(MASK - MASK) stays a number on rows whose visited tiles are all masked.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def tile_mask(rows_q: jax.Array, cols_k: jax.Array, seg_q: jax.Array | None,
              seg_k: jax.Array | None, *, causal: bool, q_len: int, k_len: int,
              q_offset=0) -> jax.Array:
  """[bq, bk] (or [b, bq, bk] with [b, ·] segment ids): which (query, key) pairs may attend.

  Shared by the Pallas kernels and the XLA path. rows_q index the q_len queries, whose positions
  are q_offset + rows_q (q_offset may be traced); cols_k index the k_len keys and are their
  positions. A pair attends when both ends are inside their sequence (tail padding), the key is
  not after the query (causal), and both are in the same packed segment.
  """
  mask_qk = (rows_q < q_len)[:, None] & (cols_k < k_len)[None, :]
  if causal:
    mask_qk = mask_qk & ((q_offset + rows_q)[:, None] >= cols_k[None, :])
  if seg_q is None:
    return mask_qk
  same = seg_q[..., :, None] == seg_k[..., None, :]
  if same.ndim == 3:
    mask_qk = mask_qk[None]
  return mask_qk & same


def _pad_to(x: jax.Array, length: int, axis: int) -> jax.Array:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad)


def _blocked_keys(k_bskh, v_bskv, seg_q_bt, seg_k_bs, *, t: int, block_q: int, block_k: int):
  """Tile sizes and counts, and K, V and both segment ids padded to whole tiles.

  Returns (bq, bk, nq, nk, k_pad, v_pad, segq_pad, segk_pad); segment ids stay None without
  segments, and key segment ids default to the query ones (s == t).
  """
  s_len = k_bskh.shape[1]
  bq, bk = min(block_q, t), min(block_k, s_len)
  nq, nk = -(-t // bq), -(-s_len // bk)
  seg_k_bs = seg_q_bt if seg_k_bs is None else seg_k_bs
  segq_pad = None if seg_q_bt is None else _pad_to(seg_q_bt, nq * bq, 1)
  segk_pad = None if seg_q_bt is None else _pad_to(seg_k_bs, nk * bk, 1)
  return (bq, bk, nq, nk, _pad_to(k_bskh, nk * bk, 1), _pad_to(v_bskv, nk * bk, 1), segq_pad,
          segk_pad)


def _heads_mask(mask):
  """A tile mask ([bq, bk] or [b, bq, bk]) broadcastable against [b, k, g, bq, bk] scores."""
  return mask[None, None, None] if mask.ndim == 2 else mask[:, None, None]


def _kv_bound(i, *, causal: bool, bq: int, bk: int, nk: int, t: int, q_offset=0):
  """Key blocks [0, bound) that query block i can see (causal: up to its last row's position)."""
  if not causal:
    return nk
  last = q_offset + jnp.minimum((i + 1) * bq, t) - 1
  return jnp.clip((last + bk) // bk, 0, nk)


def _heads_major(x_btk_):
  """[b, t, k, (g,) h] -> [b, k, (g,) t, h]: every tile dot below is then a batched 2-D matmul
  over leading (b, k) dims, which XLA CPU runs without per-tile transposed copies."""
  return jnp.moveaxis(x_btk_, 1, -2)


def blockwise_forward(q_btkgh, k_bskh, v_bskv, seg_bt, *, causal: bool, sm_scale: float,
                      block_q: int, block_k: int, q_offset=0, seg_k_bs=None):
  """Returns o_btkgv (dtype of q) and lse_bkgt (float32).

  Context parallelism (motif_jax.parallel.context) passes a query chunk of t rows that starts at
  key row `q_offset` (may be traced, negative or past s) of s keys, and the keys' own segment ids
  `seg_k_bs` (default: seg_bt, for s == t).
  """
  b, t, kh, g, _ = q_btkgh.shape
  s_len = k_bskh.shape[1]
  bq, bk, nq, nk, k_pad, v_pad, segq_pad, segk_pad = _blocked_keys(
      k_bskh, v_bskv, seg_bt, seg_k_bs, t=t, block_q=block_q, block_k=block_k)
  q_bkgth = _heads_major(_pad_to(q_btkgh, nq * bq, 1))
  k_bksh, v_bksv = _heads_major(k_pad), _heads_major(v_pad)
  vd = v_bskv.shape[-1]

  def q_block(i):
    q_i = lax.dynamic_slice_in_dim(q_bkgth, i * bq, bq, axis=3)
    rows = i * bq + jnp.arange(bq)
    seg_q = None if seg_bt is None else lax.dynamic_slice_in_dim(segq_pad, i * bq, bq, axis=1)

    def kv_step(j, carry):
      acc_bkgqv, m_bkgq, l_bkgq = carry
      k_j = lax.dynamic_slice_in_dim(k_bksh, j * bk, bk, axis=2)
      v_j = lax.dynamic_slice_in_dim(v_bksv, j * bk, bk, axis=2)
      seg_k = None if seg_bt is None else lax.dynamic_slice_in_dim(segk_pad, j * bk, bk, axis=1)
      mask = _heads_mask(tile_mask(rows, j * bk + jnp.arange(bk), seg_q, seg_k, causal=causal,
                                   q_len=t, k_len=s_len, q_offset=q_offset))
      s = jnp.einsum("bkgqh,bksh->bkgqs", q_i, k_j,
                     preferred_element_type=jnp.float32) * sm_scale
      s = jnp.where(mask, s, MASK_VALUE)
      m_new = jnp.maximum(m_bkgq, s.max(-1))
      alpha = jnp.exp(m_bkgq - m_new)
      p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
      l_new = alpha * l_bkgq + p.sum(-1)
      pv = jnp.einsum("bkgqs,bksv->bkgqv", p.astype(v_j.dtype), v_j,
                      preferred_element_type=jnp.float32)
      return acc_bkgqv * alpha[..., None] + pv, m_new, l_new

    init = (jnp.zeros((b, kh, g, bq, vd), jnp.float32),
            jnp.full((b, kh, g, bq), -jnp.inf, jnp.float32), jnp.zeros((b, kh, g, bq), jnp.float32))
    bound = _kv_bound(i, causal=causal, bq=bq, bk=bk, nk=nk, t=t, q_offset=q_offset)
    acc, m, l = lax.fori_loop(0, bound, kv_step, init)
    # Rows that saw no key (padding, before the first key, or no key of their segment): o = 0 and
    # a finite lse, whether their key loop was empty (m = -inf) or only masked (m = MASK_VALUE).
    empty = l == 0.0
    l = jnp.where(empty, 1.0, l)
    lse = jnp.where(empty, MASK_VALUE, m + jnp.log(l))
    return (acc / l[..., None]).astype(q_btkgh.dtype), lse

  o_nbkgqv, lse_nbkgq = lax.map(q_block, jnp.arange(nq))
  o_btkgv = jnp.transpose(o_nbkgqv, (1, 0, 4, 2, 3, 5)).reshape(b, nq * bq, kh, g, vd)[:, :t]
  lse_bkgt = jnp.transpose(lse_nbkgq, (1, 2, 3, 0, 4)).reshape(b, kh, g, nq * bq)[..., :t]
  return o_btkgv, lse_bkgt


def blockwise_backward(q_btkgh, k_bskh, v_bskv, seg_bt, lse_bkgt, do_btkgv, delta_bkgt, *,
                       causal: bool, sm_scale: float, block_q: int, block_k: int, q_offset=0,
                       seg_k_bs=None):
  """dq, dk, dv from the saved lse; delta_bkgt = rowsum(o * do) - dlse.

  One pass: key blocks outer, query blocks inner, so each probability tile is recomputed once;
  dk/dv for the key block stay in the inner carry and dq accumulates in a float32 [b, t, ...]
  buffer (O(s), updated in place).
  """
  b, t, kh, g, h = q_btkgh.shape
  s_len = k_bskh.shape[1]
  vd = v_bskv.shape[-1]
  bq, bk, nq, nk, k_pad, v_pad, segq_pad, segk_pad = _blocked_keys(
      k_bskh, v_bskv, seg_bt, seg_k_bs, t=t, block_q=block_q, block_k=block_k)
  q_bkgth = _heads_major(_pad_to(q_btkgh, nq * bq, 1))
  do_bkgtv = _heads_major(_pad_to(do_btkgv, nq * bq, 1))
  k_bksh, v_bksv = _heads_major(k_pad), _heads_major(v_pad)
  lse_pad, delta_pad = _pad_to(lse_bkgt, nq * bq, 3), _pad_to(delta_bkgt, nq * bq, 3)

  def kv_block(j, carry):
    dq_acc, dk_all, dv_all = carry
    k_j = lax.dynamic_slice_in_dim(k_bksh, j * bk, bk, axis=2)
    v_j = lax.dynamic_slice_in_dim(v_bksv, j * bk, bk, axis=2)
    cols = j * bk + jnp.arange(bk)
    seg_k = None if seg_bt is None else lax.dynamic_slice_in_dim(segk_pad, j * bk, bk, axis=1)

    def q_step(i, inner):
      dq_acc, dk_j, dv_j = inner
      q_i = lax.dynamic_slice_in_dim(q_bkgth, i * bq, bq, axis=3)
      do_i = lax.dynamic_slice_in_dim(do_bkgtv, i * bq, bq, axis=3)
      lse_i = lax.dynamic_slice_in_dim(lse_pad, i * bq, bq, axis=3)
      delta_i = lax.dynamic_slice_in_dim(delta_pad, i * bq, bq, axis=3)
      seg_q = None if seg_bt is None else lax.dynamic_slice_in_dim(segq_pad, i * bq, bq, axis=1)
      mask = _heads_mask(tile_mask(i * bq + jnp.arange(bq), cols, seg_q, seg_k, causal=causal,
                                   q_len=t, k_len=s_len, q_offset=q_offset))
      s = jnp.einsum("bkgqh,bksh->bkgqs", q_i, k_j,
                     preferred_element_type=jnp.float32) * sm_scale
      p = jnp.where(mask, jnp.exp(s - lse_i[..., None]), 0.0)
      dv_j = dv_j + jnp.einsum("bkgqs,bkgqv->bksv", p.astype(do_i.dtype), do_i,
                               preferred_element_type=jnp.float32)
      dp = jnp.einsum("bkgqv,bksv->bkgqs", do_i, v_j, preferred_element_type=jnp.float32)
      ds = (p * (dp - delta_i[..., None])).astype(q_i.dtype)
      dk_j = dk_j + jnp.einsum("bkgqs,bkgqh->bksh", ds, q_i, preferred_element_type=jnp.float32)
      dq_i = jnp.einsum("bkgqs,bksh->bkgqh", ds, k_j, preferred_element_type=jnp.float32)
      dq_acc = lax.dynamic_update_slice_in_dim(
          dq_acc, lax.dynamic_slice_in_dim(dq_acc, i * bq, bq, axis=3) + dq_i, i * bq, axis=3)
      return dq_acc, dk_j, dv_j

    lo = jnp.clip((j * bk - q_offset) // bq, 0, nq) if causal else 0  # rows before j*bk: none
    inner = (dq_acc, jnp.zeros((b, kh, bk, h), jnp.float32), jnp.zeros((b, kh, bk, vd),
                                                                       jnp.float32))
    dq_acc, dk_j, dv_j = lax.fori_loop(lo, nq, q_step, inner)
    dk_all = lax.dynamic_update_slice_in_dim(dk_all, (dk_j * sm_scale).astype(dk_all.dtype),
                                             j * bk, axis=2)
    dv_all = lax.dynamic_update_slice_in_dim(dv_all, dv_j.astype(dv_all.dtype), j * bk, axis=2)
    return dq_acc, dk_all, dv_all

  init = (jnp.zeros(q_bkgth.shape, jnp.float32), jnp.zeros(k_bksh.shape, k_bskh.dtype),
          jnp.zeros(v_bksv.shape, v_bskv.dtype))
  dq_acc, dk_bksh, dv_bksv = lax.fori_loop(0, nk, kv_block, init)
  dq = (jnp.moveaxis(dq_acc, 3, 1)[:, :t] * sm_scale).astype(q_btkgh.dtype)
  return dq, jnp.moveaxis(dk_bksh, 2, 1)[:, :s_len], jnp.moveaxis(dv_bksv, 2, 1)[:, :s_len]
