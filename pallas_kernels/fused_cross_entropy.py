"""Fused linear cross-entropy: per-token loss, log-prob and entropy without [tokens, vocab] logits.

From hidden states h[T, D], an output head W[D, V] and labels[T]:

  z = (h @ W) / temperature             (float32 accumulation; never materialized whole)
  lse = logsumexp(z)                    (float32, online over vocab tiles)
  loss = mask * (lse - z[label] + z_loss * lse^2)
  entropy = mask * (lse - sum softmax(z) * z)

`mask` also drops labels outside [0, V) (e.g. an ignore index of -100). The custom VJP gives
dh and dW for cotangents on both outputs (an entropy bonus is differentiable), with
dz = p * (a - c * (z - lse + H)) - b * onehot(label), a = m g_loss (1 + 2 z_loss lse),
b = m g_loss, c = m g_entropy.

Memory shape (both passes tiled over tokens and vocab): the forward keeps O(T) running
statistics; the backward computes dh and dW in two separate passes so each fp32 accumulator is
chunk-sized — dh per `chunk_t` tokens (summing over the vocab), dW per `chunk_v` vocab columns
(summing over all tokens) — and writes each finished chunk into the output in the input dtype.
The logits are recomputed in each pass: 5 matmul-equivalents instead of 3, for O(chunk) memory.

Implementations behind `fused_cross_entropy(..., impl=)`:
  "reference"  full logits, autodiff (the oracle; O(T·V) memory)
  "xla"        chunked lax loops (the CPU and fallback path)
  "pallas"     Pallas/Triton kernels for the tile work (interpret mode on CPU)

Vocab-parallel building blocks (the same chunk functions, for a caller that holds one slice
W[:, v0:v0+V_k] and combines slices itself, e.g. `motif_jax.parallel.loss`):
  `vocab_slice_stats`  per-token (lse_k, z_label_k, entropy_k) of the softmax over the slice;
                       they combine as lse = logsumexp_k lse_k, z[label] = sum_k z_label_k,
                       entropy = sum_k exp(lse_k - lse) (entropy_k + lse - lse_k).
  `vocab_slice_grads`  the slice's (dh, dW) given the *global* lse and entropy: dz above on the
                       slice's columns only; dh sums over slices, dW over token shards.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

IMPLS = ("reference", "xla", "pallas")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  chunk_t: int = 2048  # tokens per chunk: xla tiles and the fp32 dh accumulator
  chunk_v: int = 8192  # vocab columns per chunk: xla tiles and the fp32 dW accumulator
  block_t: int = 64  # pallas tile: tokens (power of 2)
  block_v: int = 128  # pallas tile: vocab (power of 2)
  block_d: int = 64  # pallas tile: contraction over d_model (power of 2)
  # xla: when a float32 [D, V] dW accumulator fits in this many bytes, the backward is one pass
  # (logits recomputed once, dh and dW from the same tile) instead of two.
  fused_backward_bytes: int = 256 * 2**20


def default_interpret() -> bool:
  """Pallas interpret mode everywhere but on a GPU backend."""
  return jax.default_backend() != "gpu"


# ---- Reference ---------------------------------------------------------------------------------

def effective_mask(labels_t, mask_t, vocab):
  """(float32 mask that also drops labels outside [0, vocab), labels clipped into range)."""
  valid = (labels_t >= 0) & (labels_t < vocab)
  mask = valid if mask_t is None else valid & (mask_t > 0)
  return mask.astype(jnp.float32), jnp.clip(labels_t, 0, vocab - 1)


def fused_cross_entropy_reference(h_td, w_dv, labels_t, mask_t=None, *, temperature=1.0,
                                  z_loss=0.0):
  """Plain jnp with full float32 logits: (loss_t, entropy_t)."""
  m_t, labels_t = effective_mask(labels_t, mask_t, w_dv.shape[1])
  z_tv = jnp.dot(h_td, w_dv, preferred_element_type=jnp.float32) / temperature
  lse_t = jax.nn.logsumexp(z_tv, axis=-1)
  z_label_t = jnp.take_along_axis(z_tv, labels_t[:, None], axis=-1)[:, 0]
  entropy_t = lse_t - jnp.sum(jax.nn.softmax(z_tv, axis=-1) * z_tv, axis=-1)
  return m_t * (lse_t - z_label_t + z_loss * lse_t ** 2), m_t * entropy_t


# ---- Shared tile math --------------------------------------------------------------------------

def _online_update(carry, z_tv, valid_tv, onehot_tv):
  """One vocab tile of the online (max, sum exp, sum exp*z, label logit) recurrence."""
  m_t, s_t, sz_t, zl_t = carry
  z_masked = jnp.where(valid_tv, z_tv, -jnp.inf)
  m_new = jnp.maximum(m_t, jnp.max(z_masked, axis=-1))
  alpha_t = jnp.exp(m_t - m_new)
  e_tv = jnp.exp(z_masked - m_new[:, None])
  s_t = s_t * alpha_t + jnp.sum(e_tv, axis=-1)
  sz_t = sz_t * alpha_t + jnp.sum(e_tv * jnp.where(valid_tv, z_tv, 0.0), axis=-1)
  zl_t = zl_t + jnp.sum(jnp.where(onehot_tv & valid_tv, z_tv, 0.0), axis=-1)
  return m_new, s_t, sz_t, zl_t


def _init_stats(n):
  return (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32),
          jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32))


def _finish_stats(stats):
  m_t, s_t, sz_t, zl_t = stats
  lse_t = m_t + jnp.log(s_t)
  return lse_t, zl_t, lse_t - sz_t / s_t


def _dlogits(z_tv, valid_tv, onehot_tv, coef, temperature):
  """d(objective)/d(h @ W) for one tile, float32, zero outside `valid_tv`."""
  lse_t, ent_t, a_t, b_t, c_t = coef
  p_tv = jnp.exp(z_tv - lse_t[:, None])
  dz_tv = p_tv * (a_t[:, None] - c_t[:, None] * (z_tv - lse_t[:, None] + ent_t[:, None]))
  dz_tv = dz_tv - jnp.where(onehot_tv, b_t[:, None], 0.0)
  return jnp.where(valid_tv, dz_tv, 0.0) / temperature


def _slice(x, start, size, axis):
  """Dynamic slice of one chunk inside a loop. The barrier ties `x` to the loop-variant start:
  otherwise XLA's CPU backend, which computes bf16 dots in float32, converts the *whole*
  operand to float32 and hoists that copy out of the loop, costing more memory than the
  logits this module avoids."""
  x, start = lax.optimization_barrier((x, start))
  return lax.dynamic_slice_in_dim(x, start, size, axis)


def _clamped_start(i, chunk, total):
  """Chunk i starts at min(i*chunk, total-chunk): the last chunk overlaps instead of padding."""
  return jnp.minimum(i * chunk, total - chunk)


# ---- XLA chunked implementation ---------------------------------------------------------------

def _vocab_tile(h_cd, w_dv, j, cv, temperature):
  """Vocab chunk j: (w_dc, z_cv, cols, fresh) where `fresh` masks the columns an overlapping
  last chunk shares with its neighbour."""
  v0 = _clamped_start(j, cv, w_dv.shape[1])
  w_dc = _slice(w_dv, v0, cv, 1)
  z_cv = jnp.dot(h_cd, w_dc, preferred_element_type=jnp.float32) / temperature
  cols = v0 + jnp.arange(cv)
  return w_dc, z_cv, cols, jnp.broadcast_to((cols >= j * cv)[None, :], z_cv.shape)


def _token_chunk(h_td, labels_t, coef, i, ct):
  """Token chunk i: (t0, h_cd, labels_c, coef_c, fresh_rows), fresh_rows masking the rows an
  overlapping last chunk shares with its neighbour."""
  t0 = _clamped_start(i, ct, h_td.shape[0])
  labels_c = lax.dynamic_slice_in_dim(labels_t, t0, ct)
  coef_c = tuple(lax.dynamic_slice_in_dim(x, t0, ct) for x in coef)
  return t0, _slice(h_td, t0, ct, 0), labels_c, coef_c, (t0 + jnp.arange(ct)) >= i * ct


def _xla_fwd_chunk(h_cd, w_dv, labels_c, *, temperature, chunk_v):
  vocab = w_dv.shape[1]
  cv = min(chunk_v, vocab)

  def vocab_step(stats, j):
    _, z_cv, cols, fresh = _vocab_tile(h_cd, w_dv, j, cv, temperature)
    return _online_update(stats, z_cv, fresh, cols[None, :] == labels_c[:, None]), None

  stats, _ = lax.scan(vocab_step, _init_stats(h_cd.shape[0]), jnp.arange(pl.cdiv(vocab, cv)))
  return _finish_stats(stats)


def _xla_dh_chunk(h_cd, w_dv, labels_c, coef_c, *, temperature, chunk_v):
  vocab = w_dv.shape[1]
  cv = min(chunk_v, vocab)

  def vocab_step(dh_cd, j):
    w_dc, z_cv, cols, fresh = _vocab_tile(h_cd, w_dv, j, cv, temperature)
    dz_cv = _dlogits(z_cv, fresh, cols[None, :] == labels_c[:, None], coef_c, temperature)
    return dh_cd + jnp.dot(dz_cv.astype(w_dc.dtype), w_dc.T, preferred_element_type=jnp.float32), None

  dh_cd, _ = lax.scan(vocab_step, jnp.zeros(h_cd.shape, jnp.float32),
                      jnp.arange(pl.cdiv(vocab, cv)))
  return dh_cd


def _xla_dw_chunk(h_td, w_dc, labels_t, coef, *, temperature, chunk_t):
  """dW for the columns of w_dc; labels_t are relative to the chunk's first column."""
  tokens = h_td.shape[0]
  ct = min(chunk_t, tokens)

  def token_step(dw_dc, i):
    _, h_cd, labels_c, coef_c, fresh_rows = _token_chunk(h_td, labels_t, coef, i, ct)
    z_cv = jnp.dot(h_cd, w_dc, preferred_element_type=jnp.float32) / temperature
    fresh = jnp.broadcast_to(fresh_rows[:, None], z_cv.shape)
    onehot = jnp.arange(w_dc.shape[1])[None, :] == labels_c[:, None]
    dz_cv = _dlogits(z_cv, fresh, onehot, coef_c, temperature)
    return dw_dc + jnp.dot(h_cd.T, dz_cv.astype(h_cd.dtype), preferred_element_type=jnp.float32), None

  dw_dc, _ = lax.scan(token_step, jnp.zeros(w_dc.shape, jnp.float32),
                      jnp.arange(pl.cdiv(tokens, ct)))
  return dw_dc


def _xla_fused_backward(h_td, w_dv, labels_t, coef, *, temperature, chunk_t, chunk_v,
                        out_dtype=None):
  """One backward pass: dz per tile feeds both dh (chunk accumulator) and a float32 dW."""
  (tokens, _), vocab = h_td.shape, w_dv.shape[1]
  dh_dtype, dw_dtype = out_dtype or h_td.dtype, out_dtype or w_dv.dtype
  ct, cv = min(chunk_t, tokens), min(chunk_v, vocab)

  def token_step(i, carry):
    dh_td, dw_dv = carry
    t0, h_cd, labels_c, coef_c, fresh_rows = _token_chunk(h_td, labels_t, coef, i, ct)

    def vocab_step(carry, j):
      dh_cd, dw_dv = carry
      w_dc, z_cv, cols, fresh = _vocab_tile(h_cd, w_dv, j, cv, temperature)
      v0 = cols[0]
      dz_cv = _dlogits(z_cv, fresh, cols[None, :] == labels_c[:, None], coef_c, temperature)
      dh_cd = dh_cd + jnp.dot(dz_cv.astype(w_dc.dtype), w_dc.T, preferred_element_type=jnp.float32)
      dz_rows = jnp.where(fresh_rows[:, None], dz_cv, 0.0).astype(h_cd.dtype)
      dw_dc = lax.dynamic_slice_in_dim(dw_dv, v0, cv, 1) + jnp.dot(
          h_cd.T, dz_rows, preferred_element_type=jnp.float32)
      return (dh_cd, lax.dynamic_update_slice_in_dim(dw_dv, dw_dc, v0, 1)), None

    (dh_cd, dw_dv), _ = lax.scan(vocab_step, (jnp.zeros(h_cd.shape, jnp.float32), dw_dv),
                                 jnp.arange(pl.cdiv(vocab, cv)))
    return lax.dynamic_update_slice_in_dim(dh_td, dh_cd.astype(dh_dtype), t0, 0), dw_dv

  dh_td, dw_dv = lax.fori_loop(0, pl.cdiv(tokens, ct), token_step,
                               (jnp.zeros_like(h_td, dh_dtype), jnp.zeros(w_dv.shape, jnp.float32)))
  return dh_td, dw_dv.astype(dw_dtype)


# ---- Pallas kernels ----------------------------------------------------------------------------

def _tile_logits(h_ref, w_ref, row0, col0, *, block_t, block_v, block_d, temperature):
  """z[block_t, block_v] = h[rows] @ w[:, cols] / temperature, looping over d_model tiles."""
  tokens, d_model = h_ref.shape
  vocab = w_ref.shape[1]
  row_ok = (row0 + jnp.arange(block_t)) < tokens
  col_ok = (col0 + jnp.arange(block_v)) < vocab

  def d_step(k, acc):
    d_ok = (k * block_d + jnp.arange(block_d)) < d_model
    h = plgpu.load(h_ref.at[pl.ds(row0, block_t), pl.ds(k * block_d, block_d)],
                   mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    w = plgpu.load(w_ref.at[pl.ds(k * block_d, block_d), pl.ds(col0, block_v)],
                   mask=d_ok[:, None] & col_ok[None, :], other=0.0)
    return acc + plgpu.dot(h, w)

  acc = lax.fori_loop(0, pl.cdiv(d_model, block_d), d_step,
                      jnp.zeros((block_t, block_v), jnp.float32))
  return acc / temperature, row_ok, col_ok


def _load_rows(ref, row0, block, row_ok, other=0.0):
  return plgpu.load(ref.at[pl.ds(row0, block)], mask=row_ok, other=other)


def _ce_fwd_kernel(h_ref, w_ref, labels_ref, lse_ref, zl_ref, ent_ref, *, temperature,
                   block_t, block_v, block_d):
  row0 = pl.program_id(0) * block_t
  row_ok = (row0 + jnp.arange(block_t)) < h_ref.shape[0]
  labels = _load_rows(labels_ref, row0, block_t, row_ok, 0)
  tile = functools.partial(_tile_logits, h_ref, w_ref, block_t=block_t, block_v=block_v,
                           block_d=block_d, temperature=temperature)

  def v_step(j, stats):
    z, _, col_ok = tile(row0, j * block_v)
    cols = j * block_v + jnp.arange(block_v)
    valid = jnp.broadcast_to(col_ok[None, :], z.shape)
    return _online_update(stats, z, valid, cols[None, :] == labels[:, None])

  stats = lax.fori_loop(0, pl.cdiv(w_ref.shape[1], block_v), v_step, _init_stats(block_t))
  for ref, value in zip((lse_ref, zl_ref, ent_ref), _finish_stats(stats)):
    plgpu.store(ref.at[pl.ds(row0, block_t)], value, mask=row_ok)


def _load_coef(coef_refs, row0, block_t, row_ok):
  return tuple(_load_rows(r, row0, block_t, row_ok) for r in coef_refs)


def _zero_tiles(tile, n_d, shape):
  """Zero the float32 accumulator tiles `tile(k)` of this program, k over d_model tiles."""
  def step(k, _):
    ref, mask, _ = tile(k)
    plgpu.store(ref, jnp.zeros(shape, jnp.float32), mask=mask)
  lax.fori_loop(0, n_d, step, None)


def _accumulate_tiles(tile, n_d, contribution):
  """tile(k) += contribution(k, d_ok) for every d_model tile k: float32 read-modify-write of
  this program's own output rows/columns (no other program touches them)."""
  def step(k, _):
    ref, mask, d_ok = tile(k)
    plgpu.store(ref, plgpu.load(ref, mask=mask, other=0.0) + contribution(k, d_ok), mask=mask)
  lax.fori_loop(0, n_d, step, None)


def _ce_dh_kernel(h_ref, w_ref, labels_ref, *refs, temperature, block_t, block_v, block_d):
  *coef_refs, dh_ref = refs
  tokens, d_model = h_ref.shape
  row0 = pl.program_id(0) * block_t
  row_ok = (row0 + jnp.arange(block_t)) < tokens
  labels = _load_rows(labels_ref, row0, block_t, row_ok, 0)
  coef = _load_coef(coef_refs, row0, block_t, row_ok)
  n_d = pl.cdiv(d_model, block_d)

  def dh_tile(k):
    d_ok = (k * block_d + jnp.arange(block_d)) < d_model
    return dh_ref.at[pl.ds(row0, block_t), pl.ds(k * block_d, block_d)], (
        row_ok[:, None] & d_ok[None, :]), d_ok

  _zero_tiles(dh_tile, n_d, (block_t, block_d))

  def v_step(j, _):
    col0 = j * block_v
    z, _, col_ok = _tile_logits(h_ref, w_ref, row0, col0, block_t=block_t, block_v=block_v,
                                block_d=block_d, temperature=temperature)
    valid = row_ok[:, None] & col_ok[None, :]
    onehot = (col0 + jnp.arange(block_v))[None, :] == labels[:, None]
    dz = _dlogits(z, valid, onehot, coef, temperature).astype(w_ref.dtype)

    def contribution(k, d_ok):  # dh[rows, d tile] += dz @ W[d tile, cols]^T
      w = plgpu.load(w_ref.at[pl.ds(k * block_d, block_d), pl.ds(col0, block_v)],
                     mask=d_ok[:, None] & col_ok[None, :], other=0.0)
      return plgpu.dot(dz, w, trans_b=True)

    _accumulate_tiles(dh_tile, n_d, contribution)

  lax.fori_loop(0, pl.cdiv(w_ref.shape[1], block_v), v_step, None)


def _ce_dw_kernel(h_ref, w_ref, labels_ref, *refs, temperature, block_t, block_v, block_d):
  *coef_refs, dw_ref = refs
  tokens, d_model = h_ref.shape
  col0 = pl.program_id(0) * block_v
  col_ok = (col0 + jnp.arange(block_v)) < w_ref.shape[1]
  n_d = pl.cdiv(d_model, block_d)

  def dw_tile(k):
    d_ok = (k * block_d + jnp.arange(block_d)) < d_model
    return dw_ref.at[pl.ds(k * block_d, block_d), pl.ds(col0, block_v)], (
        d_ok[:, None] & col_ok[None, :]), d_ok

  _zero_tiles(dw_tile, n_d, (block_d, block_v))

  def t_step(i, _):
    row0 = i * block_t
    z, row_ok, _ = _tile_logits(h_ref, w_ref, row0, col0, block_t=block_t, block_v=block_v,
                                block_d=block_d, temperature=temperature)
    labels = _load_rows(labels_ref, row0, block_t, row_ok, -1)
    coef = _load_coef(coef_refs, row0, block_t, row_ok)
    valid = row_ok[:, None] & col_ok[None, :]
    onehot = (col0 + jnp.arange(block_v))[None, :] == labels[:, None]
    dz = _dlogits(z, valid, onehot, coef, temperature).astype(h_ref.dtype)

    def contribution(k, d_ok):  # dW[d tile, cols] += h[rows, d tile]^T @ dz
      h = plgpu.load(h_ref.at[pl.ds(row0, block_t), pl.ds(k * block_d, block_d)],
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0)
      return plgpu.dot(h, dz, trans_a=True)

    _accumulate_tiles(dw_tile, n_d, contribution)

  lax.fori_loop(0, pl.cdiv(tokens, block_t), t_step, None)


def _call(kernel, grid, out_shape, args, *, name, interpret, bs, temperature):
  body = functools.partial(kernel, temperature=temperature, block_t=bs.block_t,
                           block_v=bs.block_v, block_d=bs.block_d)
  return pl.pallas_call(body, grid=grid, out_shape=out_shape, interpret=interpret, name=name,
                        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2))(*args)


def _pallas_fwd_chunk(h_cd, w_dv, labels_c, *, temperature, bs, interpret):
  n = h_cd.shape[0]
  out = [jax.ShapeDtypeStruct((n,), jnp.float32)] * 3
  return tuple(_call(_ce_fwd_kernel, (pl.cdiv(n, bs.block_t),), out, (h_cd, w_dv, labels_c),
                     name="fused_ce_fwd", interpret=interpret, bs=bs, temperature=temperature))


def _pallas_dh_chunk(h_cd, w_dv, labels_c, coef_c, *, temperature, bs, interpret):
  out = jax.ShapeDtypeStruct(h_cd.shape, jnp.float32)
  return _call(_ce_dh_kernel, (pl.cdiv(h_cd.shape[0], bs.block_t),), out,
               (h_cd, w_dv, labels_c, *coef_c), name="fused_ce_dh", interpret=interpret, bs=bs,
               temperature=temperature)


def _pallas_dw_chunk(h_td, w_dc, labels_t, coef, *, temperature, bs, interpret):
  out = jax.ShapeDtypeStruct(w_dc.shape, jnp.float32)
  return _call(_ce_dw_kernel, (pl.cdiv(w_dc.shape[1], bs.block_v),), out,
               (h_td, w_dc, labels_t, *coef), name="fused_ce_dw", interpret=interpret, bs=bs,
               temperature=temperature)


# ---- Chunk drivers shared by both implementations ---------------------------------------------

def _chunk_fns(impl, temperature, bs, interpret):
  if impl == "xla":
    return (functools.partial(_xla_fwd_chunk, temperature=temperature, chunk_v=bs.chunk_v),
            functools.partial(_xla_dh_chunk, temperature=temperature, chunk_v=bs.chunk_v),
            functools.partial(_xla_dw_chunk, temperature=temperature, chunk_t=bs.chunk_t))
  kw = dict(temperature=temperature, bs=bs, interpret=interpret)
  return (functools.partial(_pallas_fwd_chunk, **kw), functools.partial(_pallas_dh_chunk, **kw),
          functools.partial(_pallas_dw_chunk, **kw))


def _forward_stats(h_td, w_dv, labels_t, fwd_chunk, chunk_t):
  """(lse, label logit, entropy) per token, computed chunk by chunk over tokens."""
  tokens = h_td.shape[0]
  ct = min(chunk_t, tokens)
  n = pl.cdiv(tokens, ct)

  def chunk(i):
    t0 = _clamped_start(i, ct, tokens)
    return fwd_chunk(_slice(h_td, t0, ct, 0), w_dv,
                     lax.dynamic_slice_in_dim(labels_t, t0, ct))

  stacked = lax.map(chunk, jnp.arange(n))  # each [n, ct]; the last chunk overlaps its neighbour
  overlap = n * ct - tokens
  return tuple(jnp.concatenate([x[:-1].reshape(-1), x[-1, overlap:]]) for x in stacked)


def _backward(h_td, w_dv, labels_t, coef, dh_chunk, dw_chunk, chunk_t, chunk_v, out_dtype=None):
  tokens, vocab = h_td.shape[0], w_dv.shape[1]
  ct, cv = min(chunk_t, tokens), min(chunk_v, vocab)
  dh_dtype, dw_dtype = out_dtype or h_td.dtype, out_dtype or w_dv.dtype

  def dh_step(i, dh_td):  # rows of overlapping chunks are recomputed identically
    t0 = _clamped_start(i, ct, tokens)
    rows = lambda x: lax.dynamic_slice_in_dim(x, t0, ct, 0)  # noqa: E731
    dh_cd = dh_chunk(_slice(h_td, t0, ct, 0), w_dv, rows(labels_t), tuple(rows(c) for c in coef))
    return lax.dynamic_update_slice_in_dim(dh_td, dh_cd.astype(dh_dtype), t0, 0)

  def dw_step(j, dw_dv):  # columns of overlapping chunks are recomputed identically
    v0 = _clamped_start(j, cv, vocab)
    dw_dc = dw_chunk(h_td, _slice(w_dv, v0, cv, 1), labels_t - v0, coef)
    return lax.dynamic_update_slice_in_dim(dw_dv, dw_dc.astype(dw_dtype), v0, 1)

  dh_td = lax.fori_loop(0, pl.cdiv(tokens, ct), dh_step, jnp.zeros_like(h_td, dh_dtype))
  dw_dv = lax.fori_loop(0, pl.cdiv(vocab, cv), dw_step, jnp.zeros_like(w_dv, dw_dtype))
  return dh_td, dw_dv


def _check_slice_impl(impl):
  if impl not in ("xla", "pallas"):
    raise ValueError(f"{impl=}: vocab-slice statistics exist for 'xla' and 'pallas' only")


def vocab_slice_stats(h_td, w_dv, labels_t, *, temperature: float = 1.0, impl: str = "xla",
                      block_sizes: BlockSizes = BlockSizes(), interpret: bool | None = None):
  """Per-token float32 (lse_t, z_label_t, entropy_t) of softmax(h @ W / temperature) over W's
  columns only. No VJP of its own: gradients come from `vocab_slice_grads`.

  For a vocab slice W[:, v0:v0+V_k], pass labels relative to v0: a label outside [0, V_k)
  gives z_label 0. The module docstring gives how slices combine.
  """
  _check_slice_impl(impl)
  interpret = default_interpret() if interpret is None else interpret
  fwd_chunk, _, _ = _chunk_fns(impl, temperature, block_sizes, interpret)
  return _forward_stats(h_td, w_dv, labels_t, fwd_chunk, block_sizes.chunk_t)


def vocab_slice_grads(h_td, w_dv, labels_t, m_t, lse_t, ent_t, g_loss_t, g_ent_t, *,
                      temperature: float = 1.0, z_loss: float = 0.0, impl: str = "xla",
                      block_sizes: BlockSizes = BlockSizes(), interpret: bool | None = None,
                      out_dtype=None):
  """(dh_td, dw_dv) of sum(g_loss * loss + g_ent * entropy) through the logits of W's columns.

  Args:
    labels_t: relative to the slice's first column, as in `vocab_slice_stats`; labels outside
      [0, V_k) get no one-hot term here (their slice holds it).
    m_t: float32 token mask (`effective_mask` of the global labels).
    lse_t, ent_t: the *global* (whole-vocabulary) lse and unmasked entropy per token.
    out_dtype: dtype of both gradients (default: h's and W's). Float32 when partial gradients
      are summed afterwards (dh over vocab slices, dW over token shards).
  """
  _check_slice_impl(impl)
  interpret = default_interpret() if interpret is None else interpret
  b_t = m_t * g_loss_t
  coef = (lse_t, ent_t, b_t * (1.0 + 2.0 * z_loss * lse_t), b_t, m_t * g_ent_t)
  bs = block_sizes
  if impl == "xla" and 4 * w_dv.size <= bs.fused_backward_bytes:
    return _xla_fused_backward(h_td, w_dv, labels_t, coef, temperature=temperature,
                               chunk_t=bs.chunk_t, chunk_v=bs.chunk_v, out_dtype=out_dtype)
  _, dh_chunk, dw_chunk = _chunk_fns(impl, temperature, bs, interpret)
  return _backward(h_td, w_dv, labels_t, coef, dh_chunk, dw_chunk, bs.chunk_t, bs.chunk_v,
                   out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _fused(h_td, w_dv, labels_t, m_t, temperature, z_loss, impl, bs, interpret):
  out, _ = _fused_fwd(h_td, w_dv, labels_t, m_t, temperature, z_loss, impl, bs, interpret)
  return out


def _fused_fwd(h_td, w_dv, labels_t, m_t, temperature, z_loss, impl, bs, interpret):
  lse_t, z_label_t, ent_t = vocab_slice_stats(h_td, w_dv, labels_t, temperature=temperature,
                                              impl=impl, block_sizes=bs, interpret=interpret)
  loss_t = m_t * (lse_t - z_label_t + z_loss * lse_t ** 2)
  return (loss_t, m_t * ent_t), (h_td, w_dv, labels_t, m_t, lse_t, ent_t)


def _fused_bwd(temperature, z_loss, impl, bs, interpret, residuals, cotangents):
  h_td, w_dv, labels_t, m_t, lse_t, ent_t = residuals
  dh_td, dw_dv = vocab_slice_grads(h_td, w_dv, labels_t, m_t, lse_t, ent_t, *cotangents,
                                   temperature=temperature, z_loss=z_loss, impl=impl,
                                   block_sizes=bs, interpret=interpret)
  return dh_td, dw_dv, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.jit, static_argnames=("temperature", "z_loss", "impl", "block_sizes",
                                             "interpret"))
def fused_cross_entropy(h_td, w_dv, labels_t, mask_t=None, *, temperature: float = 1.0,
                        z_loss: float = 0.0, impl: str = "xla",
                        block_sizes: BlockSizes = BlockSizes(), interpret: bool | None = None):
  """Per-token (loss_t, entropy_t), float32, zero where masked. Differentiable in h and W.

  labels outside [0, V) count as masked. loss = lse - z[label] (+ z_loss lse^2) is the negative
  log-prob of the label at `temperature` when z_loss is 0.
  """
  if h_td.ndim != 2 or w_dv.ndim != 2 or h_td.shape[1] != w_dv.shape[0]:
    raise ValueError(f"expected h[T, D] and W[D, V], got {h_td.shape=} {w_dv.shape=}")
  if labels_t.shape != h_td.shape[:1] or (mask_t is not None and mask_t.shape != labels_t.shape):
    raise ValueError(f"labels and mask must be [T={h_td.shape[0]}], got {labels_t.shape=} "
                     f"{None if mask_t is None else mask_t.shape}")
  if impl not in IMPLS:
    raise ValueError(f"{impl=} must be one of {IMPLS}")
  if not temperature > 0:
    raise ValueError(f"{temperature=} must be positive")
  if impl == "reference":
    return fused_cross_entropy_reference(h_td, w_dv, labels_t, mask_t, temperature=temperature,
                                         z_loss=z_loss)
  m_t, labels_t = effective_mask(labels_t, mask_t, w_dv.shape[1])
  interpret = default_interpret() if interpret is None else interpret
  return _fused(h_td, w_dv, labels_t.astype(jnp.int32), m_t, float(temperature), float(z_loss),
                impl, block_sizes, interpret)
